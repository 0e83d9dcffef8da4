"""Hub side of model updates: receive chunked update artifacts and accept only verified ones.

An update is accepted when the transfer's whole hash matches, its manifest is signed by the enrolled key of
the edge whose topic it came on (and names that edge), the delta file matches the signed digest, and the delta
decodes with the signed encoding into numeric tensors of its base model's dtypes and at most its base's size.
Anything else is rejected with a reason: logged, counted, and reported to the sending edge. Accepted updates go
to ``on_update`` (the round logic, which may itself reject, e.g. as stale).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from runtime.assembler import TransferAssembler
from runtime.exchange import TransferReceiver
from runtime.mqtt import MqttLink
from runtime.signing import KeyRing
from schemas.base import validation_problems
from schemas.bundle import MANIFEST_FILE, UPDATE_DELTA_FILE, unpack_bundle, verify_files
from schemas.config import UpdateIntakeConfig
from schemas.errors import RejectedError, RejectReason
from schemas.manifests import UpdateManifest
from schemas.tensors import TensorCodecError, TensorSpec, decode_tensors

log = logging.getLogger(__name__)

BaseSpecs = Callable[[str, int], Mapping[str, TensorSpec]]
"""(model name, base version) -> the dtype and shape of each tensor of that version; KeyError if unknown."""


@dataclass(frozen=True)
class ReceivedUpdate:
    """A verified update: its signed manifest and the decoded delta."""

    transfer_id: str
    manifest: UpdateManifest
    delta: dict[str, np.ndarray]


class UpdateInbox:
    """Receives updates from every edge on ``edge/+/update/+`` and verifies them before ``on_update``."""

    def __init__(
        self,
        link: MqttLink,
        data_dir: Path,
        enrolled_keys: KeyRing,
        on_update: Callable[[ReceivedUpdate], None],
        *,
        intake: UpdateIntakeConfig | None = None,
        base_specs: BaseSpecs | None = None,
        on_rejected: Callable[[str, str, RejectedError], None] | None = None,
    ) -> None:
        self.link = link
        # (model name, version) -> dtype and shape of each tensor of the base an update is against; KeyError if
        # unknown. Without it (tests of the intake alone) only the codec's own bounds apply.
        self._base_specs = base_specs
        self._on_rejected = on_rejected  # (edge id, transfer id, error): e.g. to record it for the API
        self.enrolled_keys = enrolled_keys
        self.intake = intake or UpdateIntakeConfig()
        self.max_update_bytes = self.intake.max_update_bytes
        self._on_update = on_update
        self._work_dir = data_dir / "updates-work"
        self._work_dir.mkdir(parents=True, exist_ok=True)
        # Chunks arrive before any signature can be checked: each edge (the topic's edge level) gets a bounded
        # share of transfers in progress, and only the hub's own chunk geometry is accepted.
        self.assembler = TransferAssembler(
            data_dir / "updates-inbox",
            chunk_size=link.config.chunk_size_bytes,
            max_total_bytes=self.max_update_bytes,
            max_partials_per_source=self.intake.max_partial_updates_per_edge,
            max_partial_bytes_per_source=self.intake.max_partial_bytes_per_edge,
            quota_key=link.topics.edge_id_of,
        )
        self.receiver = TransferReceiver(
            link,
            self.assembler,
            chunk_filter=link.topics.all_updates(),
            reply_topic=lambda topic, tid: link.topics.edge_update_status(link.topics.edge_id_of(topic), tid),
            on_complete=self._checked,
        )

    @property
    def rejections(self) -> dict[str, int]:
        return self.assembler.rejections.snapshot()

    def start(self) -> None:
        self.receiver.start()

    def close(self) -> None:
        self.receiver.close()

    def _checked(self, topic: str, transfer_id: str, artifact: Path) -> None:
        try:
            self._verify(topic, transfer_id, artifact)
        except RejectedError as exc:
            if self._on_rejected is not None:
                self._on_rejected(self.link.topics.edge_id_of(topic), transfer_id, exc)
            raise

    def _verify(self, topic: str, transfer_id: str, artifact: Path) -> None:
        edge_id = self.link.topics.edge_id_of(topic)
        with tempfile.TemporaryDirectory(dir=self._work_dir) as tmp:
            files = unpack_bundle(artifact, Path(tmp), max_bytes=self.max_update_bytes)
            try:
                manifest = UpdateManifest.model_validate_json(files[MANIFEST_FILE].read_bytes())
            except ValidationError as exc:  # names the field, e.g. metrics_after.mAP50: ... finite number
                raise RejectedError(
                    RejectReason.MALFORMED, f"invalid update manifest: {validation_problems(exc)}"
                ) from None
            # The topic says which edge's credentials sent it; the key of that edge must have signed it.
            self.enrolled_keys.verify(manifest, expected_signer=edge_id)
            if manifest.edge_id != edge_id:
                raise RejectedError(
                    RejectReason.SIGNER_MISMATCH, f"manifest names edge {manifest.edge_id!r}, sent by {edge_id!r}"
                )
            verify_files({UPDATE_DELTA_FILE: manifest.payload}, files)
            base = self._base(manifest)
            try:
                delta = decode_tensors(
                    files[UPDATE_DELTA_FILE].read_bytes(),
                    manifest.encoding,
                    max_decoded_bytes=self.max_update_bytes,
                    max_header_bytes=self.intake.max_tensor_header_bytes,
                    base=base,
                    margin_bytes=self.intake.decode_margin_bytes,
                )
            except RejectedError as exc:  # TensorDecodeError: its reason says which bound was hit
                raise RejectedError(exc.reason, f"delta does not decode: {exc.detail}") from None
            except TensorCodecError as exc:
                raise RejectedError(RejectReason.MALFORMED, f"delta does not decode: {exc}") from None
        log.info(
            "update verified",
            extra={
                "transfer_id": transfer_id,
                "edge_id": edge_id,
                "round_id": manifest.round_id,
                "num_examples": manifest.num_examples,
            },
        )
        self._on_update(ReceivedUpdate(transfer_id, manifest, delta))

    def _base(self, manifest: UpdateManifest) -> Mapping[str, TensorSpec] | None:
        """The base model's tensor specs, which bound what the delta may decode to."""
        if self._base_specs is None:
            return None
        try:
            return self._base_specs(manifest.model_name, manifest.base_version)
        except KeyError:
            raise RejectedError(
                RejectReason.STALE,
                f"update against {manifest.model_name!r} version {manifest.base_version}, which the hub does not have",
            ) from None
