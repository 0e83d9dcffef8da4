"""The buffer's samples: each inspected or imported image's row, its prediction and review item, and the record of
files a watched folder has handled.

An inspection is committed in one SQLite (WAL) transaction: sample, prediction, review item, the outbox message of
its event and (for a watched folder's file) the mark that the file was handled; after a crash either all of them
exist or none. What the event says and whether the sample needs review are decided by the caller
(``edge.inspection``); this module only stores them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from edge.buffer.images import ImageStore
from edge.buffer.labels import UnknownSampleError, is_holdout, label_row
from edge.buffer.outbox import EventOutbox, OutgoingMessage
from edge.inference.pipeline import InspectionResult
from edge.inference.templates import Template
from edge.tables import PredictionRow, ReviewRow, SampleRow, SeenFileRow
from schemas.base import utc_now
from schemas.messages import ReviewSeverity


def new_sample_id() -> str:
    return f"s-{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class SeenFile:
    """Identity of a file in a watched folder: a file replaced under the same name is a new file."""

    path: str
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class NewInspection:
    """One inspected image and everything stored with it."""

    sample_id: str
    image: bytes
    image_sha256: str
    """``image_digest(image)``, as the event reports it."""
    result: InspectionResult
    source: str
    captured_at: datetime
    review: ReviewSeverity | None
    """Why a person should look at it; None: no review item."""
    event: OutgoingMessage
    """The inspection event, written to the outbox in the same transaction."""
    seen: SeenFile | None = None
    """The watched-folder file it came from, marked handled in the same transaction."""
    template: Template | None = None
    """The golden template the image was compared with, kept with it."""


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
class Inspected:
    """One inspection as the live view shows it: the served models' verdict, score, boxes and versions."""

    sample_id: str
    verdict: str
    score: float
    boxes: list[dict[str, object]]
    model_versions: dict[str, int]
    source: str
    captured_at: datetime
    width: int
    height: int


@dataclass(frozen=True)
class SampleView:
    sample_id: str
    sha256: str
    width: int
    height: int
    verdict: str
    score: float
    boxes: list[dict[str, object]]
    template_sha256: str | None = None
    """The stored golden template the image was compared with, if any."""


class SampleStore:
    """Samples with their predictions and review items, and the watched folders' handled files."""

    def __init__(self, engine: Engine, images: ImageStore) -> None:
        self.engine = engine
        self.images = images

    def _sample_row(
        self, sample_id: str, image: bytes, template: Template | None, image_sha256: str | None = None, **fields: object
    ) -> SampleRow:
        """Writes the image (and its template) first, so no row ever names a missing file."""
        self.images.ensure_room(len(image) + (0 if template is None else len(template.data)))
        return SampleRow(
            sample_id=sample_id,
            sha256=self.images.put(image, image_sha256),
            size_bytes=len(image),
            template_id=None if template is None else template.template_id,
            template_sha256=None if template is None else self.images.put(template.data),
            **fields,
        )

    def record(self, inspection: NewInspection) -> None:
        """Store one inspection atomically (``BufferFullError`` before anything is written if it does not fit)."""
        result = inspection.result
        sample = self._sample_row(
            inspection.sample_id,
            inspection.image,
            inspection.template,
            inspection.image_sha256,
            source=inspection.source,
            captured_at=inspection.captured_at,
            width=result.image_width,
            height=result.image_height,
        )
        with Session(self.engine) as session, session.begin():
            session.add(sample)
            session.flush()
            session.add(
                PredictionRow(
                    sample_id=inspection.sample_id,
                    verdict=result.verdict.value,
                    score=result.score,
                    boxes_json=json.dumps([box.model_dump(mode="json") for box in result.boxes]),
                    model_versions_json=json.dumps(result.model_versions),
                    latency_json=result.latency.model_dump_json(),
                    created_at=utc_now(),
                )
            )
            if inspection.review is not None:
                session.add(
                    ReviewRow(
                        sample_id=inspection.sample_id,
                        severity=inspection.review.value,
                        resolved=False,
                        created_at=inspection.captured_at,
                    )
                )
            EventOutbox.add(session, inspection.event)
            if inspection.seen is not None:
                session.merge(_seen_row(inspection.seen, sample_id=inspection.sample_id, error=None))

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
        sample_id = new_sample_id()
        sample = self._sample_row(
            sample_id,
            image,
            template,
            source="import",
            captured_at=utc_now(),
            width=width,
            height=height,
            split_key=split_key,
        )
        with Session(self.engine) as session, session.begin():
            session.add(sample)
            session.flush()
            session.add(label_row(sample_id, verdict=verdict, boxes=boxes, source="import", author=author))
        return sample_id

    def get(self, sample_id: str) -> SampleView:
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
                sample.template_sha256,
            )

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

    def latest_inspections(self, limit: int) -> list[Inspected]:
        """The newest ``limit`` inspections (samples the served models predicted, not imports), newest first."""
        with Session(self.engine) as session:
            query = (
                select(PredictionRow, SampleRow)
                .join(SampleRow, SampleRow.sample_id == PredictionRow.sample_id)
                .where(SampleRow.image_evicted.is_(False))
                .order_by(SampleRow.captured_at.desc(), PredictionRow.id.desc())
                .limit(limit)
            )
            return [
                Inspected(
                    sample.sample_id,
                    prediction.verdict,
                    prediction.score,
                    json.loads(prediction.boxes_json),
                    {str(k): int(v) for k, v in json.loads(prediction.model_versions_json).items()},
                    sample.source,
                    sample.captured_at,
                    sample.width,
                    sample.height,
                )
                for prediction, sample in session.execute(query).all()
            ]

    def review_backlog(self) -> int:
        with Session(self.engine) as session:
            return int(
                session.scalar(select(func.count()).select_from(ReviewRow).where(ReviewRow.resolved.is_(False))) or 0
            )

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
                    picked.append(self.images.path(sha256))
                    if len(picked) >= limit:
                        break
        return picked

    def count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(SampleRow)) or 0)

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


def _seen_row(file: SeenFile, *, sample_id: str | None, error: str | None) -> SeenFileRow:
    return SeenFileRow(
        path=file.path,
        size_bytes=file.size_bytes,
        mtime_ns=file.mtime_ns,
        sample_id=sample_id,
        error=error,
        seen_at=utc_now(),
    )
