"""Hub side of model distribution: sign a bundle, announce it (retained), broadcast its chunks, serve fetches.

An edge that was offline sees the retained announcement when it reconnects and asks for the chunks it lacks
on ``edge/{id}/fetch``; the publisher sends those chunks again on the model's chunk topic.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from hub.tables import PublishedModelRow
from runtime.assembler import TransferPlan
from runtime.exchange import send_frames
from runtime.mqtt import MqttLink, ReceivedMessage
from runtime.signing import SigningKey
from schemas.base import utc_now
from schemas.bundle import MANIFEST_FILE, pack_bundle, verify_files
from schemas.errors import LinkError
from schemas.manifests import ModelManifest
from schemas.messages import (
    ArtifactRef,
    ModelAnnouncementBody,
    ModelAnnouncementMessage,
    TransferState,
    TransferStatusMessage,
)

log = logging.getLogger(__name__)


def model_transfer_id(name: str, version: int) -> str:
    return f"m-{name}-{version}"


FETCH_INTERVAL_S = 10.0
"""An edge's fetch of the same transfer is answered at most once in this many seconds."""


class ModelPublisher:
    """Publishes signed model versions and re-sends chunks that edges ask for."""

    def __init__(self, link: MqttLink, signing_key: SigningKey, artifacts_dir: Path, engine: Engine) -> None:
        self.link = link
        self.signing_key = signing_key
        self.artifacts_dir = artifacts_dir
        self.engine = engine
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        self._published: dict[str, tuple[TransferPlan, str, int]] = {}  # transfer id -> (plan, line, version)
        self._newest: dict[str, int] = {}  # line -> newest published version: the only one a fetch is answered for
        self._answered: dict[tuple[str, str], float] = {}  # (edge, transfer) -> when its last fetch was answered
        with Session(engine) as session:  # after a restart, keep serving fetches for what was sent before
            rows = session.scalars(select(PublishedModelRow).order_by(PublishedModelRow.version)).all()
        for row in rows:
            self._newest[row.model_name] = max(row.version, self._newest.get(row.model_name, row.version))
            artifact = Path(row.artifact)
            if not artifact.is_file():
                log.warning(
                    "published model bundle missing; fetches for it go unanswered",
                    extra={"transfer_id": row.transfer_id, "path": row.artifact},
                )
                continue
            # Hashed again rather than trusted: a crash between rewriting the file and its row leaves a bundle that
            # is not the one announced. Such a version counts as unpublished, so the hub publishes it again.
            plan = TransferPlan.for_file(artifact, row.transfer_id, row.chunk_size)
            if (plan.total_size, plan.sha256) != (row.total_size, row.sha256):
                log.warning(
                    "published model bundle is not the one announced; it will be published again",
                    extra={"transfer_id": row.transfer_id, "path": row.artifact},
                )
                continue
            self._remember(plan, row.model_name, row.version)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-chunks")
        link.subscribe(link.topics.all_fetches(), self._on_fetch, message_type=TransferStatusMessage)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def has_published(self, transfer_id: str) -> bool:
        """Whether this publisher has signed and broadcast that transfer (in this run or, by its row, before)."""
        return transfer_id in self._published

    def _remember(self, plan: TransferPlan, name: str, version: int) -> None:
        self._published[plan.transfer_id] = (plan, name, version)
        self._newest[name] = max(version, self._newest.get(name, version))

    def publish(self, manifest: ModelManifest, files: Mapping[str, Path]) -> ModelAnnouncementMessage:
        """Sign ``manifest`` (whose digests must match ``files``), announce it and broadcast the bundle."""
        verify_files(manifest.files, files)
        signed = self.signing_key.sign(manifest)
        transfer_id = model_transfer_id(signed.name, signed.version)
        artifact = self.artifacts_dir / f"{transfer_id}.tar"
        with tempfile.TemporaryDirectory(dir=self.artifacts_dir) as tmp:
            manifest_path = Path(tmp) / MANIFEST_FILE
            manifest_path.write_text(signed.model_dump_json(indent=2))
            digest = pack_bundle({MANIFEST_FILE: manifest_path, **files}, artifact)
        plan = TransferPlan(transfer_id, artifact, digest.size_bytes, digest.sha256, self.link.config.chunk_size_bytes)
        topic = self.link.topics.model_chunk(signed.name, signed.version)
        with Session(self.engine) as session, session.begin():
            session.merge(
                PublishedModelRow(
                    transfer_id=transfer_id,
                    model_name=signed.name,
                    version=signed.version,
                    artifact=str(artifact),
                    total_size=plan.total_size,
                    sha256=plan.sha256,
                    chunk_size=plan.chunk_size,
                    published_at=utc_now(),
                )
            )
        self._remember(plan, signed.name, signed.version)
        announcement = ModelAnnouncementMessage(
            sender=self.link.node_id,
            body=ModelAnnouncementBody(
                manifest=signed,
                artifact=ArtifactRef(
                    transfer_id=transfer_id, digest=digest, chunk_size=plan.chunk_size, chunk_count=plan.count
                ),
            ),
        )
        # Announce first, so edges that are online know what the chunks are when they arrive.
        self.link.publish(self.link.topics.model_announce(signed.name), announcement, retain=True).wait()
        send_frames(self.link, topic, plan, range(plan.count), window=self.link.config.max_inflight)
        log.info(
            "model published",
            extra={
                "model": signed.name,
                "version": signed.version,
                "transfer_id": transfer_id,
                "size": digest.size_bytes,
                "chunks": plan.count,
            },
        )
        return announcement

    def _on_fetch(self, message: ReceivedMessage[TransferStatusMessage]) -> None:
        status = message.payload.body
        edge_id = message.payload.sender
        if status.state == TransferState.REJECTED:
            log.error(
                "edge rejected a model",
                extra={"edge_id": edge_id, "transfer_id": status.transfer_id, "reason": status.reason},
            )
            return
        if status.state == TransferState.COMPLETE or not status.request:
            return
        entry = self._published.get(status.transfer_id)
        if entry is None:
            log.warning(
                "fetch for an unknown model transfer", extra={"edge_id": edge_id, "transfer_id": status.transfer_id}
            )
            return
        plan, name, version = entry
        if version < self._newest[name]:
            # versions only go forward: nothing an edge may legitimately need is older than the newest
            log.warning(
                "fetch for an older model version refused",
                extra={"edge_id": edge_id, "model": name, "version": version, "newest": self._newest[name]},
            )
            return
        now = time.monotonic()
        last = self._answered.get((edge_id, plan.transfer_id))
        if last is not None and now - last < FETCH_INTERVAL_S:
            log.info("fetch ignored: answered moments ago", extra={"edge_id": edge_id, "transfer_id": plan.transfer_id})
            return
        self._answered[(edge_id, plan.transfer_id)] = now
        # re-sent to the asking edge alone, and only what it lists as missing
        topic = self.link.topics.edge_model_chunk(edge_id, name, version)
        indices = list(range(plan.count)) if status.missing is None else [i for i in status.missing if i < plan.count]
        log.info(
            "edge fetches model chunks",
            extra={"edge_id": edge_id, "transfer_id": plan.transfer_id, "chunks": len(indices)},
        )
        self._worker.submit(self._resend, plan, topic, indices)

    def _resend(self, plan: TransferPlan, topic: str, indices: list[int]) -> None:
        try:
            send_frames(self.link, topic, plan, indices, window=self.link.config.max_inflight)
        except LinkError as exc:
            log.warning("model chunks not re-sent", extra={"transfer_id": plan.transfer_id, "error": str(exc)})
