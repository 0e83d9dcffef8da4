"""The buffer's image files: content-addressed under ``images/``, refused before they would overfill the disk, and
evicted under the disk quota in a documented order.

A file is written (and fsynced) before the row that names it, so a crash leaves at most an unreferenced file, never
a row without its image. Identical images are stored once.
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
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from edge.tables import LabelRow, OutboxRow, ReviewRow, SampleRow
from schemas.errors import FedinspectError

log = logging.getLogger(__name__)

ROOM_RECOUNT_S = 10.0
"""How long a full count of the buffer's image bytes stands (stores in between are added to it)."""


class BufferFullError(FedinspectError):
    """Storing this image would take the buffer past its hard cap or the disk below its free-space floor; nothing
    was stored."""


def image_digest(data: bytes) -> str:
    """The SHA-256 that names an image file (and that the inspection event reports)."""
    return hashlib.sha256(data).hexdigest()


class ImageStore:
    """The image files of one buffer, with the hard cap and the free-disk floor checked before each write."""

    def __init__(
        self, engine: Engine, directory: Path, *, hard_limit_bytes: int | None = None, min_free_disk_bytes: int = 0
    ) -> None:
        self.engine = engine
        self.directory = directory
        self.hard_limit_bytes = hard_limit_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self._room_lock = threading.Lock()
        self._counted: tuple[float, int] | None = None  # (when, image bytes) of the last full count
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}.img"

    def storage_problem(self, adding: int = 0) -> str | None:
        """Why ``adding`` more image bytes may not be stored now (hard cap, free disk), or None."""
        free = shutil.disk_usage(self.directory).free
        if free - adding < self.min_free_disk_bytes:
            return (
                f"{free} bytes free on the images' filesystem ({self.directory}), below buffer.min_free_disk_bytes "
                f"({self.min_free_disk_bytes})"
            )
        if self.hard_limit_bytes is not None:
            with self._room_lock:
                now = time.monotonic()
                if self._counted is None or now - self._counted[0] > ROOM_RECOUNT_S:
                    self._counted = (now, self.stored_bytes())
                stored = self._counted[1]
            if stored + adding > self.hard_limit_bytes:
                return (
                    f"the buffer holds {stored} bytes of images; {adding} more would pass buffer.refuse_above_bytes "
                    f"({self.hard_limit_bytes}): review, training or eviction must make room first"
                )
        return None

    def ensure_room(self, adding: int) -> None:
        """Refuse (``BufferFullError``) before anything is written when ``adding`` more bytes do not fit."""
        problem = self.storage_problem(adding)
        if problem is not None:
            raise BufferFullError(problem)

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Write ``data`` durably under its digest (once); returns the digest. ``sha256``: the digest when the
        caller already computed it (``image_digest``), which saves hashing the image again."""
        sha256 = sha256 or image_digest(data)
        path = self.path(sha256)
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

    def stored_bytes(self) -> int:
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
        total = self.stored_bytes()
        if total <= max_bytes:
            return 0
        deleted = 0
        for sha256, size in self._eviction_candidates():
            if total <= max_bytes:
                break
            with Session(self.engine) as session, session.begin():
                for row in session.scalars(select(SampleRow).where(SampleRow.sha256 == sha256)):
                    row.image_evicted = True
            self.path(sha256).unlink(missing_ok=True)
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
