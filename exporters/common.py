"""What every exporter shares: export options, ONNX post-processing (simplify, fp16, metadata), the parity check
and writing the model bundle.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporters.errors import ExportError, ParityError
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, file_digest
from schemas.manifests import ArchitectureSpec, ExportInfo, InputSpec, ModelManifest, Task, TemplateInput
from schemas.onnxmeta import OnnxModelMetadata, ScoreKind

if TYPE_CHECKING:
    import onnx
    import torch

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
PARITY_SEED = 20261122


@dataclass(frozen=True)
class ExportOptions:
    """Choices every exporter takes."""

    opset: int = DEFAULT_OPSET
    simplify: bool = True
    fp16: bool = False
    atol: float | None = None
    """Parity tolerance (absolute part); None: 1e-4 for fp32, 1e-2 for fp16."""
    rtol: float | None = None
    """Parity tolerance (relative part); None: 1e-4 for fp32, 1e-2 for fp16."""
    parity_batch: int = 2

    @property
    def tolerances(self) -> tuple[float, float]:
        default = 1e-2 if self.fp16 else 1e-4
        return (default if self.atol is None else self.atol, default if self.rtol is None else self.rtol)


@dataclass(frozen=True)
class ModelDescription:
    """What the bundle and the ONNX metadata say about the model."""

    name: str
    task: Task
    classes: list[str]
    input: InputSpec
    architecture: ArchitectureSpec
    version: int = 0
    parent: int | None = None
    scores: ScoreKind = ScoreKind.LOGITS
    metrics: Mapping[str, float] | None = None

    def metadata(self) -> OnnxModelMetadata:
        return OnnxModelMetadata(
            name=self.name,
            version=self.version,
            task=self.task,
            classes=self.classes,
            input=self.input,
            architecture=self.architecture,
            scores=self.scores,
        )


def state_dict_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's state as numpy arrays (parameters and buffers), for weights.safetensors."""
    return {key: value.detach().cpu().numpy().copy() for key, value in module.state_dict().items()}


def load_weights_into(module: torch.nn.Module, path: Path, *, fits: str, torch_files: bool = False) -> None:
    """Load a state dict file into ``module`` (strict); ``ExportError`` naming the file and what it must fit.

    ``path`` is a .safetensors file, or with ``torch_files`` also a torch .pt / .pth state dict, which is read with
    ``weights_only=True`` (never unpickled freely).
    """
    if not path.is_file():
        raise ExportError(f"{path}: weights file not found")
    if path.suffix == ".safetensors" or not torch_files:
        import safetensors.torch

        try:
            state: object = dict(safetensors.torch.load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error type for malformed headers
            raise ExportError(f"{path}: not a readable safetensors file: {exc}") from None
    else:
        import torch

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad or hostile files
            raise ExportError(f"{path}: cannot read weights: {exc}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ExportError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{path}: does not fit {fits}: {str(exc).splitlines()[0]}") from None


def with_template(spec: InputSpec, template: TemplateInput, *, model: str) -> InputSpec:
    """``spec`` saying whether the model compares each image with its golden template; ``ExportError`` if it cannot
    (a template comparison has 3 channels)."""
    from pydantic import ValidationError

    try:
        return InputSpec.model_validate({**spec.model_dump(), "template": template})
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors())
        raise ExportError(f"{model}: input template {template.value!r}: {problems}") from None


def parity_inputs(spec: InputSpec, batch: int) -> np.ndarray:
    """Fixed, seeded inputs in the model's normalized value range and layout."""
    rng = np.random.default_rng(PARITY_SEED)
    pixels = rng.integers(0, 256, size=(batch, spec.height, spec.width, spec.channels)).astype(np.float32)
    tensor = (pixels * np.float32(spec.scale) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        tensor = tensor.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(tensor, dtype=np.float32)


def finish_onnx(model: onnx.ModelProto, description: ModelDescription, options: ExportOptions) -> onnx.ModelProto:
    """Simplify, convert to fp16 if asked (inputs and outputs stay fp32) and embed our metadata."""
    if options.simplify:
        import onnxslim

        model = onnxslim.slim(model)
    if options.fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True)
    props = description.metadata().to_props()
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for prop in kept:
        model.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    return model


def check_parity(onnx_path: Path, inputs: np.ndarray, expected: list[np.ndarray], options: ExportOptions) -> float:
    """Run ``onnx_path`` on ``inputs`` with ONNX Runtime (CPU); compare with the source's ``expected`` outputs.

    Returns the max absolute difference; raises ``ParityError`` beyond the tolerance.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: inputs})
    if len(outputs) < len(expected):
        raise ExportError(f"{onnx_path}: ONNX model gives {len(outputs)} outputs, the source gave {len(expected)}")
    atol, rtol = options.tolerances
    worst = 0.0
    within = True
    for got, want in zip(outputs, expected, strict=False):
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            raise ExportError(f"{onnx_path}: ONNX output shape {got.shape} differs from the source's {want.shape}")
        if not (np.isfinite(got).all() and np.isfinite(want).all()):
            # max() would ignore NaN and report a difference of 0: say what is wrong instead
            raise ExportError(
                f"{onnx_path}: the model's outputs on the parity input are not finite (NaN or inf) in the source "
                f"or in ONNX Runtime: its weights are broken (e.g. a negative BatchNorm variance); not written"
            )
        difference = np.abs(got - want)
        worst = max(worst, float(difference.max(initial=0.0)))
        within = within and bool(np.all(difference <= atol + rtol * np.abs(want)))
    if not np.isfinite(worst) or not within:
        raise ParityError(worst, atol, rtol)
    return worst


def write_bundle(
    out_dir: Path,
    model: onnx.ModelProto,
    *,
    description: ModelDescription,
    options: ExportOptions,
    weights: Mapping[str, np.ndarray] | None,
    parity: tuple[np.ndarray, list[np.ndarray]],
) -> ModelManifest:
    """Write model.onnx (+ weights.safetensors) + manifest.json into ``out_dir`` after a passing parity check.

    Files are written into a temporary sibling directory first, so a failed export leaves no half bundle.
    """
    import onnx

    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        onnx_path = staging / MODEL_FILE
        onnx.save_model(model, str(onnx_path))
        inputs, expected = parity
        max_diff = check_parity(onnx_path, inputs, expected, options)
        files = {MODEL_FILE: file_digest(onnx_path)}
        if weights is not None:
            import safetensors.numpy

            from schemas.tensors import contiguous

            weights_path = staging / WEIGHTS_FILE
            safetensors.numpy.save_file({k: contiguous(v) for k, v in weights.items()}, str(weights_path))
            files[WEIGHTS_FILE] = file_digest(weights_path)
        manifest = ModelManifest(
            name=description.name,
            version=description.version,
            parent=description.parent,
            task=description.task,
            classes=description.classes,
            input=description.input,
            architecture=description.architecture,
            files=files,
            export=ExportInfo(opset=_opset(model), fp16=options.fp16, parity_max_abs_diff=max_diff),
            metrics=dict(description.metrics or {}),
        )
        (staging / MANIFEST_FILE).write_text(
            json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
        )
        ensure_empty_output(out_dir)
        if out_dir.exists():
            out_dir.rmdir()
        staging.replace(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "model exported",
        extra={
            "model": description.name,
            "version": description.version,
            "out_dir": str(out_dir),
            "parity_max_abs_diff": max_diff,
            "fp16": options.fp16,
        },
    )
    return manifest


def ensure_empty_output(out_dir: Path) -> None:
    """Refuse to overwrite an earlier export: the output directory must be new or empty."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir}: output path exists and is not a directory")
        existing = sorted(p.name for p in out_dir.iterdir())
        if existing:
            raise ExportError(f"{out_dir}: output directory is not empty ({', '.join(existing[:5])})")


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=DEFAULT_OPSET)
