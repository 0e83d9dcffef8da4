"""mAP of detections against labeled boxes, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from edge.inference.detector import Detections
from edge.training.detection_map import LabeledBoxes, detection_map

CLASSES = ("open", "short")
PERFECT = 0.995
"""Ultralytics' AP of a class found exactly: its 101-point interpolation integrates recall 0 to 1 in steps of 0.01
by the trapezoid rule, and the last step averages precision 1 with the 0 of its sentinel at recall 1."""


def found(rows: list[tuple[float, float, float, float, float, int]]) -> Detections:
    array = np.array(rows, np.float32).reshape(-1, 6)
    ids = array[:, 5].astype(np.int64)
    return Detections(array[:, :4], array[:, 4], ids, tuple(CLASSES[i] for i in ids))


def labeled(rows: list[tuple[float, float, float, float, int]]) -> LabeledBoxes:
    array = np.array(rows, np.float32).reshape(-1, 5)
    return LabeledBoxes(array[:, :4], array[:, 4].astype(np.int64))


@pytest.fixture(autouse=True)
def offline_ultralytics(tmp_path_factory: pytest.TempPathFactory) -> None:
    from exporters.ultralytics_env import prepare_ultralytics

    prepare_ultralytics(tmp_path_factory.mktemp("ultralytics"), threads=1)


def test_exact_boxes_score_one() -> None:
    truth = [labeled([(0, 0, 10, 10, 0), (20, 20, 30, 30, 1)])]
    scores = detection_map([found([(0, 0, 10, 10, 0.9, 0), (20, 20, 30, 30, 0.8, 1)])], truth, CLASSES)
    assert scores.map50 == pytest.approx(PERFECT, abs=1e-4)
    assert scores.map50_95 == pytest.approx(PERFECT, abs=1e-4)
    assert set(scores.ap50) == {"open", "short"}


def test_an_overlap_of_0_6_counts_at_three_of_ten_thresholds() -> None:
    # 10x10 truth, prediction shifted 2.5 px: intersection 75, union 125, IoU 0.6 -> true at 0.50, 0.55, 0.60
    scores = detection_map([found([(2.5, 0, 12.5, 10, 0.9, 0)])], [labeled([(0, 0, 10, 10, 0)])], CLASSES)
    assert scores.map50 == pytest.approx(PERFECT, abs=1e-4)
    assert scores.map50_95 == pytest.approx(0.3 * PERFECT, abs=1e-4)


def test_the_wrong_class_and_a_missed_box_cost_their_share() -> None:
    # class open: two labeled boxes, one found (recall 0.5 at precision 1): AP 0.5; class short: one labeled box,
    # found only as "open" (a false positive of open, ranked below the hit): AP 0
    truth = [labeled([(0, 0, 10, 10, 0), (40, 40, 50, 50, 0), (20, 20, 30, 30, 1)])]
    predictions = [found([(0, 0, 10, 10, 0.9, 0), (20, 20, 30, 30, 0.8, 0)])]
    scores = detection_map(predictions, truth, CLASSES)
    assert scores.ap50["open"] == pytest.approx(0.5, abs=0.01)
    assert scores.ap50["short"] == pytest.approx(0.0, abs=1e-6)
    assert scores.map50 == pytest.approx(0.25, abs=0.01)


def test_images_without_labels_make_their_detections_false_positives() -> None:
    truth = [labeled([(0, 0, 10, 10, 0)]), labeled([])]
    clean = detection_map([found([(0, 0, 10, 10, 0.5, 0)]), found([])], truth, CLASSES)
    noisy = detection_map([found([(0, 0, 10, 10, 0.5, 0)]), found([(5, 5, 9, 9, 0.9, 0)])], truth, CLASSES)
    assert clean.map50 == pytest.approx(PERFECT, abs=1e-4)
    assert noisy.map50 < 0.6  # the higher-scored false positive halves precision at the only recall level


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="1 detection results for 2 labeled images"):
        detection_map([found([])], [labeled([]), labeled([])], CLASSES)
