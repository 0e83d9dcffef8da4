"""Detector post-processing on hand-made raw outputs: threshold, class-aware NMS, max boxes, original pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.inference.detector import Detector
from edge.inference.images import Geometry
from schemas.bundle import MODEL_FILE
from schemas.config import InferenceConfig

pytestmark = pytest.mark.slow


def _raw(rows: list[tuple[float, float, float, float, int, float]], classes: int = 2) -> np.ndarray:
    """[1, 4 + classes, anchors] from (cx, cy, w, h, class, score) rows."""
    raw = np.zeros((1, 4 + classes, len(rows)), np.float32)
    for anchor, (cx, cy, w, h, cls, score) in enumerate(rows):
        raw[0, :4, anchor] = (cx, cy, w, h)
        raw[0, 4 + cls, anchor] = score
    return raw


IDENTITY = Geometry(original_height=160, original_width=160, scale_x=1.0, scale_y=1.0, pad_x=0, pad_y=0)


@pytest.fixture
def detector(detector_bundle: Path, tmp_path: Path) -> Detector:
    return Detector.load(detector_bundle / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)


def test_nms_is_class_aware(detector: Detector) -> None:
    raw = _raw(
        [
            (50, 50, 20, 20, 0, 0.9),
            (51, 51, 20, 20, 0, 0.8),  # same class, IoU ~0.9: suppressed
            (51, 51, 20, 20, 1, 0.7),  # other class at the same place: kept
            (120, 120, 10, 10, 0, 0.6),  # elsewhere: kept
        ]
    )
    found = detector.postprocess([raw], [IDENTITY])[0]
    assert found.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert found.class_ids.tolist() == [0, 1, 0]
    assert found.class_names == ("rect", "ellipse", "rect")
    assert found.boxes[0].tolist() == pytest.approx([40, 40, 60, 60])


def test_threshold_is_strict_and_max_detections_keeps_the_best(detector: Detector) -> None:
    detector.confidence_threshold = 0.5
    raw = _raw([(20 * i + 10, 20, 8, 8, 0, score) for i, score in enumerate([0.5, 0.51, 0.9, 0.7])])
    assert detector.postprocess([raw], [IDENTITY])[0].scores.tolist() == pytest.approx([0.9, 0.7, 0.51])
    detector.max_detections = 2
    assert detector.postprocess([raw], [IDENTITY])[0].scores.tolist() == pytest.approx([0.9, 0.7])
    detector.confidence_threshold = 0.95
    empty = detector.postprocess([raw], [IDENTITY])[0]
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_boxes_go_back_to_original_pixels(detector: Detector) -> None:
    geometry = Geometry(original_height=200, original_width=400, scale_x=0.4, scale_y=0.4, pad_x=0, pad_y=40)
    found = detector.postprocess([_raw([(80, 80, 40, 40, 1, 0.9)])], [geometry])[0]
    assert found.boxes[0].tolist() == pytest.approx([150, 50, 250, 150])


def test_batch_results_are_per_image(detector: Detector) -> None:
    images = [np.zeros((160, 160), np.uint8), np.full((120, 200), 200, np.uint8)]
    batch = detector.predict_batch(images)
    single = [detector.predict(image) for image in images]
    for got, want in zip(batch, single, strict=True):
        assert np.allclose(got.boxes, want.boxes, atol=1e-3) and np.allclose(got.scores, want.scores, atol=1e-5)
    assert detector.predict_batch([]) == []
