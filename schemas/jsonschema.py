"""JSON Schema export of the contract, for non-Python clients and for validating configs in editors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas import SCHEMA_VERSION
from schemas.config import EdgeConfig, HubConfig
from schemas.manifests import ModelManifest, UpdateManifest
from schemas.messages import MESSAGE_TYPES
from schemas.transfer import ChunkHeader

DOCUMENT_TYPES: dict[str, type[BaseModel]] = {
    **{model.model_fields["type"].default: model for model in MESSAGE_TYPES},
    "model_manifest": ModelManifest,
    "update_manifest": UpdateManifest,
    "chunk_header": ChunkHeader,
    "edge_config": EdgeConfig,
    "hub_config": HubConfig,
}
"""Every document of the contract by its schema name: the message types, both manifests, both configs."""


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one document type."""
    schema = DOCUMENT_TYPES[name].model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:fedinspect:v{SCHEMA_VERSION}:{name}",
        **schema,
    }


def export_json_schemas(directory: Path) -> list[Path]:
    """Write ``{name}.schema.json`` for every document type into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DOCUMENT_TYPES:
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
