"""Small real models trained in the test session: a torch CNN classifier, a YOLO detector and (in a separate
process) Keras classifiers, on generated data. Built once per session by the fixtures in tests/conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

CLASSIFIER_SIZE = 64
DETECTOR_SIZE = 160
DETECTOR_CLASSES = ("rect", "ellipse")
KERAS_TIMEOUT_S = 600


def small_cnn(channels: int = 1, classes: int = 2) -> torch.nn.Module:
    """A plain nn.Module classifier (not torchvision): the 'any nn.Module' path of the exporter."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    )


@dataclass(frozen=True)
class TrainedClassifier:
    module: torch.nn.Module
    images: np.ndarray
    """Held-out grayscale uint8 images (N, H, W)."""
    labels: np.ndarray
    accuracy: float


def blob_samples(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy dark fields (good) and the same with a bright blob somewhere (defective), balanced."""
    import cv2

    rng = np.random.default_rng(seed)
    size = CLASSIFIER_SIZE
    images = rng.normal(40, 12, (count, size, size)).clip(0, 255).astype(np.uint8)
    labels = np.arange(count) % 2
    for image, label in zip(images, labels, strict=True):
        if label:
            x, y = (int(v) for v in rng.integers(8, size - 8, 2))
            cv2.circle(image, (x, y), int(rng.integers(3, 8)), int(rng.integers(150, 255)), -1)
    return images, labels.astype(np.int64)


def train_classifier(epochs: int = 6, seed: int = 0) -> TrainedClassifier:
    """small_cnn trained on generated good / defective fields; accuracy on a held-out set included."""
    import torch

    torch.manual_seed(seed)
    images, labels = blob_samples(192, seed=seed)
    x = torch.from_numpy(images[:, None].astype(np.float32) / 255.0)
    x = (x - 0.449) / 0.226
    y = torch.from_numpy(labels)
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    train, held_out = slice(0, 160), slice(160, 192)
    for _ in range(epochs):
        model.train()
        for start in range(0, 160, 32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[train][start : start + 32]), y[train][start : start + 32])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[held_out]).argmax(1) == y[held_out]).float().mean())
    return TrainedClassifier(model, images[held_out], labels[held_out], accuracy)


def shapes_samples(count: int, seed: int = 0) -> list[tuple[np.ndarray, list[tuple[int, int, int, int, int]]]]:
    """Large bright rectangles (class 0) and ellipses (class 1) on a dark field, with their (class, x1, y1, x2, y2)."""
    import cv2

    rng = np.random.default_rng(seed)
    size = DETECTOR_SIZE
    samples = []
    for _ in range(count):
        image = np.full((size, size), 20, np.uint8)
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            kind = int(rng.integers(0, 2))
            w, h = (int(v) for v in rng.integers(30, 60, 2))
            x, y = (int(v) for v in rng.integers(0, size - 60, 2))
            if kind == 0:
                cv2.rectangle(image, (x, y), (x + w, y + h), 230, -1)
            else:
                cv2.ellipse(image, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 230, -1)
            boxes.append((kind, x, y, x + w, y + h))
        samples.append((image, boxes))
    return samples


def write_shapes_dataset(root: Path, *, train: int = 48, val: int = 8, seed: int = 0) -> Path:
    """A YOLO dataset of ``shapes_samples``: learnable by YOLO in a few dozen epochs."""
    from edge.training.dataset import write_data_yaml, write_yolo_sample

    samples = shapes_samples(train + val, seed)
    for index, (image, boxes) in enumerate(samples[:train]):
        write_yolo_sample(root, "train", str(index), image, boxes)
    for index, (image, boxes) in enumerate(samples[train:]):
        write_yolo_sample(root, "val", str(index), image, boxes)
    return write_data_yaml(root, DETECTOR_CLASSES)


def train_yolo(work: Path, epochs: int = 30) -> Path:
    """yolov8n trained from scratch on the shapes dataset; returns last.pt.

    One or two epochs leave YOLO's outputs independent of the input (the head's prior bias dominates), which
    would make box-level comparisons meaningless, so the fixture trains long enough to find the shapes.
    """
    from fedinspect.seed_models import train_yolov8n

    data = write_shapes_dataset(work / "shapes")
    return train_yolov8n(data, work, epochs=epochs, imgsz=DETECTOR_SIZE, seed=0, threads=os.cpu_count() or 1)


def build_keras_models(out_dir: Path) -> Path:
    """Run tests.support.keras_models in its own process (TensorFlow must not share a process with torch)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    completed = subprocess.run(
        [sys.executable, "-m", "tests.support.keras_models", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=KERAS_TIMEOUT_S,
        env=env,
        check=False,
        cwd=root,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"building the Keras test models failed:\n{completed.stderr[-3000:]}")
    return out_dir


CROP_CLASSES = ("copper", "pin-hole")


def board_pairs(
    count: int, seed: int = 0, size: int = 160, *, specks: int = 0
) -> list[tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int, int]]]]:
    """Binarized boards (image, template, boxes): copper tracks on white, and on every other board one to three
    defects the template lacks: a blob of extra copper (class 0) or a hole punched into a track (class 1). The
    image is its template moved by one pixel, so the difference also traces every track edge (alignment noise the
    proposal step must drop). Boxes are (class, x1, y1, x2, y2), 12 px beyond the defect on every side.
    ``specks``: that many 3 px squares of the other colour on every image, unlabeled (scanner dust: candidates the
    proposal step keeps and a model must learn to dismiss)."""
    import cv2

    rng = np.random.default_rng(seed)
    dust = np.random.default_rng(seed + 7919)  # its own stream: the boards stay those of ``specks=0``
    pairs = []
    for index in range(count):
        template = np.full((size, size), 255, np.uint8)
        for row in range(10, size - 10, 24):
            cv2.rectangle(template, (8, row), (size - 8, row + 10), 0, -1)
        image = np.roll(template, 1, axis=1).copy()
        boxes: list[tuple[int, int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 4)) if index % 2 else 0):
            kind = int(rng.integers(0, 2))
            row = 10 + 24 * int(rng.integers(0, (size - 20) // 24))
            x = int(rng.integers(20, size - 30))
            if kind == 0:  # extra copper between two tracks
                cx, cy = x, row + 17
                cv2.circle(image, (cx, cy), 5, 0, -1)
            else:  # a hole in a track
                cx, cy = x, row + 5
                cv2.rectangle(image, (cx - 3, cy - 3), (cx + 3, cy + 3), 255, -1)
            if any(abs(cx - (b[1] + b[3]) // 2) < 30 and abs(cy - (b[2] + b[4]) // 2) < 20 for b in boxes):
                continue
            boxes.append((kind, cx - 17, cy - 17, cx + 17, cy + 17))
        for _ in range(specks):
            x, y = (int(v) for v in dust.integers(4, size - 8, 2))
            image[y : y + 3, x : x + 3] = 255 - image[y + 1, x + 1]
        pairs.append((image, template, boxes))
    return pairs


def small_classifier_bundle(
    directory: Path, name: str = "pcb-classifier", *, size: int = 64, seed: int | None = None
) -> Path:
    """A random-weight mobilenet_v3_small classifier (``size`` px, one channel; torch seeded with ``seed`` first
    where given) exported as a bundle with model.onnx: a line that serves ONNX, so the hub exports every later
    version of it."""
    import torch

    from exporters.torch_classifier import (
        build_torchvision_classifier,
        classifier_input_spec,
        export_torch_classifier,
        torchvision_architecture,
    )

    if seed is not None:
        torch.manual_seed(seed)
    export_torch_classifier(
        build_torchvision_classifier("mobilenet_v3_small", 2, 1),
        directory,
        name=name,
        classes=["good", "defective"],
        input_spec=classifier_input_spec(size, 1),
        architecture=torchvision_architecture("mobilenet_v3_small", 2, 1),
    )
    return directory


def crop_model_bundle(out: Path, *, task: str, crop_px: int | None = None) -> Path:
    """An untrained template-crops bundle (seeded): a classifier of good/defective or a detector of
    ``CROP_CLASSES``; ``crop_px`` smaller than the default 48 px costs less CPU in training tests."""
    import torch

    from exporters.crop_detector import build_crop_net, export_crop_classifier, export_crop_detector
    from schemas.manifests import ProposalSpec

    torch.manual_seed(0)
    spec = ProposalSpec() if crop_px is None else ProposalSpec(crop_px=crop_px)
    if task == "classify":
        export_crop_classifier(
            build_crop_net(1),
            out,
            name="pcb-classifier",
            classes=("good", "defective"),
            defect_class="defective",
            spec=spec,
        )
    else:
        export_crop_detector(
            build_crop_net(len(CROP_CLASSES)), out, name="pcb-detector", classes=CROP_CLASSES, spec=spec
        )
    return out


def assert_same_onnx_outputs(original: Path, rebuilt: Path, crops: np.ndarray, cache_dir: Path) -> list[np.ndarray]:
    """The two bundles' ONNX models answer ``crops`` alike (1e-6); returns the original's outputs."""
    from edge.inference.sessions import load_model
    from schemas.config import InferenceConfig

    first, second = (
        load_model(folder / "model.onnx", InferenceConfig(), cache_dir=cache_dir).session.run(None, {"crops": crops})
        for folder in (original, rebuilt)
    )
    for before, after in zip(first, second, strict=True):
        np.testing.assert_allclose(before, after, atol=1e-6)
    return list(first)
