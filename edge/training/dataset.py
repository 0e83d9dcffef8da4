"""Training data from the buffer: augmentation of images with their boxes, and YOLO datasets on disk.

Boxes are pixel corners (x1, y1, x2, y2) of the original image; every geometric change moves them with the
image so detector labels stay right.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.training.jobs import TrainingSample
from schemas.config import AugmentationConfig

log = logging.getLogger(__name__)

PixelBox = tuple[int, float, float, float, float]
"""(class index, x1, y1, x2, y2) in pixels."""


def pixel_boxes(sample: TrainingSample, classes: Sequence[str]) -> list[PixelBox]:
    """A labeled sample's boxes of known classes as (class index, x1, y1, x2, y2); an unknown class is logged and
    skipped."""
    boxes: list[PixelBox] = []
    for box in sample.boxes:
        name = str(box.get("class_name"))
        if name not in classes:
            log.warning("label box of an unknown class skipped", extra={"sample_id": sample.sample_id, "class": name})
            continue
        boxes.append((classes.index(name), float(box["x1"]), float(box["y1"]), float(box["x2"]), float(box["y2"])))
    return boxes


def rotate90(image: np.ndarray, boxes: Sequence[PixelBox], turns: int) -> tuple[np.ndarray, list[PixelBox]]:
    """Rotate counter-clockwise by ``turns`` quarter turns (np.rot90's direction), boxes included."""
    turns %= 4
    rotated = list(boxes)
    for _ in range(turns):
        width = image.shape[1]
        rotated = [(kind, y1, width - x2, y2, width - x1) for kind, x1, y1, x2, y2 in rotated]
        image = np.rot90(image)
    return np.ascontiguousarray(image), rotated


def flip(image: np.ndarray, boxes: Sequence[PixelBox], *, horizontal: bool) -> tuple[np.ndarray, list[PixelBox]]:
    height, width = image.shape[:2]
    if horizontal:
        mirrored = [(k, width - x2, y1, width - x1, y2) for k, x1, y1, x2, y2 in boxes]
        return np.ascontiguousarray(image[:, ::-1]), mirrored
    mirrored = [(k, x1, height - y2, x2, height - y1) for k, x1, y1, x2, y2 in boxes]
    return np.ascontiguousarray(image[::-1]), mirrored


def augment(
    image: np.ndarray, boxes: Sequence[PixelBox], config: AugmentationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, list[PixelBox]]:
    """One random variant of a uint8 image and its boxes as ``config`` allows."""
    moved = list(boxes)
    if config.horizontal_flip and rng.random() < 0.5:
        image, moved = flip(image, moved, horizontal=True)
    if config.vertical_flip and rng.random() < 0.5:
        image, moved = flip(image, moved, horizontal=False)
    if config.rotate90:
        image, moved = rotate90(image, moved, int(rng.integers(0, 4)))
    if config.brightness > 0:
        factor = 1 + rng.uniform(-config.brightness, config.brightness)
        image = np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    return image, moved


def write_yolo_sample(root: Path, split: str, stem: str, image: np.ndarray, boxes: Sequence[PixelBox]) -> None:
    """One image of a YOLO dataset and its label file (normalized centre x, centre y, width, height)."""
    import cv2

    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(root / "images" / split / f"{stem}.png"), image):
        raise OSError(f"{root / 'images' / split / stem}.png: could not be written")
    (root / "labels" / split / f"{stem}.txt").write_text(yolo_label_text(image.shape, boxes), encoding="utf-8")


def yolo_label_text(shape: tuple[int, ...], boxes: Sequence[PixelBox]) -> str:
    """A YOLO label file's text for pixel boxes on an image of ``shape`` (height, width, ...); empty: no boxes."""
    height, width = shape[:2]
    return "".join(
        f"{kind} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
        f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n"
        for kind, x1, y1, x2, y2 in boxes
    )


def write_data_yaml(root: Path, names: Sequence[str], *, val: str = "images/val") -> Path:
    """The data.yaml of a YOLO dataset under ``root`` (images/train, and ``val`` for validation)."""
    listed = "\n".join(f"  {i}: {name}" for i, name in enumerate(names))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: {val}\nnames:\n{listed}\n", encoding="utf-8"
    )
    return data_yaml
