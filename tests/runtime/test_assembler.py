"""Chunk frames and the assembler (``runtime.assembler``): any order, duplicates, missing chunks, corruption,
restarts, expiry, and the bounds a hostile sender meets before any signature is checked."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from runtime.assembler import ChunkStatus, TransferAssembler, TransferPlan
from schemas.errors import RejectedError, RejectReason
from schemas.messages import MAX_LISTED_MISSING, TransferState, TransferStatusBody
from schemas.transfer import ChunkHeader, decode_chunk, encode_chunk

CHUNK = 64 * 1024


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "artifact.bin"
    path.write_bytes(os.urandom(10 * CHUNK + 12345))
    return path


@pytest.fixture
def plan(artifact: Path) -> TransferPlan:
    return TransferPlan.for_file(artifact, "t-1", CHUNK)


def assembler(tmp_path: Path, **kw: float) -> TransferAssembler:
    return TransferAssembler(tmp_path / "inbox", chunk_size=CHUNK, max_total_bytes=10_000_000, **kw)  # type: ignore[arg-type]


def test_frames_are_self_describing(plan: TransferPlan, artifact: Path) -> None:
    assert plan.count == 11
    header, data = decode_chunk(plan.frame(10))
    assert (header.transfer_id, header.index, header.count, header.total_size) == ("t-1", 10, 11, plan.total_size)
    assert header.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert data == artifact.read_bytes()[10 * CHUNK :]
    assert len(plan.frame(0)) <= CHUNK + 1024


def test_any_order_with_duplicates_completes_once(tmp_path: Path, plan: TransferPlan, artifact: Path) -> None:
    inbox = assembler(tmp_path)
    order = [*range(plan.count), 3, 7]
    random.Random(5).shuffle(order)
    outcomes = [inbox.add(plan.frame(i)) for i in order]
    complete = [o for o in outcomes if o.status == ChunkStatus.COMPLETE]
    assert len(complete) == 1
    assert complete[0].artifact is not None
    assert complete[0].artifact.read_bytes() == artifact.read_bytes()
    assert sum(o.status == ChunkStatus.DUPLICATE for o in outcomes) == 2
    assert inbox.add(plan.frame(0)).status == ChunkStatus.DUPLICATE  # after completion too
    assert inbox.missing("t-1") is None


def test_missing_chunks_are_listed(tmp_path: Path, plan: TransferPlan) -> None:
    inbox = assembler(tmp_path)
    for i in range(plan.count):
        if i not in (2, 9):
            inbox.add(plan.frame(i))
    assert inbox.missing("t-1") == [2, 9]
    assert inbox.missing("unknown") is None


def test_flipped_byte_in_a_chunk_is_rejected_and_counted(tmp_path: Path, plan: TransferPlan) -> None:
    inbox = assembler(tmp_path)
    frame = bytearray(plan.frame(4))
    frame[-100] ^= 0x01
    with pytest.raises(RejectedError) as caught:
        inbox.add(bytes(frame))
    assert caught.value.reason == RejectReason.CHUNK_CORRUPT
    assert inbox.rejections[RejectReason.CHUNK_CORRUPT] == 1
    assert inbox.missing("t-1") is None  # nothing was stored


def test_whole_hash_mismatch_discards_the_transfer(tmp_path: Path, artifact: Path) -> None:
    inbox = assembler(tmp_path)
    honest = TransferPlan.for_file(artifact, "t-2", CHUNK)
    # A sender whose chunks are each consistent but whose claimed whole hash is wrong.
    lying = TransferPlan(honest.transfer_id, honest.path, honest.total_size, "0" * 64, CHUNK)
    for i in range(lying.count - 1):
        inbox.add(lying.frame(i))
    with pytest.raises(RejectedError) as caught:
        inbox.add(lying.frame(lying.count - 1))
    assert caught.value.reason == RejectReason.HASH_MISMATCH
    assert not inbox.artifact_path("t-2").exists()
    assert list((tmp_path / "inbox").iterdir()) == []


def test_conflicting_chunks_and_garbage(tmp_path: Path, plan: TransferPlan, artifact: Path) -> None:
    inbox = assembler(tmp_path)
    inbox.add(plan.frame(0))
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(plan.total_size))
    with pytest.raises(RejectedError) as caught:
        inbox.add(TransferPlan.for_file(other, "t-1", CHUNK).frame(1))
    assert caught.value.reason == RejectReason.CONFLICT
    for garbage in (b"", b"FIT1", b"hello world", b"FIT1\x00\x05{bad}"):
        with pytest.raises(RejectedError) as caught:
            inbox.add(garbage)
        assert caught.value.reason == RejectReason.MALFORMED


def test_oversize_transfer_is_refused(tmp_path: Path, plan: TransferPlan) -> None:
    inbox = TransferAssembler(tmp_path / "small", chunk_size=CHUNK, max_total_bytes=CHUNK)
    with pytest.raises(RejectedError) as caught:
        inbox.add(plan.frame(0))
    assert caught.value.reason == RejectReason.TOO_LARGE


def test_receiver_restart_keeps_what_it_had(tmp_path: Path, plan: TransferPlan, artifact: Path) -> None:
    first = assembler(tmp_path)
    for i in range(0, plan.count, 2):
        first.add(plan.frame(i))
    first.flush("t-1")
    second = assembler(tmp_path)  # a new process over the same directory
    assert second.missing("t-1") == list(range(1, plan.count, 2))
    outcomes = [second.add(plan.frame(i)) for i in range(1, plan.count, 2)]
    assert outcomes[-1].status == ChunkStatus.COMPLETE
    assert outcomes[-1].artifact is not None and outcomes[-1].artifact.read_bytes() == artifact.read_bytes()


def test_unflushed_chunks_are_missing_again_after_a_crash(tmp_path: Path, plan: TransferPlan, artifact: Path) -> None:
    first = TransferAssembler(tmp_path / "inbox", chunk_size=CHUNK, max_total_bytes=10_000_000, save_every=4)
    for i in range(6):
        first.add(plan.frame(i))
    # Saved after chunk 3; chunks 4 and 5 were written but not recorded when the process "died".
    second = TransferAssembler(tmp_path / "inbox", chunk_size=CHUNK, max_total_bytes=10_000_000)
    assert second.missing("t-1") == list(range(4, plan.count))
    outcomes = [second.add(plan.frame(i)) for i in range(4, plan.count)]
    assert outcomes[-1].status == ChunkStatus.COMPLETE  # hashed from disk, since the running hash was lost
    assert outcomes[-1].artifact is not None and outcomes[-1].artifact.read_bytes() == artifact.read_bytes()


def test_stale_partials_expire(tmp_path: Path, plan: TransferPlan) -> None:
    inbox = assembler(tmp_path, stale_after_s=60)
    inbox.add(plan.frame(0))
    assert inbox.expire_stale() == []
    assert inbox.expire_stale(now=time.time() + 61) == ["t-1"]
    assert inbox.missing("t-1") is None
    assert inbox.rejections[RejectReason.STALE] == 1
    assert list((tmp_path / "inbox").iterdir()) == []


def test_empty_artifact(tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    plan = TransferPlan.for_file(empty, "t-0", CHUNK)
    outcome = assembler(tmp_path).add(plan.frame(0))
    assert outcome.status == ChunkStatus.COMPLETE
    assert outcome.artifact is not None and outcome.artifact.read_bytes() == b""


def test_release_makes_late_chunks_duplicates(tmp_path: Path, plan: TransferPlan) -> None:
    inbox = assembler(tmp_path)
    for i in range(plan.count):
        inbox.add(plan.frame(i))
    inbox.release("t-1")
    assert not inbox.artifact_path("t-1").exists()
    assert inbox.add(plan.frame(3)).status == ChunkStatus.DUPLICATE


def test_finished_note_survives_a_restart_and_expires(tmp_path: Path, plan: TransferPlan) -> None:
    inbox = assembler(tmp_path, stale_after_s=60)
    for i in range(plan.count):
        inbox.add(plan.frame(i))
    assert inbox.finished_note("t-1") is None  # complete but not yet released
    inbox.release("t-1", '{"state": "complete"}')
    restarted = assembler(tmp_path, stale_after_s=60)
    assert restarted.add(plan.frame(2)).status == ChunkStatus.DUPLICATE
    assert restarted.finished_note("t-1") == '{"state": "complete"}'
    restarted.expire_stale(now=time.time() + 61)
    assert restarted.finished_note("t-1") is None


# -- hostile senders ------------------------------------------------------------------------------------------


def hostile_frame(transfer_id: str, total_size: int, *, chunk_size: int = CHUNK, index: int | None = None) -> bytes:
    """A well-formed frame (valid header, CRC) of a transfer that never finishes: by default its last chunk, which
    for a declared size of n * chunk_size + 1 carries a single byte."""
    count = max(1, math.ceil(total_size / chunk_size))
    index = count - 1 if index is None else index
    length = total_size - chunk_size * (count - 1) if index == count - 1 else chunk_size
    data = b"x" * length
    header = ChunkHeader(
        transfer_id=transfer_id,
        index=index,
        count=count,
        chunk_size=chunk_size,
        total_size=total_size,
        sha256="0" * 64,
        chunk_crc32=zlib.crc32(data),
    )
    return encode_chunk(header, data)


@pytest.mark.parametrize("chunk_size", [1, 4096, CHUNK - 1, CHUNK + 1, 2 * CHUNK])
def test_a_chunk_size_other_than_the_receivers_is_refused(tmp_path: Path, chunk_size: int) -> None:
    """A declared chunk size of 1 made the count equal the size: a bitmap, a state file and a report per byte."""
    inbox = assembler(tmp_path)
    for index in (0, None):  # a full chunk and the short last one
        with pytest.raises(RejectedError, match=rf"chunks of {chunk_size} bytes; this receiver takes only {CHUNK}"):
            inbox.add(hostile_frame("t-h", 3 * chunk_size + 1, chunk_size=chunk_size, index=index), "edge/a")
    assert inbox.rejections[RejectReason.MALFORMED] == 2
    assert inbox.missing("t-h") is None
    assert list((tmp_path / "inbox").iterdir()) == []  # nothing was created for it


def test_partial_transfers_per_sender_are_capped(tmp_path: Path, plan: TransferPlan, artifact: Path) -> None:
    inbox = assembler(tmp_path, max_partials_per_source=2)
    inbox.add(plan.frame(0), "edge/a")
    inbox.add(hostile_frame("t-a2", 3 * CHUNK), "edge/a")
    with pytest.raises(
        RejectedError, match=r"sender 'edge/a' already has 2 partial transfers, the limit is 2"
    ) as caught:
        inbox.add(hostile_frame("t-a3", 3 * CHUNK), "edge/a")
    assert caught.value.reason == RejectReason.OVER_QUOTA
    assert inbox.rejections[RejectReason.OVER_QUOTA] == 1
    assert not (tmp_path / "inbox" / "t-a3.part").exists()
    # Another sender has a share of its own, and the capped sender's transfers in progress go on.
    assert inbox.add(hostile_frame("t-b1", 3 * CHUNK), "edge/b").status == ChunkStatus.ACCEPTED
    outcomes = [inbox.add(plan.frame(i), "edge/a") for i in range(1, plan.count)]
    assert outcomes[-1].status == ChunkStatus.COMPLETE
    assert outcomes[-1].artifact is not None and outcomes[-1].artifact.read_bytes() == artifact.read_bytes()
    # One finished: the sender may start another.
    assert inbox.add(hostile_frame("t-a3", 3 * CHUNK), "edge/a").status == ChunkStatus.ACCEPTED


def test_declared_bytes_per_sender_are_capped(tmp_path: Path) -> None:
    inbox = assembler(tmp_path, max_partials_per_source=10, max_partial_bytes_per_source=5 * CHUNK)
    inbox.add(hostile_frame("t-1", 3 * CHUNK), "edge/a")
    with pytest.raises(RejectedError, match=rf"sender 'edge/a' already has {3 * CHUNK} bytes") as caught:
        inbox.add(hostile_frame("t-2", 3 * CHUNK), "edge/a")
    assert caught.value.reason == RejectReason.OVER_QUOTA
    assert inbox.add(hostile_frame("t-3", 2 * CHUNK), "edge/a").status == ChunkStatus.ACCEPTED
    assert inbox.add(hostile_frame("t-4", 3 * CHUNK), "edge/b").status == ChunkStatus.ACCEPTED


def test_senders_are_grouped_by_the_quota_key(tmp_path: Path) -> None:
    """At the hub an edge's quota spans all its update topics (edge/{id}/update/{transfer})."""
    inbox = TransferAssembler(
        tmp_path / "inbox",
        chunk_size=CHUNK,
        max_total_bytes=10_000_000,
        max_partials_per_source=1,
        quota_key=lambda topic: topic.split("/")[1],
    )
    inbox.add(hostile_frame("t-1", 3 * CHUNK), "edge/a/update/t-1")
    with pytest.raises(RejectedError, match="sender 'a'"):
        inbox.add(hostile_frame("t-2", 3 * CHUNK), "edge/a/update/t-2")
    assert inbox.add(hostile_frame("t-3", 3 * CHUNK), "edge/b/update/t-3").status == ChunkStatus.ACCEPTED


def test_progress_report_lists_a_bounded_number_of_missing_chunks(tmp_path: Path) -> None:
    count = 3 * MAX_LISTED_MISSING
    inbox = TransferAssembler(tmp_path / "inbox", chunk_size=CHUNK, max_total_bytes=count * CHUNK)
    inbox.add(hostile_frame("t-big", count * CHUNK, index=0))
    inbox.add(hostile_frame("t-big", count * CHUNK, index=5))
    progress = inbox.progress("t-big")
    assert progress is not None
    assert (progress.received, progress.count) == (2, count)
    assert len(progress.missing) == MAX_LISTED_MISSING
    assert progress.missing[:5] == [1, 2, 3, 4, 6]  # the lowest first, the received ones left out
    assert inbox.missing("t-big", limit=3) == [1, 2, 3]
    missing = inbox.missing("t-big")
    assert missing is not None and len(missing) == MAX_LISTED_MISSING
    # What the receiver sends as its report must fit the status message.
    body = TransferStatusBody(
        transfer_id="t-big", state=TransferState.RECEIVING, received=2, count=count, missing=progress.missing
    )
    assert body.missing is not None and len(body.missing) == MAX_LISTED_MISSING


def test_a_restarted_receiver_drops_partials_of_another_chunk_size(tmp_path: Path, plan: TransferPlan) -> None:
    first = assembler(tmp_path)
    first.add(plan.frame(0))
    first.flush("t-1")
    other = TransferAssembler(tmp_path / "inbox", chunk_size=2 * CHUNK, max_total_bytes=10_000_000)
    assert other.missing("t-1") is None
    assert list((tmp_path / "inbox").iterdir()) == []


def _open_files() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_many_hostile_frames_leave_memory_disk_and_open_files_bounded(tmp_path: Path) -> None:
    """Small frames that each start a transfer of the largest size (or declare 1-byte chunks) from three senders:
    what the receiver holds stays within its per-sender caps, whatever the number of frames."""
    max_total = 4 * 1024**2
    cap = 4
    inbox = TransferAssembler(
        tmp_path / "inbox",
        chunk_size=CHUNK,
        max_total_bytes=max_total,
        max_partials_per_source=cap,
        max_partial_bytes_per_source=64 * max_total,
        save_every=1,  # a state file per chunk: the most disk a partial can take
    )
    senders = ("edge/a", "edge/b", "edge/c")
    frames_per_sender = 120
    files_before = _open_files()
    tracemalloc.start()
    try:
        for n in range(frames_per_sender):
            for sender in senders:
                tid = f"{sender[-1]}-{n}"
                if n % 4 == 0:  # the measured attack: 1-byte chunks, so the count equals the size
                    frame = hostile_frame(tid, max_total, chunk_size=1)
                else:  # the single last byte of a transfer of the largest size
                    frame = hostile_frame(tid, max_total - CHUNK + 1)
                with contextlib.suppress(RejectedError):  # counted by reason below
                    inbox.add(frame, sender)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = len(senders) * cap
    assert inbox.partial_count() == held
    refused = len(senders) * frames_per_sender - held
    assert inbox.rejections[RejectReason.MALFORMED] + inbox.rejections[RejectReason.OVER_QUOTA] == refused
    assert _open_files() == files_before  # no file stays open per partial transfer
    assert peak < 2 * 1024**2, f"peak traced memory {peak} bytes"
    files = list((tmp_path / "inbox").iterdir())
    assert len(files) <= 2 * held  # a part file and a state file per partial transfer
    on_disk = sum(f.stat().st_blocks * 512 for f in files)
    assert on_disk <= held * 64 * 1024, f"{on_disk} bytes on disk"
    for tid, _source in inbox.idle_partials(0.0):
        progress = inbox.progress(tid)
        assert progress is not None and len(progress.missing) <= MAX_LISTED_MISSING
