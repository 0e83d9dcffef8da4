"""The buffer's labels: what a person (or an import, or the hub) says a sample shows, and the fixed local holdout.

The newest label of a sample counts. A label closes the sample's review item in the same transaction. About a
fifth of the labeled samples form the holdout (``is_holdout``): never trained on, they judge a model before it is
served.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from edge.buffer.images import ImageStore
from edge.tables import LabelRow, ReviewRow, SampleRow
from schemas.base import utc_now
from schemas.errors import FedinspectError

HOLDOUT_FRACTION = 0.2


class UnknownSampleError(FedinspectError):
    """No sample with that id in the buffer."""


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


def label_row(sample_id: str, *, verdict: str, boxes: list[dict[str, object]], source: str, author: str) -> LabelRow:
    """A new, not yet trained-on label row."""
    return LabelRow(
        sample_id=sample_id,
        verdict=verdict,
        boxes_json=json.dumps(boxes),
        source=source,
        author=author,
        created_at=utc_now(),
        used_in_training=False,
    )


class LabelStore:
    """Labels of the buffer's samples, and what training may use of them."""

    def __init__(self, engine: Engine, images: ImageStore) -> None:
        self.engine = engine
        self.images = images

    def add(self, sample_id: str, *, verdict: str, boxes: list[dict[str, object]], source: str, author: str) -> int:
        """Store a label and close the sample's review item, in one transaction; returns the label id."""
        with Session(self.engine) as session, session.begin():
            if session.get(SampleRow, sample_id) is None:
                raise UnknownSampleError(f"no sample {sample_id!r} in the buffer")
            label = label_row(sample_id, verdict=verdict, boxes=boxes, source=source, author=author)
            session.add(label)
            review = session.get(ReviewRow, sample_id)
            if review is not None:
                review.resolved = True
            session.flush()
            return int(label.id)

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
                self.images.path(sample.sha256),
                label.verdict,
                json.loads(label.boxes_json),
                None if sample.template_sha256 is None else self.images.path(sample.template_sha256),
            )
        keys = {sample.sample_id: sample.split_key or sample.sample_id for _, sample in rows}
        return [s for s in newest.values() if holdout is None or is_holdout(keys[s.sample_id]) == holdout]

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
        """Samples with at least one label."""
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count(func.distinct(LabelRow.sample_id)))) or 0)
