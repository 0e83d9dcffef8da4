"""Sending and receiving one artifact as chunk frames (``schemas.transfer``): the plan that cuts a file into frames
and the assembler that puts frames back together on disk.

The assembler writes each chunk at its offset in a file on disk (memory stays bounded whatever the size),
tolerates duplicates and any order, lists missing chunks so the receiver can ask for them, checks the whole
SHA-256 before handing the artifact over, survives a restart of the receiving process (state files next to the
partial artifact) and expires partial transfers that stopped making progress.

Everything a frame declares is untrusted until the signed manifest inside the finished artifact is checked, so the
assembler bounds what one sender can make it hold: every chunk but the last has exactly the receiver's configured
chunk size (a declared chunk size of 1 byte would make a 1 GiB transfer a billion chunks), one sender may have only
so many partial transfers and declared bytes at once, a progress report lists a bounded number of missing chunks,
and no file stays open between chunks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from schemas.bundle import file_digest
from schemas.errors import RejectedError, RejectionCounter, RejectReason
from schemas.messages import MAX_LISTED_MISSING
from schemas.transfer import ChunkHeader, decode_chunk, encode_chunk

log = logging.getLogger(__name__)

DEFAULT_MAX_PARTIALS_PER_SOURCE = 4
"""Partial transfers one sender may have at once unless configured otherwise."""


@dataclass(frozen=True)
class TransferPlan:
    """An artifact file cut into chunks; ``frame(i)`` reads chunk i from disk when it is needed."""

    transfer_id: str
    path: Path
    total_size: int
    sha256: str
    chunk_size: int

    @classmethod
    def for_file(cls, path: Path, transfer_id: str, chunk_size: int) -> TransferPlan:
        digest = file_digest(path)
        return cls(transfer_id, path, digest.size_bytes, digest.sha256, chunk_size)

    @property
    def count(self) -> int:
        return max(1, math.ceil(self.total_size / self.chunk_size))

    def frame(self, index: int) -> bytes:
        if not 0 <= index < self.count:
            raise IndexError(f"chunk {index} out of range 0..{self.count - 1}")
        with self.path.open("rb") as handle:
            handle.seek(index * self.chunk_size)
            data = handle.read(self.chunk_size)
        header = ChunkHeader(
            transfer_id=self.transfer_id,
            index=index,
            count=self.count,
            chunk_size=self.chunk_size,
            total_size=self.total_size,
            sha256=self.sha256,
            chunk_crc32=zlib.crc32(data),
        )
        return encode_chunk(header, data)


class ChunkStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    COMPLETE = "complete"


@dataclass(frozen=True)
class ChunkOutcome:
    """What one frame did to its transfer."""

    transfer_id: str
    index: int
    status: ChunkStatus
    received: int
    count: int
    artifact: Path | None = None  # set once, when the transfer completes


@dataclass(frozen=True)
class TransferProgress:
    """A partial transfer as its receiver sees it, for a progress report."""

    received: int
    count: int
    missing: list[int]
    """The lowest missing chunk indices, at most the limit asked for (a report stays small whatever the count)."""


@dataclass
class _Partial:
    header: ChunkHeader  # geometry and whole hash, from the first chunk seen
    received: bytearray  # one byte per chunk: 0 missing, 1 written (count <= max_total_bytes / chunk_size)
    updated_at: float
    source: str  # where the chunks come from (the chunk topic), to know whom to ask for missing ones
    quota_key: str  # the sender its bytes and transfers count against (the edge id at the hub)
    received_count: int = 0  # kept with every write: summing the bitmap per chunk is quadratic in the count
    # Whole-artifact hash over the in-order prefix, so completion need not re-read the file. None after a restart.
    hasher: Any = None
    hashed: int = 0
    unsaved: int = 0  # chunks written since the state file was last saved


class TransferAssembler:
    """Receives chunk frames of many transfers into ``directory``; thread-safe.

    ``chunk_size`` is this receiver's configured chunk size (``broker.chunk_size_bytes``): a frame of any other
    geometry is refused. ``quota_key(source)`` names the sender a frame's source (its topic) counts against; each
    sender may have at most ``max_partials_per_source`` partial transfers whose declared sizes add up to at most
    ``max_partial_bytes_per_source``. Refused frames leave nothing behind: no file, no state, no memory.
    """

    def __init__(
        self,
        directory: Path,
        *,
        chunk_size: int,
        max_total_bytes: int,
        max_partials_per_source: int = DEFAULT_MAX_PARTIALS_PER_SOURCE,
        max_partial_bytes_per_source: int | None = None,
        quota_key: Callable[[str], str] | None = None,
        stale_after_s: float = 3600.0,
        rejections: RejectionCounter | None = None,
        save_every: int = 8,
    ) -> None:
        if chunk_size < 1 or max_partials_per_source < 1:
            raise ValueError("chunk_size and max_partials_per_source must be at least 1")
        self.directory = directory
        # The state file is rewritten every `save_every` chunks and on flush(); after a crash, chunks written
        # since the last save are simply missing again. Never confirm chunks to a sender before flush().
        self.save_every = save_every
        self.chunk_size = chunk_size
        self.max_total_bytes = max_total_bytes
        self.max_partials_per_source = max_partials_per_source
        # By default one sender may fill two transfers of the largest size at once (e.g. a retry beside a new one).
        self.max_partial_bytes_per_source = (
            2 * max_total_bytes if max_partial_bytes_per_source is None else max_partial_bytes_per_source
        )
        self._quota_key = quota_key or (lambda source: source)
        self.stale_after_s = stale_after_s
        self.rejections = rejections or RejectionCounter()
        self._lock = threading.Lock()
        self._partials: dict[str, _Partial] = {}
        directory.mkdir(parents=True, exist_ok=True)
        # Finished (completed or released) transfers, so a late chunk is a duplicate without touching the disk.
        self._finished = {p.stem for p in directory.glob("*.done")} | {p.stem for p in directory.glob("*.artifact")}
        self._load_state()

    # -- files -------------------------------------------------------------------------------------------------

    def _part(self, transfer_id: str) -> Path:
        return self.directory / f"{transfer_id}.part"

    def _state(self, transfer_id: str) -> Path:
        return self.directory / f"{transfer_id}.state.json"

    def artifact_path(self, transfer_id: str) -> Path:
        return self.directory / f"{transfer_id}.artifact"

    def _done_marker(self, transfer_id: str) -> Path:
        return self.directory / f"{transfer_id}.done"

    def _save_state(self, transfer_id: str, partial: _Partial) -> None:
        state = {
            "header": partial.header.model_dump(mode="json"),
            "received": base64.b64encode(bytes(partial.received)).decode("ascii"),
            "updated_at": partial.updated_at,
            "source": partial.source,
        }
        tmp = self._state(transfer_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._state(transfer_id))

    def _load_state(self) -> None:
        for state_file in sorted(self.directory.glob("*.state.json")):
            transfer_id = state_file.name.removesuffix(".state.json")
            try:
                state = json.loads(state_file.read_text())
                header = ChunkHeader.model_validate(state["header"])
                received = bytearray(base64.b64decode(state["received"]))
                if len(received) != header.count or not self._part(transfer_id).exists():
                    raise ValueError("state does not match the partial file")
                # Written under another configuration (or forged on disk): the same bounds as for a new frame.
                self._check_geometry(header)
            except (ValueError, KeyError, OSError, RejectedError) as exc:
                log.warning(
                    "dropping unreadable partial transfer", extra={"transfer_id": transfer_id, "error": str(exc)}
                )
                self._delete(transfer_id)
                continue
            source = str(state.get("source", ""))
            self._partials[transfer_id] = _Partial(
                header,
                received,
                float(state["updated_at"]),
                source,
                self._quota_key_of(source),
                received_count=received.count(1),
            )
            log.info(
                "resuming partial transfer",
                extra={"transfer_id": transfer_id, "received": received.count(1), "count": header.count},
            )

    def _quota_key_of(self, source: str) -> str:
        try:
            return self._quota_key(source)
        except ValueError:
            return source  # not a topic the key function knows: it counts as a sender of its own

    def _delete(self, transfer_id: str) -> None:
        for path in (self._part(transfer_id), self._state(transfer_id)):
            path.unlink(missing_ok=True)

    # -- receiving ---------------------------------------------------------------------------------------------

    def _reject(self, reason: RejectReason, message: str) -> RejectedError:
        self.rejections.add(reason)
        return RejectedError(reason, message)

    def _check_geometry(self, header: ChunkHeader) -> None:
        """Refuse a transfer this receiver would not cut the same way: the chunk size is the receiver's, not the
        sender's, so the chunk count (and with it the bitmap, the state file and every report) is bounded by
        max_total_bytes / chunk_size."""
        tid = header.transfer_id
        if header.chunk_size != self.chunk_size:
            raise RejectedError(
                RejectReason.MALFORMED,
                f"transfer {tid} declares chunks of {header.chunk_size} bytes; this receiver takes only "
                f"{self.chunk_size} (broker.chunk_size_bytes must be the same on sender and receiver)",
            )
        if header.total_size > self.max_total_bytes:
            raise RejectedError(
                RejectReason.TOO_LARGE,
                f"transfer {tid} of {header.total_size} bytes exceeds the limit of {self.max_total_bytes}",
            )

    def _check_quota(self, header: ChunkHeader, key: str) -> None:
        """Refuse a new transfer that would take its sender over its share of partial transfers or bytes."""
        mine = [p for p in self._partials.values() if p.quota_key == key]
        if len(mine) >= self.max_partials_per_source:
            raise self._reject(
                RejectReason.OVER_QUOTA,
                f"transfer {header.transfer_id} refused: sender {key!r} already has {len(mine)} partial transfers, "
                f"the limit is {self.max_partials_per_source}; it is accepted once one of them finishes or expires",
            )
        declared = sum(p.header.total_size for p in mine)
        if declared + header.total_size > self.max_partial_bytes_per_source:
            raise self._reject(
                RejectReason.OVER_QUOTA,
                f"transfer {header.transfer_id} of {header.total_size} bytes refused: sender {key!r} already has "
                f"{declared} bytes in partial transfers, the limit is {self.max_partial_bytes_per_source}",
            )

    def add(self, payload: bytes, source: str = "") -> ChunkOutcome:
        """Store one frame from ``source``. Raises RejectedError (counted) for a bad frame or a whole-hash mismatch."""
        try:
            header, data = decode_chunk(payload)
        except RejectedError as exc:
            self.rejections.add(exc.reason)
            raise
        tid = header.transfer_id
        with self._lock:
            if tid in self._finished:
                return ChunkOutcome(tid, header.index, ChunkStatus.DUPLICATE, header.count, header.count)
            partial = self._partials.get(tid)
            if partial is None:
                try:
                    self._check_geometry(header)
                except RejectedError as exc:
                    self.rejections.add(exc.reason)
                    raise
                key = self._quota_key_of(source)
                self._check_quota(header, key)
                with self._part(tid).open("wb") as handle:
                    handle.truncate(header.total_size)  # sparse: no disk used until written
                partial = _Partial(header, bytearray(header.count), time.time(), source, key, hasher=hashlib.sha256())
                self._partials[tid] = partial
            elif header.artifact_identity() != partial.header.artifact_identity():
                raise self._reject(
                    RejectReason.CONFLICT, f"chunk {header.index} of {tid} disagrees with earlier chunks"
                )
            if partial.received[header.index]:
                return ChunkOutcome(tid, header.index, ChunkStatus.DUPLICATE, partial.received_count, header.count)
            # Opened per chunk, not kept open per transfer: open files must not grow with the partial transfers.
            with self._part(tid).open("r+b") as handle:
                handle.seek(header.index * header.chunk_size)
                handle.write(data)
            partial.received[header.index] = 1
            partial.received_count += 1
            partial.updated_at = time.time()
            if partial.hasher is not None and header.index == partial.hashed:
                partial.hasher.update(data)
                partial.hashed += 1
                self._hash_ahead(tid, partial)
            received = partial.received_count
            if received < header.count:
                partial.unsaved += 1
                if partial.unsaved >= self.save_every:
                    self._save_state(tid, partial)
                    partial.unsaved = 0
                return ChunkOutcome(tid, header.index, ChunkStatus.ACCEPTED, received, header.count)
            return self._finish(tid, partial)

    def _hash_ahead(self, tid: str, partial: _Partial) -> None:
        """Extend the in-order hash over chunks that arrived early (read back from disk)."""
        if partial.hashed >= partial.header.count or not partial.received[partial.hashed]:
            return
        with self._part(tid).open("rb") as handle:
            handle.seek(partial.hashed * partial.header.chunk_size)
            while partial.hashed < partial.header.count and partial.received[partial.hashed]:
                partial.hasher.update(handle.read(partial.header.chunk_size))
                partial.hashed += 1

    def flush(self, transfer_id: str) -> None:
        """Persist what was received of a transfer, before confirming it to the sender."""
        with self._lock:
            partial = self._partials.get(transfer_id)
            if partial is not None and partial.unsaved:
                self._save_state(transfer_id, partial)
                partial.unsaved = 0

    def _finish(self, tid: str, partial: _Partial) -> ChunkOutcome:
        del self._partials[tid]
        if partial.hasher is not None and partial.hashed == partial.header.count:
            sha256 = partial.hasher.hexdigest()
        else:  # resumed after a restart: hash the assembled file
            sha256 = file_digest(self._part(tid)).sha256
        if sha256 != partial.header.sha256:
            self._delete(tid)
            self.rejections.add(RejectReason.HASH_MISMATCH)
            raise RejectedError(
                RejectReason.HASH_MISMATCH,
                f"transfer {tid}: the assembled artifact does not match its SHA-256",
                transfer_id=tid,
            )
        self._part(tid).replace(self.artifact_path(tid))
        self._state(tid).unlink(missing_ok=True)
        self._finished.add(tid)
        log.info("transfer complete", extra={"transfer_id": tid, "size": partial.header.total_size})
        return ChunkOutcome(
            tid,
            partial.header.count - 1,
            ChunkStatus.COMPLETE,
            partial.header.count,
            partial.header.count,
            self.artifact_path(tid),
        )

    # -- queries and housekeeping ------------------------------------------------------------------------------

    def missing(self, transfer_id: str, limit: int = MAX_LISTED_MISSING) -> list[int] | None:
        """The lowest ``limit`` indices not yet received; None if the transfer is unknown (never seen, or finished).

        Bounded so that a report fits one status message (``TransferStatusBody.missing``) whatever the count; the
        sender takes everything below the highest listed index that is not listed as received.
        """
        with self._lock:
            partial = self._partials.get(transfer_id)
            return None if partial is None else _lowest_missing(partial.received, limit)

    def progress(self, transfer_id: str, limit: int = MAX_LISTED_MISSING) -> TransferProgress | None:
        """Received and total chunk counts and the lowest ``limit`` missing indices; None if unknown."""
        with self._lock:
            partial = self._partials.get(transfer_id)
            if partial is None:
                return None
            return TransferProgress(
                partial.received_count, partial.header.count, _lowest_missing(partial.received, limit)
            )

    def partial_count(self) -> int:
        """Number of partial (unfinished) transfers held now."""
        with self._lock:
            return len(self._partials)

    def close(self) -> None:
        """Save progress (a later assembler over the directory resumes from it)."""
        with self._lock:
            for tid, partial in self._partials.items():
                if partial.unsaved:
                    self._save_state(tid, partial)
                    partial.unsaved = 0

    def count(self, transfer_id: str) -> int | None:
        """Number of chunks of a partial transfer; None if unknown."""
        with self._lock:
            partial = self._partials.get(transfer_id)
            return None if partial is None else partial.header.count

    def idle_partials(self, idle_s: float, now: float | None = None) -> list[tuple[str, str]]:
        """(transfer id, source) of partial transfers without a new chunk for ``idle_s`` seconds."""
        now = time.time() if now is None else now
        with self._lock:
            return [(tid, p.source) for tid, p in self._partials.items() if now - p.updated_at >= idle_s]

    def release(self, transfer_id: str, note: str = "") -> None:
        """The consumer is done with a completed artifact: delete it, and answer late chunks as duplicates.

        ``note`` (e.g. the verdict sent to the sender) is kept with the finished marker, on disk, until the
        marker expires, so it can be repeated to a sender that missed it, also after a restart.
        """
        with self._lock:
            self.artifact_path(transfer_id).unlink(missing_ok=True)
            marker = self._done_marker(transfer_id)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(note, encoding="utf-8")
            tmp.replace(marker)
            self._finished.add(transfer_id)

    def finished_note(self, transfer_id: str) -> str | None:
        """The note a released transfer was finished with; None if it is not released (or the marker expired)."""
        try:
            return self._done_marker(transfer_id).read_text(encoding="utf-8")
        except OSError:
            return None

    def expire_stale(self, now: float | None = None) -> list[str]:
        """Delete partial transfers without progress for ``stale_after_s``; returns their ids."""
        now = time.time() if now is None else now
        expired = []
        with self._lock:
            for tid, partial in list(self._partials.items()):
                if now - partial.updated_at >= self.stale_after_s:
                    self._delete(tid)
                    del self._partials[tid]
                    self.rejections.add(RejectReason.STALE)
                    expired.append(tid)
                    log.warning(
                        "stale partial transfer expired",
                        extra={"transfer_id": tid, "received": partial.received_count, "count": partial.header.count},
                    )
            for marker in self.directory.glob("*.done"):
                if now - marker.stat().st_mtime >= self.stale_after_s:
                    marker.unlink(missing_ok=True)
                    self._finished.discard(marker.stem)
        return expired


def _lowest_missing(received: bytearray, limit: int) -> list[int]:
    """The first ``limit`` indices whose byte is 0; ``bytearray.find`` skips received runs at C speed."""
    missing: list[int] = []
    index = received.find(0)
    while index >= 0 and len(missing) < limit:
        missing.append(index)
        index = received.find(0, index + 1)
    return missing
