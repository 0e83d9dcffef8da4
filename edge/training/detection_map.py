"""mAP50 and mAP50-95 of detections against labeled boxes, computed as Ultralytics' validator computes them.

Matching per IoU threshold (0.50, 0.55, ..., 0.95) follows Ultralytics' ``match_predictions`` (same class, IoU at
least the threshold, pairs taken by IoU, each prediction and each labeled box at most once), and the average
precision per class is Ultralytics' own ``ap_per_class``, so a model scored here and a YOLO scored by
``YOLO.val`` are on one scale. Used for models that Ultralytics does not run (template-crops detectors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.inference.detector import Detections, box_iou
from edge.training.dataset import PixelBox

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class LabeledBoxes:
    """One image's labeled boxes: (N, 4) x1 y1 x2 y2 pixels and their class indices."""

    boxes: np.ndarray
    class_ids: np.ndarray

    @classmethod
    def of(cls, boxes: Sequence[PixelBox]) -> LabeledBoxes:
        """From (class index, x1, y1, x2, y2) tuples."""
        rows = np.array([box[1:] for box in boxes], np.float32).reshape(-1, 4)
        return cls(rows, np.array([box[0] for box in boxes], np.int64))


@dataclass(frozen=True)
class DetectionScores:
    map50: float
    map50_95: float
    ap50: dict[str, float]
    """AP at IoU 0.5 of every class with at least one labeled box."""

    def as_metrics(self) -> dict[str, float]:
        return {"mAP50": self.map50, "mAP50-95": self.map50_95}


def _matches(found: Detections, truth: LabeledBoxes) -> np.ndarray:
    """(predictions, 10) bool: whether each prediction is a true positive at each IoU threshold."""
    correct = np.zeros((len(found), len(IOU_THRESHOLDS)), dtype=bool)
    if not len(found) or not len(truth.class_ids):
        return correct
    iou = box_iou(truth.boxes.astype(np.float32), found.boxes.astype(np.float32))  # (labels, predictions)
    iou = iou * (truth.class_ids[:, None] == found.class_ids[None, :])
    for column, threshold in enumerate(IOU_THRESHOLDS):
        pairs = np.array(np.nonzero(iou >= threshold)).T  # (label, prediction)
        if not len(pairs):
            continue
        if len(pairs) > 1:
            pairs = pairs[iou[pairs[:, 0], pairs[:, 1]].argsort()[::-1]]
            pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
            pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
        correct[pairs[:, 1], column] = True
    return correct


def detection_map(
    found: Sequence[Detections], truth: Sequence[LabeledBoxes], classes: Sequence[str]
) -> DetectionScores:
    """mAP over images: ``found[i]`` are the detections of the image labeled ``truth[i]``."""
    from ultralytics.utils.metrics import ap_per_class

    if len(found) != len(truth):
        raise ValueError(f"{len(found)} detection results for {len(truth)} labeled images")
    correct = [_matches(f, t) for f, t in zip(found, truth, strict=True)]
    target = np.concatenate([t.class_ids for t in truth]) if truth else np.zeros(0, np.int64)
    if not len(target):
        return DetectionScores(0.0, 0.0, {})
    result = ap_per_class(
        np.concatenate(correct) if correct else np.zeros((0, 10), bool),
        np.concatenate([f.scores for f in found]),
        np.concatenate([f.class_ids for f in found]),
        target,
    )
    ap, class_index = result[5], result[6]  # (classes with labels, 10) and those classes' indices
    if not len(ap):
        return DetectionScores(0.0, 0.0, {})
    return DetectionScores(
        map50=float(ap[:, 0].mean()),
        map50_95=float(ap.mean()),
        ap50={classes[int(i)]: float(value) for i, value in zip(class_index, ap[:, 0], strict=True)},
    )
