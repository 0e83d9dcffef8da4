"""PyTorch classifiers to ONNX: any nn.Module, plus ready torchvision constructors (mobilenet_v3_small, resnet18,
mobilenet_v2; ``exporters.pretrained`` starts mobilenet_v2 from packaged ImageNet weights).

The ONNX file is self-contained (weights inside, no ``.onnx.data`` side file) with a dynamic batch axis. The
torchvision constructors adapt the first convolution to 1 or 3 input channels and the head to N classes, so the
manifest's architecture spec is enough to rebuild the trainable model from ``weights.safetensors``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.common import (
    ExportOptions,
    ModelDescription,
    ensure_empty_output,
    finish_onnx,
    parity_inputs,
    state_dict_arrays,
    write_bundle,
)
from exporters.errors import ExportError
from schemas.manifests import (
    ArchitectureSpec,
    ColorMode,
    Framework,
    InputSpec,
    ModelManifest,
    PretrainedOrigin,
    ResizeMode,
    Task,
)

if TYPE_CHECKING:
    import torch

TORCHVISION_ARCHITECTURES = ("mobilenet_v3_small", "resnet18", "mobilenet_v2")
HEAD_PREFIXES: dict[str, tuple[str, ...]] = {
    "mobilenet_v3_small": ("classifier.",),
    "resnet18": ("fc.",),
    "mobilenet_v2": ("classifier.",),
}
"""State-dict prefixes of each architecture's classifier head; everything else is the backbone."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classifier_input_spec(size: int, channels: int) -> InputSpec:
    """The input spec of the ready classifiers: resize to size x size, ImageNet normalization (gray: its mean)."""
    if channels == 1:
        return InputSpec(
            width=size,
            height=size,
            channels=1,
            color=ColorMode.GRAY,
            resize=ResizeMode.RESIZE,
            mean=(float(np.mean(IMAGENET_MEAN)),),
            std=(float(np.mean(IMAGENET_STD)),),
        )
    return InputSpec(
        width=size,
        height=size,
        channels=3,
        color=ColorMode.RGB,
        resize=ResizeMode.RESIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def build_torchvision_classifier(architecture: str, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """An untrained torchvision classifier with ``num_classes`` outputs and ``in_channels`` (1 or 3) inputs."""
    import torch
    import torchvision

    if architecture not in TORCHVISION_ARCHITECTURES:
        raise ExportError(
            f"unknown architecture {architecture!r}; choose one of {', '.join(TORCHVISION_ARCHITECTURES)}"
        )
    if in_channels not in (1, 3):
        raise ExportError(f"in_channels must be 1 or 3, got {in_channels}")
    if num_classes < 2:
        raise ExportError(f"a classifier needs at least 2 classes, got {num_classes}")
    model: Any = getattr(torchvision.models, architecture)(weights=None, num_classes=num_classes)
    if in_channels == 1:
        first = model.conv1 if architecture == "resnet18" else model.features[0][0]
        single = torch.nn.Conv2d(
            1,
            first.out_channels,
            kernel_size=first.kernel_size,
            stride=first.stride,
            padding=first.padding,
            bias=first.bias is not None,
        )
        if architecture == "resnet18":
            model.conv1 = single
        else:
            model.features[0][0] = single
    built: torch.nn.Module = model
    return built


def head_prefixes(architecture: ArchitectureSpec) -> tuple[str, ...]:
    """State-dict prefixes of the classifier head of a torchvision architecture; ``ExportError`` for any other."""
    short = architecture.name.removeprefix("torchvision.")
    if architecture.framework != Framework.PYTORCH or short not in HEAD_PREFIXES:
        raise ExportError(
            f"{architecture.framework.value} architecture {architecture.name!r} has no known classifier head "
            f"(known: torchvision.{', torchvision.'.join(HEAD_PREFIXES)})"
        )
    return HEAD_PREFIXES[short]


def torchvision_architecture(
    architecture: str, num_classes: int, in_channels: int, *, pretrained: PretrainedOrigin | None = None
) -> ArchitectureSpec:
    """The manifest's architecture spec of a torchvision classifier; ``pretrained`` records its starting weights."""
    return ArchitectureSpec(
        framework=Framework.PYTORCH,
        name=f"torchvision.{architecture}",
        params={"num_classes": num_classes, "in_channels": in_channels},
        pretrained=pretrained,
    )


def export_torch_classifier(
    module: torch.nn.Module,
    out_dir: Path,
    *,
    name: str,
    classes: Sequence[str],
    input_spec: InputSpec,
    architecture: ArchitectureSpec | None = None,
    version: int = 0,
    parent: int | None = None,
    metrics: dict[str, float] | None = None,
    options: ExportOptions | None = None,
    exporter: str = "torchscript",
    parity_input: np.ndarray | None = None,
) -> ModelManifest:
    """Export an nn.Module classifier (logits out) to a model bundle in ``out_dir``.

    ``exporter`` is "torchscript" (torch's classic ONNX exporter: fast) or "dynamo" (torch.export based).
    ``parity_input``: preprocessed images for the parity check instead of seeded noise (a model whose BatchNorm
    statistics fit a narrow range of real images turns noise into huge logits, where float rounding exceeds any
    fixed tolerance).
    """
    import onnx
    import torch

    options = options or ExportOptions()
    out_dir = Path(out_dir)
    ensure_empty_output(out_dir)
    if input_spec.layout != "NCHW":
        raise ExportError(f"PyTorch models take NCHW input, the input spec says {input_spec.layout}")
    description = ModelDescription(
        name=name,
        task=Task.CLASSIFY,
        classes=list(classes),
        input=input_spec,
        architecture=architecture
        or ArchitectureSpec(framework=Framework.PYTORCH, name=type(module).__qualname__, params={}),
        version=version,
        parent=parent,
        metrics=metrics,
    )
    module = module.eval().cpu()
    inputs = parity_inputs(input_spec, options.parity_batch) if parity_input is None else parity_input
    with torch.no_grad():
        reference = module(torch.from_numpy(inputs))
    if not isinstance(reference, torch.Tensor) or reference.ndim != 2 or reference.shape[1] != len(classes):
        shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
        raise ExportError(
            f"the module must return [batch, {len(classes)}] logits for {len(classes)} classes, got {shape}"
        )
    model = onnx.load_from_string(_to_onnx_bytes(module, inputs, options.opset, exporter))
    model = finish_onnx(model, description, options)
    return write_bundle(
        out_dir,
        model,
        description=description,
        options=options,
        weights=state_dict_arrays(module),
        parity=(inputs, [reference.numpy()]),
    )


def _to_onnx_bytes(module: torch.nn.Module, inputs: np.ndarray, opset: int, exporter: str) -> bytes:
    import torch

    example = (torch.from_numpy(inputs),)
    buffer = io.BytesIO()
    kwargs: dict[str, Any]
    if exporter == "torchscript":
        kwargs = {"dynamo": False, "dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}}
    elif exporter == "dynamo":
        kwargs = {
            "dynamo": True,
            "external_data": False,
            "dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=4096)},),
        }
    else:
        raise ExportError(f"unknown torch exporter {exporter!r}; use 'torchscript' or 'dynamo'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notices for the classic exporter
        try:
            if exporter == "dynamo":
                program = torch.onnx.export(
                    module, example, input_names=["images"], output_names=["logits"], opset_version=opset, **kwargs
                )
                if program is None:
                    raise ExportError("torch.onnx.export (dynamo) returned no program")
                return bytes(program.model_proto.SerializeToString())
            # The classic exporter writes to file-like objects too; torch's annotation only names paths.
            torch.onnx.export(
                module,
                example,
                buffer,  # type: ignore[arg-type]
                input_names=["images"],
                output_names=["logits"],
                opset_version=opset,
                **kwargs,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {type(module).__qualname__}: {exc}") from exc
    return buffer.getvalue()
