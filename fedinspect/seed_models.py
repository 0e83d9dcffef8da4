"""Version 0 of the model lines that the demo and the FL benchmark start from.

The classifier line starts untrained (the plants' labels train it), with ``pretrained`` from ImageNet weights
that an installed package carries (``exporters.pretrained``: MobileNetV2), or as an untrained template-crops
classifier (``initial_crop_classifier``: a board as defective as the most defect-like place where it differs from
its template); the detector starts either as an untrained
template-crops network (``initial_crop_detector``: names the places where a board differs from its template) or
from YOLOv8n trained a few epochs on generated boards (``seed_detector``), the way a plant would bootstrap from a
generic model before its own labels exist.
Nothing is downloaded: the architectures come from torchvision's and Ultralytics' own definitions.
"""

from __future__ import annotations

import time
from pathlib import Path

from schemas.manifests import ProposalSpec, TemplateInput

CLASSIFIER_CLASSES = ("good", "defective")


def initial_classifier(
    out_dir: Path,
    *,
    name: str,
    arch: str,
    size: int,
    seed: int,
    reference: bool = False,
    pretrained: bool = False,
    channels: int = 1,
) -> Path:
    """A torchvision classifier (good / defective) exported as a bundle in ``out_dir``: untrained, or with
    ``pretrained`` an ImageNet backbone from an installed package and a new head (its origin in the manifest).
    ``channels`` inputs (1 or 3); with ``reference`` a classifier of template comparisons (``reference_composite``,
    3 channels; input template 'composite'), like the detector of ``seed_detector``."""
    import torch

    from exporters.common import with_template
    from exporters.pretrained import build_pretrained_classifier
    from exporters.torch_classifier import (
        build_torchvision_classifier,
        classifier_input_spec,
        export_torch_classifier,
        torchvision_architecture,
    )

    channels = 3 if reference else channels
    template = TemplateInput.COMPOSITE if reference else TemplateInput.NONE
    torch.manual_seed(seed)
    classes = len(CLASSIFIER_CLASSES)
    if pretrained:
        net, origin = build_pretrained_classifier(arch, classes, channels)
    else:
        net, origin = build_torchvision_classifier(arch, classes, channels), None
    export_torch_classifier(
        net,
        out_dir,
        name=name,
        classes=list(CLASSIFIER_CLASSES),
        input_spec=with_template(classifier_input_spec(size, channels), template, model=name),
        architecture=torchvision_architecture(arch, classes, channels, pretrained=origin),
    )
    return out_dir


def initial_crop_detector(
    out_dir: Path,
    *,
    name: str,
    classes: tuple[str, ...],
    seed: int,
    spec: ProposalSpec | None = None,
    base_width: int | None = None,
) -> Path:
    """An untrained template-crops detector (``exporters.crop_detector``; ``spec`` the proposal step, default
    ``ProposalSpec()``, set for DeepPCB's 640 px boards) exported as a bundle in ``out_dir``; it compares every
    board with its template."""
    import torch

    from exporters.crop_detector import BASE_WIDTH, build_crop_net, export_crop_detector

    torch.manual_seed(seed)
    net = build_crop_net(len(classes), base_width or BASE_WIDTH)
    export_crop_detector(net, out_dir, name=name, classes=classes, spec=spec or ProposalSpec())
    return out_dir


def initial_crop_classifier(
    out_dir: Path, *, name: str, seed: int, spec: ProposalSpec | None = None, base_width: int | None = None
) -> Path:
    """An untrained template-crops classifier (``exporters.crop_detector.export_crop_classifier``; ``spec`` as for
    ``initial_crop_detector``): a board is as defective as its most defect-like candidate."""
    import torch

    from exporters.crop_detector import BASE_WIDTH, build_crop_net, export_crop_classifier

    torch.manual_seed(seed)
    export_crop_classifier(
        build_crop_net(1, base_width or BASE_WIDTH),
        out_dir,
        name=name,
        classes=CLASSIFIER_CLASSES,
        defect_class=CLASSIFIER_CLASSES[1],
        spec=spec or ProposalSpec(),
    )
    return out_dir


def seed_detector(
    work_dir: Path,
    out_dir: Path,
    *,
    name: str,
    classes: tuple[str, ...],
    size: int,
    epochs: int,
    seed: int,
    threads: int,
    boards: int = 40,
    device: str = "cpu",
    reference: bool = False,
) -> tuple[Path, float]:
    """YOLOv8n trained ``epochs`` epochs on ``boards`` generated boards (templates and defective copies) at ``size``
    px, exported as a bundle in ``out_dir``; 0 epochs exports it untrained. ``reference``: a detector of template
    comparisons (``reference_composite``; input template 'composite'), trained on them, as the detector it seeds
    will be. Returns the bundle and the seconds spent.
    """
    from edge.training.dataset import write_data_yaml, write_yolo_sample
    from exporters.yolo import build_yolo, export_yolo, load_yolo_checkpoint
    from fedinspect.demo_data import synthetic_plants

    template = TemplateInput.COMPOSITE if reference else TemplateInput.NONE
    started = time.monotonic()
    if epochs == 0:
        export_yolo(build_yolo("yolov8n.yaml", classes), out_dir, name=name, imgsz=size, template=template)
        return out_dir, time.monotonic() - started
    seed_root = work_dir / "detector-seed"
    generated = synthetic_plants(
        1, train_boards=boards, test_boards=6, size=size, seed=seed + 1000, reference=reference
    )
    for split, images in (("train", generated.plants[0].train), ("val", generated.plants[0].test)):
        for item in images:
            write_yolo_sample(seed_root, split, item.name, item.model_input(), item.boxes)
    last = train_yolov8n(
        write_data_yaml(seed_root, classes),
        work_dir,
        epochs=epochs,
        imgsz=size,
        seed=seed,
        threads=threads,
        device=device,
    )
    export_yolo(load_yolo_checkpoint(last), out_dir, name=name, imgsz=size, template=template)
    return out_dir, time.monotonic() - started


def train_yolov8n(
    data_yaml: Path,
    work_dir: Path,
    *,
    epochs: int,
    imgsz: int,
    seed: int,
    threads: int,
    device: str = "cpu",
    **overrides: object,
) -> Path:
    """YOLOv8n from scratch on a YOLO dataset, offline and deterministic (CPU unless ``device``); returns last.pt.

    ``overrides`` go to Ultralytics' train() (e.g. warmup_epochs). No validation or plots: callers score
    the exported model themselves.
    """
    from exporters.ultralytics_env import prepare_ultralytics, unvalidated_detection_trainer

    prepare_ultralytics(work_dir / "ultralytics", threads=threads)
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.train(
        trainer=unvalidated_detection_trainer(),
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=8,
        workers=0,
        device=device,
        project=str(work_dir / "runs"),
        name="yolov8n",
        exist_ok=True,
        plots=False,
        verbose=False,
        amp=False,
        val=False,
        seed=seed,
        deterministic=True,
        # Ultralytics warms up for max(3 epochs, 100 batches): a seed set of a few dozen images would spend most
        # of its epochs warming up
        warmup_epochs=0,
        **overrides,
    )
    return Path(model.trainer.last)
