"""The edge buffer: every inspected image, its prediction, review item and outgoing event, never half-stored.

Images are content-addressed files under ``images/`` (written before the row that names them, so a crash leaves
at most an unreferenced file, never a row without its image). Sample, prediction, review item and the outbox
message of the event are committed in one SQLite (WAL) transaction: after a crash either all of them exist or
none. The outbox is drained in order by ``edge.events.EventPublisher``.

The tables are ``edge.tables``; ``edge.db.open_edge_database`` migrates them before the buffer is opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from edge.inference.pipeline import InspectionResult
from edge.inference.templates import Template
from edge.tables import LabelRow, OutboxRow, PredictionRow, ReviewRow, SampleRow, SeenFileRow
from schemas.base import utc_now
from schemas.config import ReviewConfig
from schemas.errors import FedinspectError
from schemas.messages import InspectionEventBody, InspectionEventMessage, ReviewSeverity, Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeenFile:
    """Identity of a file in a watched folder: a file replaced under the same name is a new file."""

    path: str
    size_bytes: int
    mtime_ns: int


ROOM_RECOUNT_S = 10.0
"""How long a full count of the buffer's image bytes stands (stores in between are added to it)."""


class BufferFullError(FedinspectError):
    """Storing this image would take the buffer past its hard cap or the disk below its free-space floor; nothing
    was stored."""


class UnknownSampleError(FedinspectError):
    """No sample with that id in the buffer."""


@dataclass(frozen=True)
class ReviewItem:
    sample_id: str
    severity: str
    verdict: str
    score: float
    boxes: list[dict[str, object]]
    source: str
    captured_at: datetime


@dataclass(frozen=True)
class SampleView:
    sample_id: str
    sha256: str
    width: int
    height: int
    verdict: str
    score: float
    boxes: list[dict[str, object]]


HOLDOUT_FRACTION = 0.2


def is_holdout(key: str) -> bool:
    """The fixed local holdout split: about HOLDOUT_FRACTION of labeled samples, never used for training.

    Decided by a hash of the sample's split key (its id unless it has one), so it never changes as samples come and
    go, and the trainer and the model evaluation agree without storing anything. Samples that share a split key
    (a board's defect-free template and its test image) stay together: a model must not be scored on the twin of
    an image it trained on, or it is rewarded for remembering the board instead of finding the defect.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") < HOLDOUT_FRACTION * 2**32


@dataclass(frozen=True)
class LabeledSample:
    sample_id: str
    image_path: Path
    verdict: str
    boxes: list[dict[str, object]]
    template_path: Path | None = None
    """The golden template the image was compared with, when it named one."""


@dataclass(frozen=True)
class StoredInspection:
    sample_id: str
    event: InspectionEventMessage


@dataclass(frozen=True)
class PendingMessage:
    id: int
    topic: str
    payload: bytes


def review_severity(verdict: Verdict, score: float, config: ReviewConfig) -> ReviewSeverity | None:
    """Uncertain when the score is in the configured band, alert for other defective results (if enabled)."""
    if config.uncertain_low <= score < config.uncertain_high:
        return ReviewSeverity.UNCERTAIN
    if verdict == Verdict.DEFECTIVE and config.alert_defective:
        return ReviewSeverity.ALERT
    return None


class EdgeBuffer:
    """Samples, predictions, review items and the event outbox of one edge (thread-safe through SQLite)."""

    def __init__(
        self,
        engine: Engine,
        images_dir: Path,
        *,
        edge_id: str,
        hard_limit_bytes: int | None = None,
        min_free_disk_bytes: int = 0,
    ) -> None:
        self.engine = engine
        self.images_dir = images_dir
        self.edge_id = edge_id
        self.hard_limit_bytes = hard_limit_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self._room_lock = threading.Lock()
        self._counted: tuple[float, int] | None = None  # (when, image bytes) of the last full count
        images_dir.mkdir(parents=True, exist_ok=True)

    def image_path(self, sha256: str) -> Path:
        return self.images_dir / sha256[:2] / f"{sha256}.img"

    def storage_problem(self, adding: int = 0) -> str | None:
        """Why ``adding`` more image bytes may not be stored now (hard cap, free disk), or None."""
        free = shutil.disk_usage(self.images_dir).free
        if free - adding < self.min_free_disk_bytes:
            return (
                f"{free} bytes free on the images' filesystem ({self.images_dir}), below buffer.min_free_disk_bytes "
                f"({self.min_free_disk_bytes})"
            )
        if self.hard_limit_bytes is not None:
            with self._room_lock:
                now = time.monotonic()
                if self._counted is None or now - self._counted[0] > ROOM_RECOUNT_S:
                    self._counted = (now, self.image_bytes())
                stored = self._counted[1]
            if stored + adding > self.hard_limit_bytes:
                return (
                    f"the buffer holds {stored} bytes of images; {adding} more would pass buffer.refuse_above_bytes "
                    f"({self.hard_limit_bytes}): review, training or eviction must make room first"
                )
        return None

    def _ensure_room(self, image: bytes, template: Template | None) -> None:
        """Refuse (``BufferFullError``) before anything is written when the image and its template do not fit."""
        problem = self.storage_problem(len(image) + (0 if template is None else len(template.data)))
        if problem is not None:
            raise BufferFullError(problem)

    def _store_image(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.image_path(sha256)
        if not path.exists():
            with self._room_lock:
                if self._counted is not None:
                    self._counted = (self._counted[0], self._counted[1] + len(data))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            with tmp.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(path)
        return sha256

    def record(
        self,
        image: bytes,
        result: InspectionResult,
        *,
        source: str,
        review: ReviewConfig,
        event_topic: str,
        captured_at: datetime | None = None,
        seen: SeenFile | None = None,
        template: Template | None = None,
    ) -> StoredInspection:
        """Store one inspected image with its result, review item and event, atomically (and, for a file from a
        watched folder, the mark that it was handled, in the same transaction). ``template``: the golden template
        the image was compared with, kept with it.
        """
        self._ensure_room(image, template)
        sha256 = self._store_image(image)
        template_sha256 = None if template is None else self._store_image(template.data)
        sample_id = f"s-{uuid.uuid4().hex[:24]}"
        captured = captured_at or utc_now()
        verdict, score = result.verdict, result.score
        severity = review_severity(verdict, score, review)
        body = InspectionEventBody.model_validate(
            {
                "sample_id": sample_id,
                "image_sha256": sha256,
                "source": source,
                "captured_at": captured,
                "image_width": result.image_width,
                "image_height": result.image_height,
                "verdict": verdict,
                "score": score,
                "review": severity,
                "boxes": list(result.boxes),
                "model_versions": result.model_versions,
                "latency": result.latency,
            }
        )
        event = InspectionEventMessage(sender=self.edge_id, body=body)
        with Session(self.engine) as session, session.begin():
            session.add(
                SampleRow(
                    sample_id=sample_id,
                    sha256=sha256,
                    source=source,
                    captured_at=captured,
                    width=result.image_width,
                    height=result.image_height,
                    size_bytes=len(image),
                    template_id=None if template is None else template.template_id,
                    template_sha256=template_sha256,
                )
            )
            session.flush()
            session.add(
                PredictionRow(
                    sample_id=sample_id,
                    verdict=verdict.value,
                    score=score,
                    boxes_json=json.dumps([b.model_dump() for b in body.boxes]),
                    model_versions_json=json.dumps(result.model_versions),
                    latency_json=result.latency.model_dump_json(),
                    created_at=utc_now(),
                )
            )
            if severity is not None:
                session.add(
                    ReviewRow(sample_id=sample_id, severity=severity.value, resolved=False, created_at=captured)
                )
            session.add(OutboxRow(topic=event_topic, payload=event.to_json_bytes(), created_at=utc_now()))
            if seen is not None:
                session.merge(_seen_row(seen, sample_id=sample_id, error=None))
        return StoredInspection(sample_id, event)

    # -- review and labels ---------------------------------------------------------------------------------------

    def review_items(self, *, limit: int = 100, severity: str | None = None) -> list[ReviewItem]:
        """Pending review items, oldest first, with the prediction that put them there."""
        with Session(self.engine) as session:
            query = (
                select(ReviewRow, PredictionRow, SampleRow)
                .join(PredictionRow, PredictionRow.sample_id == ReviewRow.sample_id)
                .join(SampleRow, SampleRow.sample_id == ReviewRow.sample_id)
                .where(ReviewRow.resolved.is_(False))
                .order_by(ReviewRow.created_at, ReviewRow.sample_id)
                .limit(limit)
            )
            if severity is not None:
                query = query.where(ReviewRow.severity == severity)
            return [
                ReviewItem(
                    review.sample_id,
                    review.severity,
                    prediction.verdict,
                    prediction.score,
                    json.loads(prediction.boxes_json),
                    sample.source,
                    sample.captured_at,
                )
                for review, prediction, sample in session.execute(query).all()
            ]

    def sample(self, sample_id: str) -> SampleView:
        with Session(self.engine) as session:
            sample = session.get(SampleRow, sample_id)
            prediction = session.scalars(select(PredictionRow).where(PredictionRow.sample_id == sample_id)).first()
            if sample is None or prediction is None:
                raise UnknownSampleError(f"no sample {sample_id!r} in the buffer")
            return SampleView(
                sample.sample_id,
                sample.sha256,
                sample.width,
                sample.height,
                prediction.verdict,
                prediction.score,
                json.loads(prediction.boxes_json),
            )

    def add_label(
        self, sample_id: str, *, verdict: str, boxes: list[dict[str, object]], source: str, author: str
    ) -> int:
        """Store a label and close the sample's review item, in one transaction; returns the label id."""
        with Session(self.engine) as session, session.begin():
            if session.get(SampleRow, sample_id) is None:
                raise UnknownSampleError(f"no sample {sample_id!r} in the buffer")
            label = LabelRow(
                sample_id=sample_id,
                verdict=verdict,
                boxes_json=json.dumps(boxes),
                source=source,
                author=author,
                created_at=utc_now(),
                used_in_training=False,
            )
            session.add(label)
            review = session.get(ReviewRow, sample_id)
            if review is not None:
                review.resolved = True
            session.flush()
            return int(label.id)

    def import_labeled(
        self,
        image: bytes,
        *,
        width: int,
        height: int,
        verdict: str,
        boxes: list[dict[str, object]],
        author: str,
        split_key: str | None = None,
        template: Template | None = None,
    ) -> str:
        """Store an image that arrives with its label (bulk import): sample + label in one transaction, no event."""
        self._ensure_room(image, template)
        sha256 = self._store_image(image)
        template_sha256 = None if template is None else self._store_image(template.data)
        sample_id = f"s-{uuid.uuid4().hex[:24]}"
        now = utc_now()
        with Session(self.engine) as session, session.begin():
            session.add(
                SampleRow(
                    sample_id=sample_id,
                    sha256=sha256,
                    source="import",
                    captured_at=now,
                    width=width,
                    height=height,
                    size_bytes=len(image),
                    split_key=split_key,
                    template_id=None if template is None else template.template_id,
                    template_sha256=template_sha256,
                )
            )
            session.flush()
            session.add(
                LabelRow(
                    sample_id=sample_id,
                    verdict=verdict,
                    boxes_json=json.dumps(boxes),
                    source="import",
                    author=author,
                    created_at=now,
                    used_in_training=False,
                )
            )
        return sample_id

    def labeled_samples(self, *, holdout: bool | None = None) -> list[LabeledSample]:
        """Samples with their newest label whose image is still kept; ``holdout`` picks one side of the split."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(LabelRow, SampleRow)
                .join(SampleRow, SampleRow.sample_id == LabelRow.sample_id)
                .where(SampleRow.image_evicted.is_(False))
                .order_by(LabelRow.sample_id, LabelRow.id)
            ).all()
        newest: dict[str, LabeledSample] = {}
        for label, sample in rows:  # ordered by label id within a sample: the last one wins
            newest[sample.sample_id] = LabeledSample(
                sample.sample_id,
                self.image_path(sample.sha256),
                label.verdict,
                json.loads(label.boxes_json),
                None if sample.template_sha256 is None else self.image_path(sample.template_sha256),
            )
        keys = {sample.sample_id: sample.split_key or sample.sample_id for _, sample in rows}
        return [s for s in newest.values() if holdout is None or is_holdout(keys[s.sample_id]) == holdout]

    def recent_images(self, limit: int) -> list[Path]:
        """Files of the newest ``limit`` kept images outside the holdout, labeled or not (newest first).

        What a model may adapt to without labels; the holdout stays unseen so that it still judges the model fairly.
        """
        picked: list[Path] = []
        with Session(self.engine) as session:
            rows = session.execute(
                select(SampleRow.sample_id, SampleRow.split_key, SampleRow.sha256)
                .where(SampleRow.image_evicted.is_(False))
                .order_by(SampleRow.captured_at.desc(), SampleRow.sample_id)
            )
            for sample_id, split_key, sha256 in rows:
                if not is_holdout(split_key or sample_id):
                    picked.append(self.image_path(sha256))
                    if len(picked) >= limit:
                        break
        return picked

    def mark_trained(self, sample_ids: list[str]) -> None:
        """The labels of these samples went into a training run (they may now be evicted under quota)."""
        with Session(self.engine) as session, session.begin():
            for label in session.scalars(select(LabelRow).where(LabelRow.sample_id.in_(sample_ids))):
                label.used_in_training = True

    def _training_side_count(self, condition: ColumnElement[bool]) -> int:
        """Labeled samples matching ``condition`` that are on the training side of the holdout split."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(SampleRow.sample_id, SampleRow.split_key)
                .join(LabelRow, SampleRow.sample_id == LabelRow.sample_id)
                .where(condition)
                .distinct()
            ).all()
        return sum(not is_holdout(key or sample_id) for sample_id, key in rows)

    def training_sample_count(self) -> int:
        """Labeled samples outside the holdout whose image is kept: what a training run would get."""
        return self._training_side_count(SampleRow.image_evicted.is_(False))

    def untrained_label_count(self) -> int:
        """Training-side samples (not the holdout) with a label no training run has used yet."""
        return self._training_side_count(LabelRow.used_in_training.is_(False))

    def labeled_count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count(func.distinct(LabelRow.sample_id)))) or 0)

    # -- disk quota ----------------------------------------------------------------------------------------------

    def image_bytes(self) -> int:
        """Bytes of the images the buffer keeps (each stored file counted once)."""
        with Session(self.engine) as session:
            sizes = session.execute(
                select(SampleRow.sha256, func.max(SampleRow.size_bytes))
                .where(SampleRow.image_evicted.is_(False))
                .group_by(SampleRow.sha256)
            ).all()
        return sum(int(size) for _, size in sizes)

    def enforce_quota(self, max_bytes: int) -> int:
        """Delete images until the buffer's images fit ``max_bytes``; returns how many image files were deleted.

        Eviction order (oldest first within each step): (1) images whose samples are unlabeled, not waiting for
        review and whose event the broker has acknowledged; (2) images whose samples' labels were already used in
        training. Never evicted: a sample waiting for review, a labeled sample not yet used in training, or a
        sample whose event is still in the outbox, or a file that is the golden template of a kept image. Rows stay
        (history and metrics); only the file goes, and the sample is marked ``image_evicted``. Template files that
        are no sample's image are not counted and never deleted: a plant has a few board types, and a kept image
        must always find the template it was compared with.
        """
        with self._room_lock:
            self._counted = None  # counted afresh at the next store
        total = self.image_bytes()
        if total <= max_bytes:
            return 0
        deleted = 0
        for sha256, size in self._eviction_candidates():
            if total <= max_bytes:
                break
            with Session(self.engine) as session, session.begin():
                for row in session.scalars(select(SampleRow).where(SampleRow.sha256 == sha256)):
                    row.image_evicted = True
            self.image_path(sha256).unlink(missing_ok=True)
            total -= size
            deleted += 1
        if total > max_bytes:
            log.warning(
                "buffer over its disk quota with nothing left that may be evicted",
                extra={"image_bytes": total, "quota_bytes": max_bytes},
            )
        log.info("images evicted", extra={"files": deleted, "image_bytes": total, "quota_bytes": max_bytes})
        return deleted

    def _eviction_candidates(self) -> list[tuple[str, int]]:
        """(sha256, size) of evictable image files, in eviction order."""
        with Session(self.engine) as session:
            protected: set[str] = set()
            pending_review = (
                select(SampleRow.sha256)
                .join(ReviewRow, ReviewRow.sample_id == SampleRow.sample_id)
                .where(ReviewRow.resolved.is_(False))
            )
            untrained = (
                select(SampleRow.sha256)
                .join(LabelRow, LabelRow.sample_id == SampleRow.sample_id)
                .where(LabelRow.used_in_training.is_(False))
            )
            templates_in_use = (
                select(SampleRow.template_sha256)
                .where(SampleRow.image_evicted.is_(False), SampleRow.template_sha256.is_not(None))
                .distinct()
            )
            for query in (pending_review, untrained, templates_in_use):
                protected.update(session.scalars(query))
            unsent_ids = {
                json.loads(payload)["body"]["sample_id"]
                for payload in session.scalars(select(OutboxRow.payload).where(OutboxRow.sent_at.is_(None)))
            }
            labeled = set(session.scalars(select(LabelRow.sample_id)))
            rows = session.execute(
                select(SampleRow.sample_id, SampleRow.sha256, SampleRow.size_bytes, SampleRow.captured_at)
                .where(SampleRow.image_evicted.is_(False))
                .order_by(SampleRow.captured_at)
            ).all()
        by_sha: dict[str, tuple[int, int, datetime]] = {}  # sha -> (step, size, newest capture)
        blocked: set[str] = set(protected)
        for sample_id, sha256, size, captured in rows:
            if sample_id in unsent_ids:
                blocked.add(sha256)
            step = 2 if sample_id in labeled else 1
            previous = by_sha.get(sha256)
            by_sha[sha256] = (max(step, previous[0]) if previous else step, int(size), captured)
        candidates = [
            (step, captured, sha, size) for sha, (step, size, captured) in by_sha.items() if sha not in blocked
        ]
        return [(sha, size) for _, _, sha, size in sorted(candidates)]

    # -- watched folders -----------------------------------------------------------------------------------------

    def already_seen(self, files: Sequence[SeenFile]) -> set[str]:
        """Paths among ``files`` handled before in the same version (size and modification time): one query per
        500 files, so a poll of a big folder does not cost a query per file."""
        seen: set[str] = set()
        with Session(self.engine) as session:
            for start in range(0, len(files), 500):
                batch = {file.path: file for file in files[start : start + 500]}
                for row in session.scalars(select(SeenFileRow).where(SeenFileRow.path.in_(batch))):
                    file = batch[row.path]
                    if (row.size_bytes, row.mtime_ns) == (file.size_bytes, file.mtime_ns):
                        seen.add(row.path)
        return seen

    def mark_refused(self, file: SeenFile, error: str) -> None:
        """A file that cannot be inspected (corrupt, too large): remembered, so it is not tried again."""
        with Session(self.engine) as session, session.begin():
            session.merge(_seen_row(file, sample_id=None, error=error[:2000]))

    # -- outbox ------------------------------------------------------------------------------------------------

    def pending(self, limit: int) -> list[PendingMessage]:
        """The oldest unsent outbox messages, in the order they were written."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(OutboxRow).where(OutboxRow.sent_at.is_(None)).order_by(OutboxRow.id).limit(limit)
            ).all()
            return [PendingMessage(row.id, row.topic, row.payload) for row in rows]

    def mark_sent(self, ids: list[int]) -> None:
        if not ids:
            return
        with Session(self.engine) as session, session.begin():
            for row in session.scalars(select(OutboxRow).where(OutboxRow.id.in_(ids))):
                row.sent_at = utc_now()

    def outbox_backlog(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).where(OutboxRow.sent_at.is_(None))) or 0)

    def review_backlog(self) -> int:
        with Session(self.engine) as session:
            return int(
                session.scalar(select(func.count()).select_from(ReviewRow).where(ReviewRow.resolved.is_(False))) or 0
            )

    def sample_count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(SampleRow)) or 0)


def _seen_row(file: SeenFile, *, sample_id: str | None, error: str | None) -> SeenFileRow:
    return SeenFileRow(
        path=file.path,
        size_bytes=file.size_bytes,
        mtime_ns=file.mtime_ns,
        sample_id=sample_id,
        error=error,
        seen_at=utc_now(),
    )
