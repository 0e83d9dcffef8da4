"""The template-crops network and its export: one crop of a candidate in, what it is and where out.

The edge finds candidates where an image differs from its golden template (``edge.inference.proposals``); this
network looks at each candidate's crop of the composite (image, template, difference) and answers with the
probability of background (alignment noise, dust) and of each defect class, and the defect's box inside the crop
(0-1 across it, allowed to reach half a crop beyond it). Small (about 0.3 M parameters, 48 px crops), so it trains
on a CPU in minutes and federated rounds move little data.

The ONNX file takes ``crops`` [N, 3, S, S] (the composite's channels, scaled as the input spec says) and gives
``scores`` [N, 1 + classes] (probabilities, background first) and ``boxes`` [N, 4] x1 y1 x2 y2 in crop units.
Its architecture spec (``TEMPLATE_CROPS_ARCHITECTURE``) carries the ``ProposalSpec``, so the file describes itself.

The same network serves two tasks. A detector (``export_crop_detector``) names each candidate's defect class. A
classifier (``export_crop_classifier``) has one defect class: a board is as defective as its most defect-like
candidate (``edge.inference.classifier.CropClassifier``), so it learns from good / defective verdicts alone
(``edge.training.crop_classifier``) and its box output is unused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporters.common import (
    ExportOptions,
    ModelDescription,
    ensure_empty_output,
    finish_onnx,
    state_dict_arrays,
    write_bundle,
)
from exporters.errors import ExportError
from schemas.manifests import (
    CROP_BASE_WIDTH_PARAM,
    CROP_DEFECT_CLASS_PARAM,
    TEMPLATE_CROPS_ARCHITECTURE,
    ArchitectureSpec,
    ColorMode,
    Framework,
    InputSpec,
    ModelManifest,
    ProposalSpec,
    ResizeMode,
    Task,
    TemplateInput,
)
from schemas.onnxmeta import ScoreKind

if TYPE_CHECKING:
    import torch

BASE_WIDTH = 32
"""Channels of the network's first stage; the second and third have twice and four times as many (two 3x3
convolutions each, halving the crop between stages). Half as wide is a quarter of the work (the architecture's
``CROP_BASE_WIDTH_PARAM``)."""
MIN_CROP_WIDTH, MAX_CROP_WIDTH = 4, 256
"""The base widths a rebuilt network may have (a manifest's value is bounded before anything is allocated)."""
BOX_REACH = 0.5
"""How far beyond its crop (in crop widths) a predicted box edge may lie."""


def crop_input_spec(spec: ProposalSpec) -> InputSpec:
    """The input spec of a crop: the composite's three channels as they are, scaled to 0-1."""
    return InputSpec(
        width=spec.crop_px,
        height=spec.crop_px,
        channels=3,
        color=ColorMode.BGR,
        resize=ResizeMode.RESIZE,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        template=TemplateInput.COMPOSITE,
    )


def crop_architecture(
    num_classes: int, spec: ProposalSpec, *, base_width: int = BASE_WIDTH, defect_class: str | None = None
) -> ArchitectureSpec:
    """The architecture of a crop network of ``num_classes`` defect classes and ``base_width``; a classifier's names
    its defect class (``CROP_DEFECT_CLASS_PARAM``), the verdict its most defect-like candidate gives the board."""
    params: dict[str, int | float | str | bool | None] = {
        "num_classes": num_classes,
        CROP_BASE_WIDTH_PARAM: base_width,
        **spec.model_dump(),
    }
    if defect_class is not None:
        params[CROP_DEFECT_CLASS_PARAM] = defect_class
    return ArchitectureSpec(framework=Framework.PYTORCH, name=TEMPLATE_CROPS_ARCHITECTURE, params=params)


def build_crop_net(num_classes: int, base_width: int = BASE_WIDTH) -> torch.nn.Module:
    """A fresh network for ``num_classes`` defect classes (plus background), ``base_width`` channels wide at first."""
    import torch
    from torch import nn

    def block(inputs: int, outputs: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU())

    class CropNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = 3
            widths = (base_width, 2 * base_width, 4 * base_width)
            for index, width in enumerate(widths):
                layers += [block(channels, width), block(width, width)]
                if index < len(widths) - 1:
                    layers.append(nn.MaxPool2d(2))
                channels = width
            layers += [nn.MaxPool2d(2), block(channels, channels), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            self.features = nn.Sequential(*layers)
            self.classes = nn.Linear(channels, num_classes + 1)
            self.box = nn.Linear(channels, 4)

        def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Training form: background-first class logits and boxes in crop units."""
            features = self.features(crops)
            return self.classes(features), torch.sigmoid(self.box(features)) * (1 + 2 * BOX_REACH) - BOX_REACH

    return CropNet()


def crop_base_width(net: torch.nn.Module) -> int:
    """The first stage's channels of a ``build_crop_net`` network."""
    return int(net.features[0][0].out_channels)  # type: ignore[index,union-attr]


def served_module(net: torch.nn.Module) -> torch.nn.Module:
    """The network as exported: class probabilities instead of logits (what the edge reads)."""
    import torch

    class Served(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, boxes = self.net(crops)
            return torch.softmax(logits, dim=1), boxes

    return Served()


def export_crop_detector(
    net: torch.nn.Module,
    out_dir: Path,
    *,
    name: str,
    classes: Sequence[str],
    spec: ProposalSpec,
    version: int = 0,
    parent: int | None = None,
    metrics: dict[str, float] | None = None,
    options: ExportOptions | None = None,
) -> ModelManifest:
    """Export a crop network into a detector bundle in ``out_dir`` (parity-checked against torch)."""
    description = ModelDescription(
        name=name,
        task=Task.DETECT,
        classes=list(classes),
        input=crop_input_spec(spec),
        architecture=crop_architecture(len(classes), spec, base_width=crop_base_width(net)),
        version=version,
        parent=parent,
        scores=ScoreKind.PROBABILITIES,
        metrics=metrics,
    )
    return _export(net, out_dir, description, spec, len(classes), options or ExportOptions())


def export_crop_classifier(
    net: torch.nn.Module,
    out_dir: Path,
    *,
    name: str,
    classes: Sequence[str],
    defect_class: str,
    spec: ProposalSpec,
    version: int = 0,
    parent: int | None = None,
    metrics: dict[str, float] | None = None,
    options: ExportOptions | None = None,
) -> ModelManifest:
    """Export a crop network of one defect class into a classifier bundle in ``out_dir``: ``classes`` are the good
    class and ``defect_class``, the verdict a board gets from its most defect-like candidate."""
    classes = list(classes)
    if len(classes) != 2 or defect_class not in classes:
        raise ExportError(
            f"a template-crops classifier has two classes, a good one and its defect class {defect_class!r}; got "
            f"{classes}"
        )
    description = ModelDescription(
        name=name,
        task=Task.CLASSIFY,
        classes=classes,
        input=crop_input_spec(spec),
        architecture=crop_architecture(1, spec, base_width=crop_base_width(net), defect_class=defect_class),
        version=version,
        parent=parent,
        scores=ScoreKind.PROBABILITIES,
        metrics=metrics,
    )
    return _export(net, out_dir, description, spec, 1, options or ExportOptions())


def _export(
    net: torch.nn.Module,
    out_dir: Path,
    description: ModelDescription,
    spec: ProposalSpec,
    defect_classes: int,
    options: ExportOptions,
) -> ModelManifest:
    import io
    import warnings

    import onnx
    import torch

    out_dir = Path(out_dir)
    ensure_empty_output(out_dir)
    net = net.eval().cpu()
    served = served_module(net).eval()
    rng = np.random.default_rng(20261201)
    inputs = rng.random((options.parity_batch, 3, spec.crop_px, spec.crop_px), dtype=np.float32)
    with torch.no_grad():
        probabilities, boxes = served(torch.from_numpy(inputs))
    if probabilities.shape[1] != defect_classes + 1:
        raise ExportError(
            f"the crop network has {probabilities.shape[1] - 1} defect classes, the model line {defect_classes}"
        )
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notices for the classic exporter
        try:
            torch.onnx.export(
                served,
                (torch.from_numpy(inputs),),
                buffer,  # type: ignore[arg-type]
                input_names=["crops"],
                output_names=["scores", "boxes"],
                opset_version=options.opset,
                dynamo=False,
                dynamic_axes={"crops": {0: "crops"}, "scores": {0: "crops"}, "boxes": {0: "crops"}},
            )
        except Exception as exc:
            raise ExportError(
                f"torch.onnx.export failed for the template-crops {description.task.value} model {description.name}: "
                f"{exc}"
            ) from exc
    model = finish_onnx(onnx.load_from_string(buffer.getvalue()), description, options)
    return write_bundle(
        out_dir,
        model,
        description=description,
        options=options,
        weights=state_dict_arrays(net),
        parity=(inputs, [probabilities.numpy(), boxes.numpy()]),
    )
