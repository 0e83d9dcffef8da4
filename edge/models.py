"""Edge side of model distribution: follow announcements, fetch chunks, verify and install model bundles.

A model is installed only after the transfer's whole hash, the manifest's signature by the pinned hub key, and
every file's SHA-256 against the signed manifest have been checked, and its weights' safetensors header is within
its size cap and declares only numeric tensors that tile the file. Installation unpacks into a temporary
directory next to ``models/{name}/{version}`` and renames it into place, so a crash never leaves a half-installed
version (``edge.model_records``). Older versions stay for rollback.

Versions only go forward: the newest signed version seen for a line (announced or installed) is kept in
``models/{name}/newest-seen``, durably, and a version below it is neither fetched nor installed, however validly
signed (an old version re-sent on request could otherwise roll a fleet back). A rollback the hub decides is a new
version with the old weights; the edge's own rollback (a command) uses the versions it already has.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.model_records import newest_installed, newest_seen, note_seen
from runtime.assembler import TransferAssembler
from runtime.exchange import TransferReceiver
from runtime.mqtt import MqttLink, ReceivedMessage
from runtime.signing import KeyRing
from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest, unpack_bundle, verify_files
from schemas.errors import LinkError, RejectedError, RejectReason
from schemas.manifests import ModelManifest
from schemas.messages import ModelAnnouncementMessage, TransferState, TransferStatusBody, TransferStatusMessage
from schemas.tensors import DEFAULT_MAX_HEADER_BYTES, read_safetensors_specs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstalledModel:
    manifest: ModelManifest
    directory: Path


class ModelUpdater:
    """Keeps ``data_dir/models`` in step with the hub's signed announcements."""

    def __init__(
        self,
        link: MqttLink,
        data_dir: Path,
        hub_keys: KeyRing,
        *,
        hub_id: str = "hub",
        on_installed: Callable[[InstalledModel], None] | None = None,
        max_model_bytes: int = 2 * 1024**3,
        max_partial_transfers: int = 4,
        max_partial_bytes: int = 4 * 1024**3,
        max_tensor_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        fetch_grace_s: float = 2.0,
    ) -> None:
        self.link = link
        self.hub_keys = hub_keys
        self.hub_id = hub_id
        self.models_dir = data_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.max_model_bytes = max_model_bytes
        self.max_tensor_header_bytes = max_tensor_header_bytes
        self.fetch_grace_s = fetch_grace_s
        self._on_installed = on_installed
        self._install_lock = threading.Lock()
        # Every model chunk topic is the hub's: the quota is one share for all of them.
        self.assembler = TransferAssembler(
            data_dir / "models-inbox",
            chunk_size=link.config.chunk_size_bytes,
            max_total_bytes=max_model_bytes,
            max_partials_per_source=max_partial_transfers,
            max_partial_bytes_per_source=max_partial_bytes,
            quota_key=lambda _topic: hub_id,
        )
        self.rejections = self.assembler.rejections
        self.receiver = TransferReceiver(
            link,
            self.assembler,
            # the broadcast of every new version, and what the hub re-sends to this edge alone when it fetches
            chunk_filter=[link.topics.all_model_chunks(), link.topics.edge_model_chunks(link.node_id)],
            reply_topic=lambda _topic, _tid: link.topics.edge_fetch(link.node_id),
            on_complete=self._install,
        )
        link.subscribe(
            link.topics.all_model_announcements(), self._on_announcement, message_type=ModelAnnouncementMessage
        )

    def start(self) -> None:
        self.receiver.start()

    def close(self) -> None:
        self.receiver.close()

    # -- state -------------------------------------------------------------------------------------------------

    def newest_seen(self, name: str) -> int | None:
        """The newest version of ``name`` this edge has seen signed by the hub (the high-water mark)."""
        return newest_seen(self.models_dir, name)

    def _note_seen(self, name: str, version: int) -> None:
        with self._install_lock:
            note_seen(self.models_dir, name, version)

    def _refuse_if_stale(self, manifest: ModelManifest) -> None:
        newest = self.newest_seen(manifest.name)
        if newest is not None and manifest.version < newest:
            raise RejectedError(
                RejectReason.STALE,
                f"{manifest.name} v{manifest.version} is older than v{newest}, the newest signed version this edge "
                "has seen; versions only go forward (a rollback comes as a new version)",
            )

    def installed_version(self, name: str) -> int | None:
        return newest_installed(self.models_dir, name)

    def installed(self, name: str) -> InstalledModel | None:
        version = self.installed_version(name)
        if version is None:
            return None
        directory = self.models_dir / name / str(version)
        return InstalledModel(read_model_manifest({MANIFEST_FILE: directory / MANIFEST_FILE}), directory)

    # -- announcements -----------------------------------------------------------------------------------------

    def _on_announcement(self, message: ReceivedMessage[ModelAnnouncementMessage]) -> None:
        body = message.payload.body
        manifest = body.manifest
        try:
            self.hub_keys.verify(manifest, expected_signer=self.hub_id)
        except RejectedError as exc:
            self.rejections.add(exc.reason)
            log.error(
                "model announcement rejected",
                extra={
                    "model": manifest.name,
                    "version": manifest.version,
                    "reason": exc.reason.value,
                    "error": str(exc),
                },
            )
            return
        try:
            self._refuse_if_stale(manifest)
        except RejectedError as exc:
            self.rejections.add(exc.reason)
            log.warning("model announcement refused", extra={"model": manifest.name, "error": str(exc)})
            return
        self._note_seen(manifest.name, manifest.version)
        current = self.installed_version(manifest.name)
        if current is not None and current >= manifest.version:
            return
        # Online edges get the broadcast right after the announcement; ask only if nothing arrives meanwhile.
        timer = threading.Timer(self.fetch_grace_s, self._fetch_if_needed, args=(manifest, body.artifact.transfer_id))
        timer.daemon = True
        timer.start()

    def _fetch_if_needed(self, manifest: ModelManifest, transfer_id: str) -> None:
        current = self.installed_version(manifest.name)
        if current is not None and current >= manifest.version:
            return
        missing = self.assembler.missing(transfer_id)
        status = TransferStatusBody(
            transfer_id=transfer_id,
            state=TransferState.RECEIVING,
            count=self.assembler.count(transfer_id),
            missing=missing,
            request=True,
        )
        log.info(
            "fetching model",
            extra={
                "model": manifest.name,
                "version": manifest.version,
                "transfer_id": transfer_id,
                "missing": None if missing is None else len(missing),
            },
        )
        try:
            self.link.publish(
                self.link.topics.edge_fetch(self.link.node_id),
                TransferStatusMessage(sender=self.link.node_id, body=status),
            )
        except LinkError as exc:
            log.warning("model fetch not sent", extra={"transfer_id": transfer_id, "error": str(exc)})

    # -- installation ------------------------------------------------------------------------------------------

    def _install(self, topic: str, transfer_id: str, artifact: Path) -> None:
        staging = self.models_dir / f".incoming-{transfer_id}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            files = unpack_bundle(artifact, staging, max_bytes=self.max_model_bytes)
            manifest = read_model_manifest(files)
            self.hub_keys.verify(manifest, expected_signer=self.hub_id)
            self._refuse_if_stale(manifest)
            verify_files(manifest.files, files)
            if WEIGHTS_FILE in files:
                # Training and local BatchNorm load these weights later with the safetensors library, which would
                # parse a header of up to 100 MB: check header size, numeric dtypes and offsets before installing.
                read_safetensors_specs(files[WEIGHTS_FILE], max_header_bytes=self.max_tensor_header_bytes)
        except RejectedError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._note_seen(manifest.name, manifest.version)
        with self._install_lock:
            target = self.models_dir / manifest.name / str(manifest.version)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(staging, ignore_errors=True)  # the same signed version, installed before
            else:
                staging.rename(target)  # whole or not at all: edge.model_records reads versions from the folders
        log.info(
            "model installed", extra={"model": manifest.name, "version": manifest.version, "transfer_id": transfer_id}
        )
        if self._on_installed is not None:
            self._on_installed(InstalledModel(manifest, target))
