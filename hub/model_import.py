"""Registering version 0 of a model line (``fedinspect hub import-model``, the demo): from a bundle directory
(manifest.json, weights.safetensors and, to serve ONNX, model.onnx) or a manifest plus its weights file, checked
against the manifest's digest before anything is written."""

from __future__ import annotations

from pathlib import Path

from hub.db import open_hub_database
from hub.registry import ModelRegistry
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, file_digest
from schemas.config import HubConfig


def import_model(config: HubConfig, source: Path, weights_path: Path | None = None) -> int:
    """Register version 0 of a model line from a bundle directory (manifest.json, weights.safetensors and, to serve
    ONNX, model.onnx) or from a manifest.json plus a weights.safetensors.
    """
    import safetensors.numpy

    from schemas.manifests import ModelManifest

    if source.is_dir():
        manifest_path, weights_path = source / MANIFEST_FILE, source / WEIGHTS_FILE
        onnx_path: Path | None = source / MODEL_FILE if (source / MODEL_FILE).is_file() else None
    elif weights_path is not None:
        manifest_path, onnx_path = source, None
    else:
        raise ValueError(f"{source}: give a bundle directory, or a manifest.json and its weights.safetensors")
    for required in (manifest_path, weights_path):
        if not required.is_file():
            raise ValueError(f"{required}: not found")
    manifest = ModelManifest.model_validate_json(manifest_path.read_bytes())
    listed = manifest.files.get(WEIGHTS_FILE)
    if listed is not None and listed != file_digest(weights_path):
        raise ValueError(f"{weights_path}: SHA-256 / size differ from the manifest's entry for {WEIGHTS_FILE}")
    registry = ModelRegistry(open_hub_database(config), config.data_dir / "artifacts")
    weights = safetensors.numpy.load_file(str(weights_path))
    return registry.import_root(manifest, weights, onnx_path).manifest.version
