"""The model registry: every global version with its lineage, round, participants and metrics.

Weights are stored content-addressed (``artifacts/sha256/ab/abcdef....safetensors``), so identical weights are
stored once and a file's name is its integrity check. Metadata lives in SQL (SQLite by default, PostgreSQL by
URL; the tables are ``hub.tables``, migrated by ``hub.db``). Version 0 of a model line is imported by the
operator; every later version has a parent. A line whose version 0 came with a ``model.onnx`` serves ONNX: the
publication worker exports each later version (``hub.service.export_version_onnx``) and attaches the file here.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from hub.tables import ModelVersionRow
from schemas.base import utc_now
from schemas.bundle import MODEL_FILE, WEIGHTS_FILE, file_digest
from schemas.manifests import ExportInfo, FileDigest, ModelManifest, finite_metrics
from schemas.tensors import TensorSpec, contiguous, read_safetensors_specs

log = logging.getLogger(__name__)

REGISTRY_MAX_HEADER_BYTES = 100 * 1024**2
"""The registry's own weights are trusted; this is only the safetensors library's own ceiling."""


@dataclass(frozen=True)
class ModelVersion:
    manifest: ModelManifest
    round_id: str | None
    strategy: str | None
    participants: list[str]
    num_examples: int
    metrics: dict[str, float]
    weights_path: Path


class ModelRegistry:
    def __init__(self, engine: Engine, artifacts_dir: Path) -> None:
        self.engine = engine
        self.artifacts_dir = artifacts_dir
        artifacts_dir.mkdir(parents=True, exist_ok=True)

    def _weights_path(self, sha256: str) -> Path:
        return self.artifacts_dir / "sha256" / sha256[:2] / f"{sha256}.safetensors"

    def _onnx_path(self, sha256: str) -> Path:
        return self.artifacts_dir / "sha256" / sha256[:2] / f"{sha256}.onnx"

    def _store_onnx(self, source: Path) -> FileDigest:
        """Copy a model.onnx into the content-addressed store (atomically); its digest."""
        digest = file_digest(source)
        target = self._onnx_path(digest.sha256)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
        return digest

    def _store_weights(self, weights: Mapping[str, np.ndarray]) -> tuple[str, int]:
        with tempfile.NamedTemporaryFile(dir=self.artifacts_dir, suffix=".tmp", delete=False) as handle:
            tmp = Path(handle.name)
        try:
            safetensors.numpy.save_file({k: contiguous(np.asarray(v)) for k, v in weights.items()}, str(tmp))
            digest = file_digest(tmp)
            target = self._weights_path(digest.sha256)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                tmp.unlink()
            else:
                tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return digest.sha256, digest.size_bytes

    def import_root(
        self, manifest: ModelManifest, weights: Mapping[str, np.ndarray], onnx: Path | None = None
    ) -> ModelVersion:
        """Register version 0 of a model line from an operator-provided manifest, weights and (optional) model.onnx.

        With ``onnx`` the line serves ONNX: the hub exports every later version too. Its digest must match the
        manifest's entry for model.onnx when the manifest lists one.
        """
        if manifest.version != 0:
            raise ValueError(f"an imported root model must be version 0, got {manifest.version}")
        if self.latest_version(manifest.name) is not None:
            raise ValueError(f"model line {manifest.name!r} already exists")
        extra: dict[str, FileDigest] = {}
        if onnx is not None:
            digest = file_digest(onnx)
            listed = manifest.files.get(MODEL_FILE)
            if listed is not None and listed != digest:
                raise ValueError(f"{onnx}: SHA-256 / size differ from the manifest's entry for {MODEL_FILE}")
            extra[MODEL_FILE] = self._store_onnx(onnx)
        return self._add(
            manifest,
            weights,
            round_id=None,
            strategy=None,
            participants=[],
            num_examples=0,
            metrics=dict(manifest.metrics),
            extra_files=extra,
        )

    def add_version(
        self,
        name: str,
        parent: int,
        weights: Mapping[str, np.ndarray],
        *,
        round_id: str,
        strategy: str,
        participants: list[str],
        num_examples: int,
        metrics: Mapping[str, float] | None = None,
    ) -> ModelVersion:
        """Register the next version of ``name``, derived from ``parent`` by a round.

        Metrics a manifest cannot carry (non-finite, e.g. a weighted mean that overflowed, or beyond the entry and
        name bounds) are left out and logged rather than failing the round.
        """
        kept, dropped = finite_metrics(metrics or {})
        if dropped:
            log.warning(
                "metrics left out of the new version",
                extra={"model": name, "parent": parent, "round_id": round_id, "metrics": dropped[:10]},
            )
        manifest = self._next_manifest(self.get(name, parent), round_id=round_id, metrics=kept)
        return self._add(
            manifest,
            weights,
            round_id=round_id,
            strategy=strategy,
            participants=participants,
            num_examples=num_examples,
            metrics=kept,
        )

    def _next_manifest(
        self, source: ModelVersion, *, round_id: str | None, metrics: Mapping[str, float]
    ) -> ModelManifest:
        """The manifest of the next version of a line, derived from ``source`` (unsigned, not yet exported)."""
        name = source.manifest.name
        return source.manifest.model_copy(
            update={
                "version": (self.latest_version(name) or 0) + 1,
                "parent": source.manifest.version,
                "round_id": round_id,
                "signature": None,
                "metrics": dict(metrics),
                "export": None,
                "created_at": utc_now(),
            }
        )

    def _add(
        self,
        manifest: ModelManifest,
        weights: Mapping[str, np.ndarray],
        *,
        round_id: str | None,
        strategy: str | None,
        participants: list[str],
        num_examples: int,
        metrics: dict[str, float],
        extra_files: Mapping[str, FileDigest] | None = None,
    ) -> ModelVersion:
        sha256, size = self._store_weights(weights)
        files = {WEIGHTS_FILE: FileDigest(sha256=sha256, size_bytes=size), **(extra_files or {})}
        # Re-validated: model_copy skips the lineage checks of ModelManifest.
        manifest = ModelManifest.model_validate(
            {**manifest.model_dump(), "files": {name: digest.model_dump() for name, digest in files.items()}}
        )
        with Session(self.engine) as session, session.begin():
            session.add(
                ModelVersionRow(
                    name=manifest.name,
                    version=manifest.version,
                    parent=manifest.parent,
                    round_id=round_id,
                    strategy=strategy,
                    participants_json=json.dumps(participants),
                    num_examples=num_examples,
                    metrics_json=json.dumps(metrics),
                    weights_sha256=sha256,
                    manifest_json=manifest.model_dump_json(),
                )
            )
        log.info(
            "model version registered",
            extra={
                "model": manifest.name,
                "version": manifest.version,
                "parent": manifest.parent,
                "round_id": round_id,
            },
        )
        return self.get(manifest.name, manifest.version)

    def rollback(self, name: str, to_version: int) -> ModelVersion:
        """Make ``to_version`` current again as a new version (parent = to_version, same weights).

        Versions only grow, so every edge installs the rollback like any other new global model.
        """
        target = self.get(name, to_version)
        manifest = self._next_manifest(target, round_id=None, metrics=target.metrics)
        return self._add(
            manifest,
            self.weights(name, to_version),
            round_id=None,
            strategy="rollback",
            participants=[],
            num_examples=0,
            metrics=dict(target.metrics),
        )

    def model_names(self) -> list[str]:
        with Session(self.engine) as session:
            return list(session.scalars(select(ModelVersionRow.name).distinct().order_by(ModelVersionRow.name)))

    def versions(self, name: str) -> list[ModelVersion]:
        with Session(self.engine) as session:
            numbers = list(
                session.scalars(
                    select(ModelVersionRow.version)
                    .where(ModelVersionRow.name == name)
                    .order_by(ModelVersionRow.version)
                )
            )
        return [self.get(name, v) for v in numbers]

    def latest_version(self, name: str) -> int | None:
        with Session(self.engine) as session:
            return session.scalars(
                select(ModelVersionRow.version)
                .where(ModelVersionRow.name == name)
                .order_by(ModelVersionRow.version.desc())
            ).first()

    def get(self, name: str, version: int) -> ModelVersion:
        with Session(self.engine) as session:
            row = session.get(ModelVersionRow, (name, version))
            if row is None:
                raise KeyError(f"model {name!r} has no version {version}")
            return ModelVersion(
                manifest=ModelManifest.model_validate_json(row.manifest_json),
                round_id=row.round_id,
                strategy=row.strategy,
                participants=json.loads(row.participants_json),
                num_examples=row.num_examples,
                metrics=json.loads(row.metrics_json),
                weights_path=self._weights_path(row.weights_sha256),
            )

    def weights(self, name: str, version: int) -> dict[str, np.ndarray]:
        path = self.get(name, version).weights_path
        return safetensors.numpy.load_file(str(path))

    def tensor_specs(self, name: str, version: int) -> dict[str, TensorSpec]:
        """Dtype and shape of every tensor of a version, from the weights file's header alone; KeyError if unknown."""
        return read_safetensors_specs(self.get(name, version).weights_path, max_header_bytes=REGISTRY_MAX_HEADER_BYTES)

    def lineage(self, name: str, version: int) -> list[int]:
        """The version and its ancestors back to the root, newest first."""
        chain = [version]
        while (parent := self.get(name, chain[-1]).manifest.parent) is not None:
            chain.append(parent)
        return chain

    def serves_onnx(self, name: str) -> bool:
        """Whether the line was imported with a model.onnx, so every version needs one before it is published."""
        return MODEL_FILE in self.get(name, 0).manifest.files

    def attach_onnx(self, name: str, version: int, onnx: Path, export: ExportInfo) -> ModelVersion:
        """Record the exported model.onnx of a version (its manifest gains the file digest and the export facts)."""
        digest = self._store_onnx(onnx)
        with Session(self.engine) as session, session.begin():
            row = session.get(ModelVersionRow, (name, version))
            if row is None:
                raise KeyError(f"model {name!r} has no version {version}")
            manifest = ModelManifest.model_validate_json(row.manifest_json)
            updated = ModelManifest.model_validate(
                {
                    **manifest.model_dump(),
                    "files": {
                        **{k: v.model_dump() for k, v in manifest.files.items()},
                        MODEL_FILE: digest.model_dump(),
                    },
                    "export": export.model_dump(),
                }
            )
            row.manifest_json = updated.model_dump_json()
        log.info("model version exported", extra={"model": name, "version": version, "onnx_sha256": digest.sha256})
        return self.get(name, version)

    def export_bundle_files(self, name: str, version: int, directory: Path) -> dict[str, Path]:
        """The files of a version's bundle (besides manifest.json), copied into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        stored = self.get(name, version)
        target = directory / WEIGHTS_FILE
        shutil.copyfile(stored.weights_path, target)
        files = {WEIGHTS_FILE: target}
        onnx = stored.manifest.files.get(MODEL_FILE)
        if onnx is not None:
            files[MODEL_FILE] = directory / MODEL_FILE
            shutil.copyfile(self._onnx_path(onnx.sha256), files[MODEL_FILE])
        return files
