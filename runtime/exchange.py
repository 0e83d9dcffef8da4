"""Chunked artifact exchange over the MQTT link: a resumable sender outbox and a receiver that reports back.

Sender (``TransferOutbox``): an artifact submitted for sending is moved into the outbox's spool directory and
recorded in SQLite with a bitmap of the chunks the receiver has confirmed. Chunks go out as QoS 1 publishes in a
bounded window (memory stays flat whatever the size). The receiver's ``transfer_status`` messages update the
bitmap; after a restart of the sending process the outbox resumes and sends only what was not confirmed. Chunks
the receiver reports missing are sent again; if neither a completion nor progress arrives for ``retry_after_s``,
unconfirmed chunks are re-sent. A transfer ends as complete (spool file deleted) or rejected (with the reason).

Receiver (``TransferReceiver``): feeds chunk frames into a ``TransferAssembler``, confirms progress every few
chunks, asks for missing chunks of idle transfers (``request_missing``), and on completion hands the verified
artifact to a callback in a worker thread; the callback's RejectedError becomes the final "rejected" status.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, LargeBinary, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from runtime.assembler import ChunkOutcome, ChunkStatus, TransferAssembler, TransferPlan
from runtime.mqtt import MqttLink, PublishHandle, ReceivedMessage
from schemas.base import utc_now
from schemas.errors import LinkError, RejectedError
from schemas.manifests import FileDigest
from schemas.messages import MAX_LISTED_MISSING, TransferState, TransferStatusBody, TransferStatusMessage

log = logging.getLogger(__name__)


class ExchangeBase(DeclarativeBase):
    """The declarative base of the sender's table; the process that owns the database migrates it (the edge's
    buffer.db: ``edge/migrations``). ``ExchangeBase.metadata.create_all`` is only for a scratch database."""


class OutboxTransfer(ExchangeBase):
    """One artifact being sent; ``confirmed`` holds one byte per chunk (1 = the receiver has it)."""

    __tablename__ = "outbox_transfers"

    transfer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    topic: Mapped[str] = mapped_column(String(512))
    artifact: Mapped[str] = mapped_column(String(4096))
    total_size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    chunk_size: Mapped[int]
    confirmed: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), default=TransferState.RECEIVING.value)
    reason: Mapped[str | None] = mapped_column(String(2000), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


@dataclass(frozen=True)
class TransferRecord:
    """A snapshot of an outbox transfer."""

    transfer_id: str
    state: TransferState
    confirmed: int
    count: int
    reason: str | None


class TransferOutbox:
    """Sends artifacts in chunks and survives restarts of its own process. Call ``start()`` to run it."""

    def __init__(
        self,
        link: MqttLink,
        engine: Engine,
        spool_dir: Path,
        *,
        window: int | None = None,
        retry_after_s: float = 30.0,
        chunk_delay_s: float = 0.0,
        on_chunk_sent: Callable[[str, int], None] | None = None,
    ) -> None:
        self.link = link
        self.engine = engine
        self.spool_dir = spool_dir
        self.window = window or link.config.max_inflight
        self.retry_after_s = retry_after_s
        self._chunk_delay_s = chunk_delay_s  # throttle for tests that must stop a transfer midway
        self._on_chunk_sent = on_chunk_sent  # progress hook (transfer id, chunk index) for displays and logs
        self.chunks_sent = 0
        spool_dir.mkdir(parents=True, exist_ok=True)
        # In-memory only: what this process already published and the broker acknowledged. After a restart it
        # is empty, so everything the receiver has not confirmed goes out again (and nothing it confirmed).
        self._sent: dict[str, set[int]] = {}
        self._last_progress: dict[str, float] = {}
        # Ended transfers (ids are never reused: submit refuses a known id), so a send pass that read the
        # transfer list before the verdict arrived does not bring their state back.
        self._ended: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._finished = threading.Condition()

    # -- API ---------------------------------------------------------------------------------------------------

    def submit(self, artifact: Path, transfer_id: str, topic: str, *, digest: FileDigest | None = None) -> None:
        """Take ownership of ``artifact`` (moved into the spool) and send it on ``topic``. Idempotent by id.

        ``digest`` is the artifact's size and SHA-256 when the caller already has them (``pack_bundle`` returns
        them), which saves reading the file once more; a wrong one only makes the receiver reject the transfer.
        """
        with Session(self.engine) as session, session.begin():
            if session.get(OutboxTransfer, transfer_id) is not None:
                return
            if digest is not None and (size := artifact.stat().st_size) != digest.size_bytes:
                raise ValueError(f"{artifact}: {size} bytes, but the given digest says {digest.size_bytes}")
            spooled = self.spool_dir / f"{transfer_id}.artifact"
            if artifact.resolve() != spooled.resolve():
                shutil.move(artifact, spooled)
            chunk_size = self.link.config.chunk_size_bytes
            if digest is None:
                plan = TransferPlan.for_file(spooled, transfer_id, chunk_size)
            else:
                plan = TransferPlan(transfer_id, spooled, digest.size_bytes, digest.sha256, chunk_size)
            session.add(
                OutboxTransfer(
                    transfer_id=transfer_id,
                    topic=topic,
                    artifact=str(spooled),
                    total_size=plan.total_size,
                    sha256=plan.sha256,
                    chunk_size=plan.chunk_size,
                    confirmed=bytes(plan.count),
                )
            )
        log.info("transfer queued", extra={"transfer_id": transfer_id, "topic": topic, "size": plan.total_size})
        self._wake.set()

    def record(self, transfer_id: str) -> TransferRecord | None:
        with Session(self.engine) as session:
            row = session.get(OutboxTransfer, transfer_id)
            return None if row is None else _snapshot(row)

    def wait_finished(self, transfer_id: str, timeout: float) -> TransferRecord:
        """Block until the transfer is complete or rejected; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._finished:  # checked under the lock the notifier takes: no lost wake-up
            while True:
                record = self.record(transfer_id)
                if record is not None and record.state != TransferState.RECEIVING:
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"transfer {transfer_id} not finished after {timeout:g} s: {record}")
                self._finished.wait(min(remaining, 1.0))

    def handle_status(self, message: ReceivedMessage[TransferStatusMessage]) -> None:
        """Subscribe this to the receiver's status topic (e.g. ``topics.edge_update_statuses(edge_id)``)."""
        status = message.payload.body
        with Session(self.engine) as session, session.begin():
            row = session.get(OutboxTransfer, status.transfer_id)
            if row is None or row.state != TransferState.RECEIVING.value:
                return
            count = len(row.confirmed)
            if status.state == TransferState.RECEIVING:
                if status.missing is None:
                    confirmed = bytes(count)
                else:
                    listed = set(status.missing)
                    # The receiver lists at most MAX_LISTED_MISSING indices; beyond the list nothing is confirmed.
                    horizon = count if len(status.missing) < MAX_LISTED_MISSING else max(listed, default=0)
                    confirmed = bytes(1 if i < horizon and i not in listed else 0 for i in range(count))
                row.confirmed = bytes(a | b for a, b in zip(row.confirmed, confirmed, strict=True))
                with self._lock:
                    self._last_progress[status.transfer_id] = time.monotonic()
                    if status.request:
                        sent = self._sent.setdefault(status.transfer_id, set())
                        sent.difference_update(range(count) if status.missing is None else status.missing)
                        log.info(
                            "receiver asks for chunks",
                            extra={
                                "transfer_id": status.transfer_id,
                                "chunks": count if status.missing is None else len(status.missing),
                            },
                        )
            else:
                row.state = status.state.value
                row.reason = status.reason
                # The verdict is final either way; the reason stays in the record and the log.
                Path(row.artifact).unlink(missing_ok=True)
                if status.state == TransferState.COMPLETE:
                    row.confirmed = b"\x01" * count
                    log.info("transfer confirmed complete", extra={"transfer_id": status.transfer_id})
                else:
                    log.error(
                        "transfer rejected by receiver",
                        extra={"transfer_id": status.transfer_id, "reason": status.reason},
                    )
        if status.state != TransferState.RECEIVING:
            self._forget(status.transfer_id)
            with self._finished:
                self._finished.notify_all()
        self._wake.set()

    def _forget(self, transfer_id: str) -> None:
        """Drop the in-memory send state of a transfer that has ended."""
        with self._lock:
            self._ended.add(transfer_id)
            self._sent.pop(transfer_id, None)
            self._last_progress.pop(transfer_id, None)

    def _finish(self, transfer_id: str, state: TransferState, reason: str) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(OutboxTransfer, transfer_id)
            if row is not None:
                row.state, row.reason = state.value, reason
        self._forget(transfer_id)
        log.error(
            "transfer ended by sender", extra={"transfer_id": transfer_id, "state": state.value, "reason": reason}
        )
        with self._finished:
            self._finished.notify_all()

    # -- sending -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="transfer-outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                busy = self.pump()
            except Exception:
                log.exception("transfer outbox pump failed; retrying")
                busy = False
            self._wake.wait(0.05 if busy else 1.0)

    def pump(self) -> bool:
        """Send what is due now; returns True if chunks went out (more may follow)."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(OutboxTransfer).where(OutboxTransfer.state == TransferState.RECEIVING.value)
            ).all()
            pending = [(_plan(row), bytes(row.confirmed), row.topic) for row in rows]
        progressed = False
        for plan, confirmed, topic in pending:
            if self._stop.is_set() or not self.link.connected:
                break
            progressed |= self._send_due(plan, confirmed, topic)
        return progressed

    def _send_due(self, plan: TransferPlan, confirmed: bytes, topic: str) -> bool:
        tid = plan.transfer_id
        with self._lock:
            if tid in self._ended:
                return False
            sent = self._sent.setdefault(tid, set())
            last = self._last_progress.setdefault(tid, time.monotonic())
            due = [i for i in range(plan.count) if not confirmed[i] and i not in sent]
            if not due and time.monotonic() - last > self.retry_after_s and not all(confirmed):
                # Everything went out but neither completion nor progress came back: send unconfirmed again.
                log.warning("no answer from receiver; re-sending unconfirmed chunks", extra={"transfer_id": tid})
                sent.clear()
                self._last_progress[tid] = time.monotonic()
                due = [i for i in range(plan.count) if not confirmed[i]]
        if not due:
            return False
        if not plan.path.exists():
            # Only a finished transfer loses its spool file; anything else means the spool was tampered with.
            record = self.record(tid)
            if record is not None and record.state == TransferState.RECEIVING:
                self._finish(tid, TransferState.REJECTED, f"spool file {plan.path} disappeared")
            return False
        try:
            send_frames(
                self.link,
                topic,
                plan,
                due,
                window=self.window,
                on_acknowledged=lambda index: self._acknowledged(tid, index),
                stop=self._stop,
                delay_s=self._chunk_delay_s,
            )
        except LinkError as exc:
            # Disconnected or refused: paho keeps QoS 1 messages it accepted and the receiver's status decides
            # what is still missing, so just try again later.
            log.warning("transfer paused", extra={"transfer_id": tid, "error": str(exc)})
            return False
        with self._lock:
            if tid in self._sent:  # still live: the verdict may already have ended it
                self._last_progress[tid] = time.monotonic()
        return True

    def _acknowledged(self, transfer_id: str, index: int) -> None:
        self.chunks_sent += 1
        with self._lock:
            sent = self._sent.get(transfer_id)
            if sent is not None:  # None: the verdict came before this PUBACK and the transfer was forgotten
                sent.add(index)
        if self._on_chunk_sent is not None:
            self._on_chunk_sent(transfer_id, index)


def send_frames(
    link: MqttLink,
    topic: str,
    plan: TransferPlan,
    indices: Iterable[int],
    *,
    window: int,
    on_acknowledged: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    delay_s: float = 0.0,
) -> None:
    """Publish chunk frames at QoS 1 with at most ``window`` unacknowledged (memory stays bounded).

    Raises LinkError (e.g. PublishTimeoutError while the broker is away); what was acknowledged was reported.
    """
    in_flight: deque[tuple[int, PublishHandle]] = deque()
    for index in indices:
        if stop is not None and stop.is_set():
            break
        in_flight.append((index, link.publish(topic, plan.frame(index))))
        if delay_s:
            time.sleep(delay_s)
        if len(in_flight) >= window:
            _wait_acknowledged(*in_flight.popleft(), on_acknowledged)
    while in_flight:
        _wait_acknowledged(*in_flight.popleft(), on_acknowledged)


def _wait_acknowledged(index: int, handle: PublishHandle, on_acknowledged: Callable[[int], None] | None) -> None:
    handle.wait()
    if on_acknowledged is not None:
        on_acknowledged(index)


def _plan(row: OutboxTransfer) -> TransferPlan:
    return TransferPlan(row.transfer_id, Path(row.artifact), row.total_size, row.sha256, row.chunk_size)


def _snapshot(row: OutboxTransfer) -> TransferRecord:
    return TransferRecord(row.transfer_id, TransferState(row.state), sum(row.confirmed), len(row.confirmed), row.reason)


CompletionHandler = Callable[[str, str, Path], None]
"""Called as handler(chunk topic, transfer id, artifact path) once a transfer is complete and hash-checked.
Raise RejectedError to refuse the artifact; the sender is told the reason."""


class TransferReceiver:
    """Receives chunk frames on ``chunk_filter`` (one topic filter or several) and reports to the sender on
    ``reply_topic(topic, transfer_id)``."""

    def __init__(
        self,
        link: MqttLink,
        assembler: TransferAssembler,
        *,
        chunk_filter: str | Sequence[str],
        reply_topic: Callable[[str, str], str],
        on_complete: CompletionHandler,
        confirm_every: int = 8,
    ) -> None:
        self.link = link
        self.assembler = assembler
        self.chunk_filters = [chunk_filter] if isinstance(chunk_filter, str) else list(chunk_filter)
        self._reply_topic = reply_topic
        self._on_complete = on_complete
        self._confirm_every = confirm_every
        self._last_request: dict[str, float] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transfer-complete")
        self._stop = threading.Event()
        self._housekeeping: threading.Thread | None = None
        for topic_filter in self.chunk_filters:
            link.subscribe(topic_filter, self._on_chunk)

    def start(self, *, interval_s: float = 1.0, idle_s: float = 5.0) -> None:
        """Every ``interval_s``: ask for missing chunks of idle transfers and expire stale ones."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.request_missing(idle_s)
                    self.assembler.expire_stale()
                except Exception:
                    log.exception("transfer housekeeping failed")

        if self._housekeeping is None:
            self._housekeeping = threading.Thread(target=loop, name="transfer-housekeeping", daemon=True)
            self._housekeeping.start()

    def close(self) -> None:
        self._stop.set()
        if self._housekeeping is not None:
            self._housekeeping.join(timeout=5)
        self._worker.shutdown(wait=True)
        self.assembler.close()

    def _reply(self, topic: str, body: TransferStatusBody) -> None:
        try:
            self.link.publish(
                self._reply_topic(topic, body.transfer_id),
                TransferStatusMessage(sender=self.link.node_id, body=body),
            )
        except LinkError as exc:
            log.warning("transfer status not sent", extra={"transfer_id": body.transfer_id, "error": str(exc)})

    def _on_chunk(self, message: ReceivedMessage[bytes]) -> None:
        try:
            outcome = self.assembler.add(message.payload, source=message.topic)
        except RejectedError as exc:
            log.warning("chunk rejected", extra={"topic": message.topic, "reason": exc.reason.value, "error": str(exc)})
            if exc.transfer_id is not None:
                # Every chunk passed its CRC, so the sender's artifact itself does not match the hash it announced:
                # sending it again cannot help. End the transfer with a verdict instead of waiting forever.
                self._reject_transfer(message.topic, exc.transfer_id, exc)
            return  # a bad chunk stays missing and is asked for again
        tid = outcome.transfer_id
        if outcome.status == ChunkStatus.COMPLETE:
            assert outcome.artifact is not None
            self._worker.submit(self._complete, message.topic, outcome)
        elif outcome.status == ChunkStatus.DUPLICATE and outcome.received == outcome.count:
            verdict = self.assembler.finished_note(tid)
            if verdict:  # the sender missed our verdict (perhaps before we restarted); tell it again
                self._reply(message.topic, TransferStatusBody.model_validate_json(verdict))
        elif outcome.status == ChunkStatus.ACCEPTED and outcome.received % self._confirm_every == 0:
            self._reply(message.topic, self._progress(tid))

    def _reject_transfer(self, topic: str, transfer_id: str, error: RejectedError) -> None:
        verdict = TransferStatusBody(
            transfer_id=transfer_id, state=TransferState.REJECTED, received=0, count=None, reason=str(error)
        )
        self.assembler.release(transfer_id, verdict.model_dump_json())
        self._last_request.pop(transfer_id, None)
        self._reply(topic, verdict)

    def _progress(self, transfer_id: str) -> TransferStatusBody:
        self.assembler.flush(transfer_id)  # never confirm a chunk that a crash could still lose
        # At most MAX_LISTED_MISSING indices, the lowest first: the report's size does not grow with the count.
        progress = self.assembler.progress(transfer_id, MAX_LISTED_MISSING)
        if progress is None:
            return TransferStatusBody(transfer_id=transfer_id, state=TransferState.RECEIVING)
        return TransferStatusBody(
            transfer_id=transfer_id,
            state=TransferState.RECEIVING,
            received=progress.received,
            count=progress.count,
            missing=progress.missing,
        )

    def _complete(self, topic: str, outcome: ChunkOutcome) -> None:
        tid = outcome.transfer_id
        assert outcome.artifact is not None
        try:
            self._on_complete(topic, tid, outcome.artifact)
            verdict = TransferStatusBody(
                transfer_id=tid, state=TransferState.COMPLETE, received=outcome.count, count=outcome.count
            )
        except RejectedError as exc:
            self.assembler.rejections.add(exc.reason)
            log.error("artifact rejected", extra={"transfer_id": tid, "reason": exc.reason.value, "error": str(exc)})
            verdict = TransferStatusBody(
                transfer_id=tid,
                state=TransferState.REJECTED,
                received=outcome.count,
                count=outcome.count,
                reason=str(exc),
            )
        except Exception as exc:
            log.exception("artifact handler failed", extra={"transfer_id": tid})
            verdict = TransferStatusBody(
                transfer_id=tid,
                state=TransferState.REJECTED,
                received=outcome.count,
                count=outcome.count,
                reason=f"receiver error: {exc}",
            )
        self.assembler.release(tid, verdict.model_dump_json())
        self._last_request.pop(tid, None)
        self._reply(topic, verdict)

    def request_missing(self, idle_s: float = 5.0) -> list[str]:
        """Ask senders of transfers idle for ``idle_s`` for their missing chunks; returns those transfer ids.

        Call it periodically; it asks again for the same transfer at most once per ``idle_s``.
        """
        asked = []
        now = time.time()
        for tid, source in self.assembler.idle_partials(idle_s, now):
            if not source or now - self._last_request.get(tid, 0.0) < idle_s:
                continue
            self._reply(source, self._progress(tid).model_copy(update={"request": True}))
            self._last_request[tid] = now
            asked.append(tid)
        return asked
