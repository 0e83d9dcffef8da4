"""The edge buffer: atomic records, content-addressed images, review routing, schema versioning, ordered outbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from edge.buffer import EdgeBuffer
from edge.buffer.images import BufferFullError
from edge.db import open_edge_database
from edge.inference.pipeline import InspectionResult
from edge.inference.templates import Template
from edge.inspection import StoredInspection, review_severity, store_inspection
from schemas.config import ReviewConfig
from schemas.messages import DetectionBox, InspectionEventMessage, ReviewSeverity, StageLatency, Verdict

TOPIC = "t/v1/edge/line-1/events"


def record(buffer: EdgeBuffer, image: bytes, result: InspectionResult, **details: Any) -> StoredInspection:
    """Store an inspection the way the edge's intake does (``edge.inspection.store_inspection``) for edge line-1."""
    return store_inspection(buffer, image, result, edge_id="line-1", **details)


def result(score: float, boxes: int = 0) -> InspectionResult:
    verdict = Verdict.DEFECTIVE if score >= 0.5 else Verdict.GOOD
    found = tuple(
        DetectionBox(x1=i, y1=i, x2=i + 5, y2=i + 5, class_id=0, class_name="open", score=0.9) for i in range(boxes)
    )
    return InspectionResult(
        verdict=verdict,
        score=score,
        boxes=found,
        model_versions={"cls": 3},
        image_width=64,
        image_height=48,
        latency=StageLatency(decode_ms=1.0, classify_ms=2.0, detect_ms=3.0 if boxes else None, total_ms=6.5),
    )


def make_buffer(tmp_path: Path) -> EdgeBuffer:
    return EdgeBuffer(open_edge_database(tmp_path / "buffer.db"), tmp_path / "images")


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.1, None), (0.4, ReviewSeverity.UNCERTAIN), (0.6, ReviewSeverity.UNCERTAIN), (0.9, ReviewSeverity.ALERT)],
)
def test_review_routing(score: float, expected: ReviewSeverity | None) -> None:
    verdict = Verdict.DEFECTIVE if score >= 0.5 else Verdict.GOOD
    assert review_severity(verdict, score, ReviewConfig()) == expected
    assert review_severity(Verdict.DEFECTIVE, 0.9, ReviewConfig(alert_defective=False)) is None


def test_record_stores_everything_in_one_go(tmp_path: Path) -> None:
    buffer = make_buffer(tmp_path)
    image = b"\x89PNG fake image bytes"
    stored = record(buffer, image, result(0.9, boxes=2), source="http", review=ReviewConfig(), event_topic=TOPIC)
    event = stored.event.body
    assert event.sample_id == stored.sample_id and event.review == ReviewSeverity.ALERT
    assert [b.class_name for b in event.boxes] == ["open", "open"] and event.model_versions == {"cls": 3}
    assert buffer.images.path(event.image_sha256).read_bytes() == image
    assert (buffer.samples.count(), buffer.samples.review_backlog(), buffer.outbox.backlog()) == (1, 1, 1)
    [pending] = buffer.outbox.pending(10)
    assert pending.topic == TOPIC
    assert InspectionEventMessage.model_validate_json(pending.payload) == stored.event
    record(buffer, image, result(0.1), source="folder", review=ReviewConfig(), event_topic=TOPIC)
    assert buffer.samples.count() == 2 and buffer.samples.review_backlog() == 1
    assert len(list((tmp_path / "images").rglob("*.img"))) == 1, "identical images are stored once"


def test_outbox_is_ordered_and_marked_sent(tmp_path: Path) -> None:
    buffer = make_buffer(tmp_path)
    samples = [
        record(buffer, bytes([i]) * 10, result(0.1), source="http", review=ReviewConfig(), event_topic=TOPIC).sample_id
        for i in range(5)
    ]
    first = buffer.outbox.pending(3)
    assert [InspectionEventMessage.model_validate_json(m.payload).body.sample_id for m in first] == samples[:3]
    buffer.outbox.mark_sent([m.id for m in first])
    rest = buffer.outbox.pending(10)
    assert [InspectionEventMessage.model_validate_json(m.payload).body.sample_id for m in rest] == samples[3:]
    assert buffer.outbox.backlog() == 2


def test_reopening_keeps_data(tmp_path: Path) -> None:
    buffer = make_buffer(tmp_path)
    record(buffer, b"abc", result(0.7), source="http", review=ReviewConfig(), event_topic=TOPIC)
    buffer.engine.dispose()
    again = make_buffer(tmp_path)
    assert again.samples.count() == 1 and again.outbox.backlog() == 1


def test_quota_evicts_in_the_documented_order_and_never_what_must_stay(tmp_path: Path) -> None:
    buffer = make_buffer(tmp_path)
    review_off = ReviewConfig(alert_defective=False, uncertain_low=0.0, uncertain_high=0.0)

    def add(tag: int, score: float = 0.1, review: ReviewConfig = review_off) -> tuple[str, str]:
        stored = record(buffer, bytes([tag]) * 1000, result(score), source="http", review=review, event_topic=TOPIC)
        return stored.sample_id, stored.event.body.image_sha256

    _, sha_old = add(1)
    trained, sha_trained = add(2)
    buffer.labels.add(trained, verdict="good", boxes=[], source="operator", author="a")
    buffer.labels.mark_trained([trained])
    labeled, sha_labeled = add(3)
    buffer.labels.add(labeled, verdict="good", boxes=[], source="operator", author="a")
    _, sha_review = add(4, score=0.9, review=ReviewConfig())
    _, sha_newer = add(5)
    buffer.outbox.mark_sent([m.id for m in buffer.outbox.pending(100)])
    _, sha_unsent = add(6)
    assert buffer.images.stored_bytes() == 6000

    assert buffer.images.enforce_quota(5000) == 1
    assert not buffer.images.path(sha_old).exists() and buffer.images.path(sha_newer).exists(), "oldest first"
    assert buffer.images.enforce_quota(3000) == 2
    assert not buffer.images.path(sha_newer).exists() and not buffer.images.path(sha_trained).exists()
    assert buffer.images.enforce_quota(0) == 0, "nothing else may go"
    for kept in (sha_labeled, sha_review, sha_unsent):
        assert buffer.images.path(kept).exists()
    assert buffer.images.stored_bytes() == 3000 and buffer.samples.count() == 6, "rows stay"
    assert len(buffer.outbox.pending(100)) == 1 and buffer.outbox.pending(100)[0].topic == TOPIC


def test_the_holdout_is_a_fifth_of_the_keys_and_samples_without_a_key_split_by_their_id(tmp_path: Path) -> None:
    from edge.buffer.labels import HOLDOUT_FRACTION, is_holdout

    # fixed keys: the fraction is the same on every run (10,000 keys put it within about 1 % of the target)
    assert abs(sum(is_holdout(f"board-{n:05d}") for n in range(10_000)) / 10_000 - HOLDOUT_FRACTION) < 0.01
    # pinned: a change of the split would move trained samples into every plant's holdout
    assert [n for n in range(40) if is_holdout(f"board-{n:05d}")] == [1, 4, 12, 14, 20, 24, 34, 35, 39]

    buffer = make_buffer(tmp_path)
    ids = [
        buffer.samples.import_labeled(f"{n}".encode(), width=8, height=8, verdict="good", boxes=[], author="qa")
        for n in range(40)
    ]
    holdout = {s.sample_id for s in buffer.labels.labeled_samples(holdout=True)}
    assert holdout == {i for i in ids if is_holdout(i)}
    assert {s.sample_id for s in buffer.labels.labeled_samples(holdout=False)} == set(ids) - holdout


def test_samples_sharing_a_split_key_fall_on_the_same_side_of_the_holdout(tmp_path: Path) -> None:
    """A board's template and test image (DeepPCB naming) train together or are scored together, never split."""
    buffer = EdgeBuffer(open_edge_database(tmp_path / "buffer.db"), tmp_path / "images")
    for board in range(150):
        for verdict in ("good", "defective"):
            buffer.samples.import_labeled(
                f"{board}-{verdict}".encode(),
                width=8,
                height=8,
                verdict=verdict,
                boxes=[],
                author="qa",
                split_key=f"import:{board:08d}",
            )
    holdout = buffer.labels.labeled_samples(holdout=True)
    training = buffer.labels.labeled_samples(holdout=False)
    assert len(holdout) % 2 == 0 and 0.1 < len(holdout) / 300 < 0.3
    sides: dict[bytes, set[bool]] = {}
    for sample, side in [(s, True) for s in holdout] + [(s, False) for s in training]:
        sides.setdefault(sample.image_path.read_bytes().split(b"-")[0], set()).add(side)
    assert all(len(found) == 1 for found in sides.values()), "a board was split across training and holdout"
    assert buffer.labels.training_sample_count() == buffer.labels.untrained_label_count() == len(training)


def test_recent_images_are_the_newest_kept_ones_outside_the_holdout(tmp_path: Path) -> None:
    """What a new global model may adapt its BatchNorm statistics to: inspected or labeled, never the holdout."""
    from datetime import timedelta

    from edge.buffer.labels import is_holdout
    from schemas.base import utc_now

    buffer = make_buffer(tmp_path)
    start = utc_now()
    stored = [
        record(
            buffer,
            f"image {i}".encode(),
            result(0.1),
            source="http",
            review=ReviewConfig(),
            event_topic=TOPIC,
            captured_at=start + timedelta(seconds=i),
        )
        for i in range(60)
    ]
    outside = [s for s in stored if not is_holdout(s.sample_id)]
    assert 0 < len(stored) - len(outside) < 30, "some samples fall in the holdout"
    newest_first = [buffer.images.path(s.event.body.image_sha256) for s in reversed(outside)]
    assert buffer.samples.recent_images(5) == newest_first[:5]
    with buffer.engine.begin() as connection:  # an evicted image is no longer there to read
        connection.execute(
            text("UPDATE samples SET image_evicted = 1 WHERE sample_id = :id"), {"id": outside[-1].sample_id}
        )
    assert buffer.samples.recent_images(1000) == newest_first[1:]


def test_an_image_keeps_the_template_it_was_compared_with(tmp_path: Path) -> None:
    buffer = make_buffer(tmp_path)
    review_off = ReviewConfig(alert_defective=False, uncertain_low=0.0, uncertain_high=0.0)
    golden = b"T" * 1000
    template = Template("board-a", golden, np.zeros((48, 64), np.uint8))
    # the template was also inspected as an image of its own (as DeepPCB pairs are imported), before the board
    as_image = record(buffer, golden, result(0.1), source="http", review=review_off, event_topic=TOPIC)
    board = record(
        buffer, b"B" * 1000, result(0.1), source="http", review=review_off, event_topic=TOPIC, template=template
    )
    buffer.labels.add(board.sample_id, verdict="good", boxes=[], source="operator", author="a")
    [labeled] = buffer.labels.labeled_samples()
    assert labeled.template_path == buffer.images.path(as_image.event.body.image_sha256)
    assert labeled.template_path.read_bytes() == golden
    buffer.labels.mark_trained([board.sample_id])
    buffer.outbox.mark_sent([m.id for m in buffer.outbox.pending(100)])
    assert buffer.images.enforce_quota(0) == 1, "only the board: its template stays while the board's image is kept"
    assert labeled.template_path.exists() and not labeled.image_path.exists()
    assert buffer.images.enforce_quota(0) == 1 and not labeled.template_path.exists(), "then it may go too"


def test_the_hard_cap_refuses_what_the_quota_may_not_evict_and_stores_nothing(tmp_path: Path) -> None:
    buffer = EdgeBuffer(open_edge_database(tmp_path / "buffer.db"), tmp_path / "images", hard_limit_bytes=2500)
    review = ReviewConfig()  # a defective verdict waits for review: the quota may never evict it
    for tag in (1, 2):
        record(buffer, bytes([tag]) * 1000, result(0.9), source="http", review=review, event_topic=TOPIC)
    assert buffer.images.enforce_quota(0) == 0 and buffer.images.storage_problem() is None
    with pytest.raises(BufferFullError, match=r"holds 2000 bytes of images; 1000 more would pass .*\(2500\)"):
        record(buffer, bytes([3]) * 1000, result(0.9), source="http", review=review, event_topic=TOPIC)
    with pytest.raises(BufferFullError):
        buffer.samples.import_labeled(bytes([4]) * 1000, width=8, height=8, verdict="good", boxes=[], author="qa")
    assert buffer.samples.count() == 2 and len(list((tmp_path / "images").rglob("*.img"))) == 2, "nothing stored"
    assert buffer.images.storage_problem(500) is None  # what still fits is taken
    record(buffer, bytes([5]) * 500, result(0.9), source="http", review=review, event_topic=TOPIC)
    assert buffer.images.storage_problem(1) is not None and buffer.samples.count() == 3


def test_the_free_disk_floor_refuses_before_the_disk_fills(tmp_path: Path) -> None:
    import shutil

    # A floor far above what is free: other processes freeing a few bytes meanwhile must not let the image in
    # (free + 1 did, once, while the suite's other tests deleted their files).
    floor = shutil.disk_usage(tmp_path).free + 2**40
    buffer = EdgeBuffer(open_edge_database(tmp_path / "buffer.db"), tmp_path / "images", min_free_disk_bytes=floor)
    with pytest.raises(BufferFullError, match=r"below buffer\.min_free_disk_bytes"):
        record(buffer, b"x" * 10, result(0.1), source="http", review=ReviewConfig(), event_topic=TOPIC)
    assert buffer.samples.count() == 0
