"""The edge buffer: every inspected image, its prediction, review item, label and outgoing event, never half-stored.

One buffer.db (``edge.db`` migrates it) and one images folder, read and written through the stores it is made of:

| store | module | what |
|---|---|---|
| ``images`` | ``images`` | content-addressed image files, the hard cap and free-disk floor, quota eviction |
| ``samples`` | ``samples`` | samples, predictions, the review queue, the files watched folders handled |
| ``labels`` | ``labels`` | labels, the fixed local holdout, what training may use |
| ``outbox`` | ``outbox`` | the event outbox, drained in order by ``edge.events.EventPublisher`` |

The buffer stores; it does not decide. What an inspection event says and whether a sample goes to review are
decided in ``edge.inspection``.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from edge.buffer.images import ImageStore
from edge.buffer.labels import LabelStore
from edge.buffer.outbox import EventOutbox
from edge.buffer.samples import SampleStore


class EdgeBuffer:
    """The stores of one edge's buffer on one engine (thread-safe through SQLite)."""

    def __init__(
        self,
        engine: Engine,
        images_dir: Path,
        *,
        hard_limit_bytes: int | None = None,
        min_free_disk_bytes: int = 0,
    ) -> None:
        self.engine = engine
        self.images = ImageStore(
            engine, images_dir, hard_limit_bytes=hard_limit_bytes, min_free_disk_bytes=min_free_disk_bytes
        )
        self.samples = SampleStore(engine, self.images)
        self.labels = LabelStore(engine, self.images)
        self.outbox = EventOutbox(engine)
