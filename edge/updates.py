"""Edge side of model updates: encode a delta, sign its manifest with the edge key, and queue the upload.

The artifact is a bundle of ``manifest.json`` (a signed ``UpdateManifest``) and ``delta.safetensors`` (the
encoded delta); the ``TransferOutbox`` sends it in chunks and resumes after a restart.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtime.exchange import TransferOutbox
from runtime.signing import SigningKey
from schemas.bundle import MANIFEST_FILE, UPDATE_DELTA_FILE, file_digest, pack_bundle
from schemas.manifests import FileDigest, TensorEncoding, UpdateManifest, finite_metrics
from schemas.tensors import encode_tensors

log = logging.getLogger(__name__)


def build_update_artifact(
    delta: Mapping[str, np.ndarray],
    *,
    signing_key: SigningKey,
    model_name: str,
    round_id: str,
    base_version: int,
    num_examples: int,
    encoding: TensorEncoding,
    artifact: Path,
    metrics_before: Mapping[str, float] | None = None,
    metrics_after: Mapping[str, float] | None = None,
) -> tuple[UpdateManifest, FileDigest]:
    """Write the signed update bundle to ``artifact``; returns its manifest and the artifact's digest.

    The edge id is the key id.
    """
    # A diverged local run can measure NaN; the hub refuses a manifest carrying one, so leave such metrics out.
    before, dropped_before = finite_metrics(metrics_before or {})
    after, dropped_after = finite_metrics(metrics_after or {})
    if dropped_before or dropped_after:
        log.warning(
            "metrics left out of the update",
            extra={"round_id": round_id, "before": dropped_before[:10], "after": dropped_after[:10]},
        )
    with tempfile.TemporaryDirectory(dir=artifact.parent) as tmp:
        delta_path = Path(tmp) / UPDATE_DELTA_FILE
        delta_path.write_bytes(encode_tensors(delta, encoding))
        manifest = signing_key.sign(
            UpdateManifest(
                edge_id=signing_key.key_id,
                model_name=model_name,
                round_id=round_id,
                base_version=base_version,
                num_examples=num_examples,
                metrics_before=before,
                metrics_after=after,
                encoding=encoding,
                payload=file_digest(delta_path),
            )
        )
        manifest_path = Path(tmp) / MANIFEST_FILE
        manifest_path.write_text(manifest.model_dump_json(indent=2))
        digest = pack_bundle({MANIFEST_FILE: manifest_path, UPDATE_DELTA_FILE: delta_path}, artifact)
    return manifest, digest


class UpdateUploader:
    """Builds signed updates and hands them to the edge's transfer outbox."""

    def __init__(self, outbox: TransferOutbox, signing_key: SigningKey, work_dir: Path) -> None:
        self.outbox = outbox
        self.signing_key = signing_key
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)

    def upload(
        self,
        delta: Mapping[str, np.ndarray],
        *,
        model_name: str,
        round_id: str,
        base_version: int,
        num_examples: int,
        encoding: TensorEncoding,
        metrics_before: Mapping[str, float] | None = None,
        metrics_after: Mapping[str, float] | None = None,
    ) -> str:
        """Queue the update for sending; returns its transfer id."""
        transfer_id = f"u-{uuid.uuid4().hex[:20]}"
        artifact = self.work_dir / f"{transfer_id}.artifact"
        manifest, digest = build_update_artifact(
            delta,
            signing_key=self.signing_key,
            model_name=model_name,
            round_id=round_id,
            base_version=base_version,
            num_examples=num_examples,
            encoding=encoding,
            artifact=artifact,
            metrics_before=metrics_before,
            metrics_after=metrics_after,
        )
        edge_id = self.signing_key.key_id
        topic = self.outbox.link.topics.edge_update(edge_id, transfer_id)
        self.outbox.submit(artifact, transfer_id, topic, digest=digest)
        log.info(
            "update queued",
            extra={
                "transfer_id": transfer_id,
                "round_id": round_id,
                "model": model_name,
                "payload_bytes": manifest.payload.size_bytes,
                "encoding": manifest.encoding.dtype.value,
            },
        )
        return transfer_id
