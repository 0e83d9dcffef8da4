"""Chunk frames and the assembler: any order, duplicates, missing chunks, corruption, restarts, expiry."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from schemas.errors import RejectedError, RejectReason
from schemas.transfer import ChunkStatus, TransferAssembler, TransferPlan, decode_chunk

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
    return TransferAssembler(tmp_path / "inbox", max_total_bytes=10_000_000, **kw)  # type: ignore[arg-type]


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
    inbox = TransferAssembler(tmp_path / "small", max_total_bytes=CHUNK)
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
    first = TransferAssembler(tmp_path / "inbox", max_total_bytes=10_000_000, save_every=4)
    for i in range(6):
        first.add(plan.frame(i))
    # Saved after chunk 3; chunks 4 and 5 were written but not recorded when the process "died".
    second = TransferAssembler(tmp_path / "inbox", max_total_bytes=10_000_000)
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
