"""Rebuild a trainable model from a manifest's architecture spec plus weights, and export it to ONNX.

This is how the hub gets a ``model.onnx`` for every aggregated global version: the manifest names the
architecture (``torchvision.mobilenet_v3_small`` with num_classes / in_channels, or an Ultralytics model .yaml with
nc / channels), ``weights.safetensors`` holds the state, and the usual exporter (with its parity check) does the
rest. A line that started from packaged ImageNet weights (``architecture.pretrained``) rebuilds the same way: its
weights are in the bundle, so the package that carried them (``exporters.pretrained``) is never imported here.

Run as ``python -m exporters.rebuild '<json request>'`` so torch never loads into the hub process; it prints the
exported manifest as JSON on its last stdout line, or ``error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from exporters.child import run_worker
from exporters.common import ExportOptions, load_weights_into
from exporters.errors import ExportError
from runtime.processes import die_with_parent
from schemas.manifests import (
    CROP_DEFECT_CLASS_PARAM,
    TEMPLATE_CROPS_ARCHITECTURE,
    Framework,
    ModelManifest,
    ProposalSpec,
    Task,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

EXIT_EXPORT_FAILED = 2
TORCHVISION_PREFIX = "torchvision."


def rebuild_module(manifest: ModelManifest, weights: Path) -> torch.nn.Module:
    """The trainable torch module of a model line, built from the manifest's architecture and loaded with weights."""
    architecture = manifest.architecture
    params = architecture.params
    if architecture.framework == Framework.PYTORCH and architecture.name.startswith(TORCHVISION_PREFIX):
        from exporters.torch_classifier import build_torchvision_classifier

        # random initialization, then every tensor from the bundle: a pretrained line needs no weights package here
        net = build_torchvision_classifier(
            architecture.name.removeprefix(TORCHVISION_PREFIX),
            int(params.get("num_classes") or len(manifest.classes)),
            int(params.get("in_channels") or manifest.input.channels),
        )
        load_weights_into(net, weights, fits=architecture.name)
        return net
    if architecture.framework == Framework.PYTORCH and architecture.name == TEMPLATE_CROPS_ARCHITECTURE:
        from exporters.crop_detector import BASE_WIDTH, MAX_CROP_WIDTH, MIN_CROP_WIDTH, build_crop_net
        from schemas.manifests import CROP_BASE_WIDTH_PARAM

        base_width = int(params.get(CROP_BASE_WIDTH_PARAM) or BASE_WIDTH)  # bundles before the parameter: 32
        if not MIN_CROP_WIDTH <= base_width <= MAX_CROP_WIDTH:  # a signed manifest is no bound on what it allocates
            raise ExportError(
                f"{manifest.name}: template-crops {CROP_BASE_WIDTH_PARAM} {base_width} is outside "
                f"{MIN_CROP_WIDTH}-{MAX_CROP_WIDTH}"
            )
        net = build_crop_net(int(params.get("num_classes") or len(manifest.classes)), base_width)
        load_weights_into(net, weights, fits=architecture.name)
        return net
    if architecture.framework == Framework.ULTRALYTICS:
        from exporters.yolo import load_yolo_weights

        return load_yolo_weights(
            architecture.name, weights, manifest.classes, int(params.get("channels") or manifest.input.channels)
        )
    from exporters.torch_classifier import TORCHVISION_ARCHITECTURES

    raise ExportError(
        f"{manifest.name}: {architecture.framework.value} architecture {architecture.name!r} cannot be rebuilt from "
        f"weights (supported: torchvision.{' / torchvision.'.join(TORCHVISION_ARCHITECTURES)}, "
        f"{TEMPLATE_CROPS_ARCHITECTURE} and Ultralytics .yaml models)"
    )


def rebuild_and_export(
    manifest: ModelManifest, weights: Path, out_dir: Path, *, parity_input: np.ndarray | None = None
) -> ModelManifest:
    """Export version ``manifest.version`` of a line from its weights into a bundle in ``out_dir``.

    ``parity_input`` (classifiers): preprocessed images for the parity check instead of seeded noise.
    """
    net = rebuild_module(manifest, weights)
    options = ExportOptions(fp16=bool(manifest.export and manifest.export.fp16))
    if manifest.architecture.framework == Framework.ULTRALYTICS:
        from exporters.yolo import export_yolo

        return export_yolo(
            net,
            out_dir,
            name=manifest.name,
            imgsz=manifest.input.width,
            options=options,
            version=manifest.version,
            parent=manifest.parent,
            metrics=dict(manifest.metrics),
            template=manifest.input.template,
        )
    if manifest.architecture.name == TEMPLATE_CROPS_ARCHITECTURE:
        from exporters.crop_detector import export_crop_classifier, export_crop_detector

        spec = ProposalSpec.from_params(manifest.architecture.params)
        if manifest.task == Task.CLASSIFY:
            defect_class = manifest.architecture.params.get(CROP_DEFECT_CLASS_PARAM)
            if not isinstance(defect_class, str):
                raise ExportError(f"{manifest.name}: a template-crops classifier names no {CROP_DEFECT_CLASS_PARAM}")
            return export_crop_classifier(
                net,
                out_dir,
                name=manifest.name,
                classes=manifest.classes,
                defect_class=defect_class,
                spec=spec,
                options=options,
                version=manifest.version,
                parent=manifest.parent,
                metrics=dict(manifest.metrics),
            )
        return export_crop_detector(
            net,
            out_dir,
            name=manifest.name,
            classes=manifest.classes,
            spec=spec,
            options=options,
            version=manifest.version,
            parent=manifest.parent,
            metrics=dict(manifest.metrics),
        )
    from exporters.torch_classifier import export_torch_classifier

    return export_torch_classifier(
        net,
        out_dir,
        name=manifest.name,
        classes=manifest.classes,
        input_spec=manifest.input,
        architecture=manifest.architecture,
        options=options,
        version=manifest.version,
        parent=manifest.parent,
        metrics=dict(manifest.metrics),
        parity_input=parity_input,
    )


def export_in_child(
    manifest: ModelManifest, weights: Path, out_dir: Path, *, timeout_s: float = 900, python: str | None = None
) -> ModelManifest:
    """``rebuild_and_export`` in a child process (torch stays out of the caller); ``ExportError`` on failure."""
    manifest_path = out_dir.with_name(f".{out_dir.name}.manifest.json")
    manifest_path.write_text(manifest.model_dump_json(), encoding="utf-8")
    try:
        result = run_worker(
            "exporters.rebuild",
            {"manifest": str(manifest_path), "weights": str(weights), "out_dir": str(out_dir)},
            what=f"ONNX export of {manifest.name} v{manifest.version}",
            timeout_s=timeout_s,
            python=python,
        )
    finally:
        manifest_path.unlink(missing_ok=True)
    return ModelManifest.model_validate(result)


def main(argv: list[str]) -> int:
    die_with_parent()  # an export that outlives its caller holds memory (and maybe a GPU) for nothing
    if len(argv) != 1:
        print("error: usage: python -m exporters.rebuild '<json request>'", file=sys.stderr)
        return EXIT_EXPORT_FAILED
    request = json.loads(argv[0])
    manifest = ModelManifest.model_validate_json(Path(request["manifest"]).read_bytes())
    try:
        exported = rebuild_and_export(manifest, Path(request["weights"]), Path(request["out_dir"]))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_EXPORT_FAILED
    print(exported.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
