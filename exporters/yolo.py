"""Ultralytics YOLO detectors to ONNX: from a .pt checkpoint, or from a model .yaml plus weights.safetensors.

Ultralytics' own exporter writes the graph (output [batch, 4 + classes, anchors]: cx, cy, w, h in input pixels,
then class scores; no NMS) and its metadata (names, imgsz, stride); we map that metadata to ours. Checkpoints are
read with ``weights_only=True`` (``ULTRALYTICS_SAFE_LOAD``), never unpickled freely.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.common import (
    ExportOptions,
    ModelDescription,
    ensure_empty_output,
    finish_onnx,
    load_weights_into,
    parity_inputs,
    state_dict_arrays,
    with_template,
    write_bundle,
)
from exporters.errors import ExportError
from exporters.ultralytics_env import prepare_ultralytics
from schemas.manifests import ArchitectureSpec, Framework, ModelManifest, Task, TemplateInput
from schemas.onnxmeta import read_metadata

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def load_yolo_checkpoint(checkpoint: Path) -> torch.nn.Module:
    """The DetectionModel of an Ultralytics .pt checkpoint, loaded with weights_only=True."""
    prepare_ultralytics()
    from ultralytics.nn.tasks import torch_safe_load

    if not checkpoint.is_file():
        raise ExportError(f"{checkpoint}: checkpoint not found")
    try:
        ckpt, _ = torch_safe_load(str(checkpoint), safe_only=True)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise ExportError(f"{checkpoint}: not a loadable Ultralytics checkpoint: {exc}") from None
    net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if net is None or not hasattr(net, "yaml"):
        raise ExportError(
            f"{checkpoint}: holds no Ultralytics model (keys: {sorted(ckpt) if isinstance(ckpt, dict) else '-'})"
        )
    if getattr(net, "task", "detect") != "detect" and type(net).__name__ != "DetectionModel":
        raise ExportError(f"{checkpoint}: is a {type(net).__name__}, only detection models are served")
    loaded: torch.nn.Module = net.float().eval()
    return loaded


def build_yolo(cfg: str | Path, classes: Sequence[str], channels: int = 3) -> torch.nn.Module:
    """An untrained DetectionModel from a model .yaml (e.g. 'yolov8n.yaml') with len(classes) classes."""
    prepare_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    try:
        net = DetectionModel(str(cfg), ch=channels, nc=len(classes), verbose=False)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise ExportError(f"{cfg}: cannot build an Ultralytics model: {exc}") from None
    net.names = dict(enumerate(classes))
    built: torch.nn.Module = net.eval()
    return built


def load_yolo_weights(cfg: str | Path, weights: Path, classes: Sequence[str], channels: int = 3) -> torch.nn.Module:
    """A DetectionModel from a model .yaml and a weights.safetensors of its state dict (strict)."""
    net = build_yolo(cfg, classes, channels)
    load_weights_into(net, weights, fits=f"{cfg} with {len(classes)} classes")
    return net.eval()


def yolo_architecture(net: torch.nn.Module) -> ArchitectureSpec:
    yaml: dict[str, Any] = getattr(net, "yaml", {}) or {}
    return ArchitectureSpec(
        framework=Framework.ULTRALYTICS,
        name=str(yaml.get("yaml_file") or "custom.yaml"),
        params={"nc": int(yaml.get("nc", len(getattr(net, "names", {})))), "channels": int(yaml.get("channels", 3))},
    )


def export_yolo(
    net: torch.nn.Module,
    out_dir: Path,
    *,
    name: str,
    imgsz: int = 640,
    version: int = 0,
    parent: int | None = None,
    metrics: dict[str, float] | None = None,
    options: ExportOptions | None = None,
    template: TemplateInput = TemplateInput.NONE,
) -> ModelManifest:
    """Export a DetectionModel to a model bundle in ``out_dir`` with Ultralytics' ONNX exporter.

    ``template``: composite for a detector trained on golden-template comparisons (``reference_composite``)."""
    import onnx
    import torch

    prepare_ultralytics()
    from ultralytics import YOLO

    options = options or ExportOptions()
    out_dir = Path(out_dir)
    ensure_empty_output(out_dir)
    stride = int(max(getattr(net, "stride", torch.tensor([32])).tolist()))
    if imgsz % stride:
        raise ExportError(f"imgsz {imgsz} must be a multiple of the model stride {stride}")
    architecture = yolo_architecture(net)
    with tempfile.TemporaryDirectory(prefix="fedinspect-yolo-") as scratch:
        # Ultralytics writes the .onnx next to pt_path and reads task / args from the model.
        setattr(net, "pt_path", str(Path(scratch) / "model.pt"))  # noqa: B010
        setattr(net, "task", "detect")  # noqa: B010
        args = getattr(net, "args", None)
        setattr(net, "args", {**(args if isinstance(args, dict) else {}), "imgsz": imgsz, "data": None})  # noqa: B010
        wrapper = YOLO(architecture.name if architecture.name.endswith((".yaml", ".yml")) else "yolov8n.yaml")
        wrapper.model = net
        try:
            exported = wrapper.export(
                format="onnx",
                imgsz=imgsz,
                dynamic=True,
                simplify=options.simplify,
                opset=options.opset,
                half=False,
                device="cpu",
                verbose=False,
            )
        except Exception as exc:  # Ultralytics' exporter raises assorted types for unsupported models
            raise ExportError(f"Ultralytics ONNX export of {name} failed: {exc}") from exc
        model = onnx.load(str(exported))
    props = {prop.key: prop.value for prop in model.metadata_props}
    adopted = read_metadata(props, source=f"Ultralytics export of {name}", fallback_name=name)
    description = ModelDescription(
        name=name,
        task=Task.DETECT,
        classes=adopted.classes,
        input=with_template(adopted.input, template, model=name),
        architecture=architecture,
        version=version,
        parent=parent,
        metrics=metrics,
    )
    # Ultralytics already simplified the graph when asked; only fp16 and our metadata remain.
    model = finish_onnx(model, description, dataclasses.replace(options, simplify=False))
    if options.rtol is None and not options.fp16:
        # Box outputs are pixel coordinates up to imgsz: float32 kernels of ONNX Runtime and torch round them
        # differently by about 1e-4 of their value (measured 0.0118 px on a 256 px model), over 1e-4 + 1e-4 * |x|.
        options = dataclasses.replace(options, rtol=1e-3)
    inputs = parity_inputs(adopted.input, options.parity_batch)
    with torch.no_grad():
        reference = net(torch.from_numpy(inputs))
    if isinstance(reference, tuple | list):
        reference = reference[0]
    return write_bundle(
        out_dir,
        model,
        description=description,
        options=options,
        weights=state_dict_arrays(net),
        parity=(inputs, [np.asarray(reference.numpy())]),
    )
