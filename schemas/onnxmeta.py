"""The metadata contract of a served ONNX file: what makes a bare ``model.onnx`` self-describing.

Exporters write these ``metadata_props``; the edge reads them (from ONNX Runtime's ``custom_metadata_map``)
and configures pre- and post-processing from them alone. Every value is a string; structured values are JSON.

A model exported by Ultralytics without our keys is adopted when its own metadata is complete (``task``,
``names``, ``imgsz``): Ultralytics always letterboxes RGB images and scales them by 1/255. Its ``names`` value is
a Python dict literal, parsed with ``ast.literal_eval`` (never ``eval``).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Self

from pydantic import Field, ValidationError, model_validator

from schemas.base import ContractModel, Identifier
from schemas.errors import ModelMetadataError
from schemas.manifests import ArchitectureSpec, ColorMode, InputSpec, ResizeMode, Task

METADATA_PREFIX = "fedinspect."
FORMAT_VERSION = "1"
KEY_FORMAT = METADATA_PREFIX + "format_version"
KEY_NAME = METADATA_PREFIX + "name"
KEY_VERSION = METADATA_PREFIX + "version"
KEY_TASK = METADATA_PREFIX + "task"
KEY_CLASSES = METADATA_PREFIX + "classes"
KEY_INPUT = METADATA_PREFIX + "input"
KEY_ARCHITECTURE = METADATA_PREFIX + "architecture"
KEY_SCORES = METADATA_PREFIX + "scores"
_REQUIRED_KEYS = (KEY_FORMAT, KEY_NAME, KEY_VERSION, KEY_TASK, KEY_CLASSES, KEY_INPUT)


class ScoreKind(StrEnum):
    LOGITS = "logits"
    PROBABILITIES = "probabilities"


class OnnxModelMetadata(ContractModel):
    """What a served ONNX file says about itself."""

    name: Identifier = Field(title="Model name", description="Model line, e.g. 'pcb-classifier'.")
    version: int = Field(title="Version", description="Version within the model line.", ge=0)
    task: Task = Field(title="Task", description="classify or detect.")
    classes: list[str] = Field(
        title="Classes", description="Class names in output index order.", min_length=1, max_length=1000
    )
    input: InputSpec = Field(title="Input spec", description="How images become the input tensor.")
    architecture: ArchitectureSpec | None = Field(
        None, title="Architecture", description="How to rebuild the trainable model, when known."
    )
    scores: ScoreKind = Field(
        ScoreKind.LOGITS,
        title="Classifier scores",
        description="Whether a classifier outputs logits (soft-maxed by the edge) or probabilities already.",
    )

    @model_validator(mode="after")
    def _unique_classes(self) -> Self:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {self.classes}")
        return self

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` an exporter writes into the ONNX file."""
        props = {
            KEY_FORMAT: FORMAT_VERSION,
            KEY_NAME: self.name,
            KEY_VERSION: str(self.version),
            KEY_TASK: self.task.value,
            KEY_CLASSES: json.dumps(self.classes),
            KEY_INPUT: self.input.model_dump_json(),
            KEY_SCORES: self.scores.value,
        }
        if self.architecture is not None:
            props[KEY_ARCHITECTURE] = self.architecture.model_dump_json()
        return props


def read_metadata(props: Mapping[str, str], *, source: str, fallback_name: str = "model") -> OnnxModelMetadata:
    """Parse our metadata from ``props``, or adopt Ultralytics' when ours is absent and theirs is complete.

    ``source`` names the file in error messages. Raises ``ModelMetadataError`` saying what is missing or wrong.
    """
    if any(key.startswith(METADATA_PREFIX) for key in props):
        return _read_ours(props, source)
    if "names" in props and "imgsz" in props:
        return _adopt_ultralytics(props, source, fallback_name)
    raise ModelMetadataError(
        f"{source}: no fedinspect metadata (keys {', '.join(_REQUIRED_KEYS)}) and no complete Ultralytics metadata; "
        "export the model with `fedinspect export torch|yolo|keras` so it describes its task, classes and input"
    )


def _read_ours(props: Mapping[str, str], source: str) -> OnnxModelMetadata:
    missing = [key for key in _REQUIRED_KEYS if key not in props]
    if missing:
        raise ModelMetadataError(f"{source}: incomplete fedinspect metadata, missing {', '.join(missing)}")
    if props[KEY_FORMAT] != FORMAT_VERSION:
        raise ModelMetadataError(
            f"{source}: metadata format {props[KEY_FORMAT]!r} is not supported (this release reads {FORMAT_VERSION!r})"
        )
    try:
        data: dict[str, Any] = {
            "name": props[KEY_NAME],
            "version": props[KEY_VERSION],
            "task": props[KEY_TASK],
            "classes": json.loads(props[KEY_CLASSES]),
            "input": json.loads(props[KEY_INPUT]),
        }
        if KEY_SCORES in props:
            data["scores"] = props[KEY_SCORES]
        if KEY_ARCHITECTURE in props:
            data["architecture"] = json.loads(props[KEY_ARCHITECTURE])
    except json.JSONDecodeError as exc:
        raise ModelMetadataError(f"{source}: a fedinspect metadata value is not valid JSON: {exc}") from None
    return _validate(data, source)


def _adopt_ultralytics(props: Mapping[str, str], source: str, fallback_name: str) -> OnnxModelMetadata:
    task = props.get("task", "detect")
    if task != "detect":
        raise ModelMetadataError(f"{source}: Ultralytics task {task!r} is not served; only 'detect' is")
    try:
        names = ast.literal_eval(props["names"])
        imgsz = ast.literal_eval(props["imgsz"])
        channels = int(props.get("channels", "3"))
    except (ValueError, SyntaxError) as exc:
        raise ModelMetadataError(f"{source}: unreadable Ultralytics metadata: {exc}") from None
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))):
        raise ModelMetadataError(f"{source}: Ultralytics 'names' must map 0..n-1 to class names, got {names!r}")
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    if not (isinstance(imgsz, list | tuple) and len(imgsz) == 2):
        raise ModelMetadataError(f"{source}: Ultralytics 'imgsz' must be [height, width], got {imgsz!r}")
    data = {
        "name": fallback_name,
        "version": 0,
        "task": Task.DETECT.value,
        "classes": [str(names[index]) for index in range(len(names))],
        "input": {
            "height": imgsz[0],
            "width": imgsz[1],
            "channels": channels,
            "color": ColorMode.RGB.value if channels == 3 else ColorMode.GRAY.value,
            "resize": ResizeMode.LETTERBOX.value,
            "pad_value": 114,
            "scale": 1.0 / 255.0,
            "mean": [0.0] * channels,
            "std": [1.0] * channels,
        },
    }
    return _validate(data, source)


def _validate(data: dict[str, Any], source: str) -> OnnxModelMetadata:
    try:
        return OnnxModelMetadata.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}" for e in exc.errors())
        raise ModelMetadataError(f"{source}: invalid model metadata: {problems}") from None
