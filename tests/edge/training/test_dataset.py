"""Augmentation keeps boxes on their objects; YOLO label files say what the boxes say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.inference.images import reference_composite
from edge.training.classifier import load_images
from edge.training.dataset import augment, flip, rotate90, write_yolo_sample
from edge.training.jobs import TrainingSample
from schemas.config import AugmentationConfig
from schemas.manifests import InputSpec, TemplateInput

cv2 = pytest.importorskip("cv2")


def marked(width: int = 40, height: int = 30) -> tuple[np.ndarray, tuple[int, float, float, float, float]]:
    """A dark image with one bright rectangle, and its box."""
    image = np.zeros((height, width), np.uint8)
    image[5:12, 20:35] = 255  # rows y 5..11, columns x 20..34
    return image, (1, 20.0, 5.0, 35.0, 12.0)


def bright_box(image: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(image)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5])
def test_rotations_move_the_box_with_the_object(turns: int) -> None:
    image, box = marked()
    turned, [moved] = rotate90(image, [box], turns)
    assert turned.shape == (image.shape if turns % 2 == 0 else image.shape[::-1])
    assert moved[0] == 1
    assert moved[1:] == bright_box(turned)


@pytest.mark.parametrize("horizontal", [True, False])
def test_flips_move_the_box_with_the_object(horizontal: bool) -> None:
    image, box = marked()
    flipped, [moved] = flip(image, [box], horizontal=horizontal)
    assert moved[1:] == bright_box(flipped)


def test_random_augmentation_keeps_every_box_on_its_object() -> None:
    rng = np.random.default_rng(0)
    image, box = marked()
    config = AugmentationConfig(brightness=0.0)
    for _ in range(20):
        changed, [moved] = augment(image, [box], config, rng)
        assert moved[1:] == bright_box(changed)


def test_brightness_only_scales_pixels() -> None:
    image = np.full((4, 4), 100, np.uint8)
    config = AugmentationConfig(horizontal_flip=False, vertical_flip=False, rotate90=False, brightness=0.5)
    values = {int(augment(image, [], config, np.random.default_rng(seed))[0][0, 0]) for seed in range(10)}
    assert len(values) > 1 and all(50 <= v <= 150 for v in values)


def test_yolo_sample_files(tmp_path: Path) -> None:
    image, box = marked()
    write_yolo_sample(tmp_path, "train", "a", image, [box])
    write_yolo_sample(tmp_path, "train", "good", image, [])
    assert cv2.imread(str(tmp_path / "images" / "train" / "a.png"), cv2.IMREAD_UNCHANGED).shape == (30, 40)
    label = (tmp_path / "labels" / "train" / "a.txt").read_text().split()
    assert label == ["1", "0.687500", "0.283333", "0.375000", "0.233333"]
    assert (tmp_path / "labels" / "train" / "good.txt").read_text() == ""


def test_training_images_are_compared_with_their_stored_templates_when_the_model_does(tmp_path: Path) -> None:
    image, _ = marked()
    template = np.zeros_like(image)
    files = {}
    for name, pixels in (("board", image), ("golden", template)):
        files[name] = tmp_path / f"{name}.png"
        cv2.imwrite(str(files[name]), pixels)
    samples = [
        TrainingSample(sample_id="with", image=files["board"], verdict="defective", template=files["golden"]),
        TrainingSample(sample_id="without", image=files["board"], verdict="defective"),
    ]
    composite = InputSpec(
        width=64,
        height=64,
        channels=3,
        color="bgr",
        resize="letterbox",
        mean=(0,) * 3,
        std=(1,) * 3,
        template="composite",
    )
    [(sample, seen)] = load_images(samples, composite)
    assert sample.sample_id == "with", "an image without its template cannot be compared and is skipped"
    np.testing.assert_array_equal(seen, reference_composite(image, template))
    alone = load_images(samples, composite.model_copy(update={"template": TemplateInput.NONE}))
    assert [s.sample_id for s, _ in alone] == ["with", "without"]
    np.testing.assert_array_equal(alone[0][1], image)
