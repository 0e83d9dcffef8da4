"""The detector inferencer: decode [batch, 4 + classes, anchors], filter, class-aware NMS, boxes in original pixels.

NMS is OpenCV's batched (class-aware) NMS; everything else is vectorized numpy, with no Python loop over boxes.
The steps follow Ultralytics' predict (confidence strictly above the threshold, at most 30000 candidates by score
into NMS, at most ``max_detections`` out) so both give the same boxes for the same model and image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.inference.base import Inferencer
from edge.inference.errors import ModelLoadError
from edge.inference.images import Geometry, boxes_to_original
from edge.inference.sessions import LoadedModel
from edge.inference.watchdog import InferenceWatchdog
from schemas.manifests import Task

MAX_NMS_CANDIDATES = 30000


@dataclass(frozen=True)
class Detections:
    """Boxes found in one image: (N, 4) x1 y1 x2 y2 in original pixels, scores and class indices, best first."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), x1 y1 x2 y2: an (N, M) matrix."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))


class Detector(Inferencer[Detections]):
    task = Task.DETECT

    def __init__(
        self,
        model: LoadedModel,
        *,
        watchdog: InferenceWatchdog | None = None,
        io_binding: bool | None = None,
        confidence_threshold: float = 0.25,
        iou_threshold: float = 0.7,
        max_detections: int = 300,
    ) -> None:
        super().__init__(model, watchdog=watchdog, io_binding=io_binding)
        outputs = model.session.get_outputs()
        expected = 4 + len(self.metadata.classes)
        channels = outputs[0].shape[1] if len(outputs[0].shape) == 3 else None
        if isinstance(channels, int) and channels != expected:
            raise ModelLoadError(
                f"{model.path}: output has {channels} channels per anchor, expected 4 + {len(self.metadata.classes)} "
                "classes (an Ultralytics-style [batch, 4 + classes, anchors] head without NMS)"
            )
        self.confidence_threshold = confidence_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections

    def postprocess(self, outputs: list[np.ndarray], geometries: list[Geometry]) -> list[Detections]:
        raw = outputs[0]
        if raw.ndim != 3 or raw.shape[1] != 4 + len(self.metadata.classes):
            raise ValueError(f"{self.model.path}: unexpected detector output shape {raw.shape}")
        return [self._decode(raw[index].astype(np.float32).T, geometry) for index, geometry in enumerate(geometries)]

    def _decode(self, anchors: np.ndarray, geometry: Geometry) -> Detections:
        import cv2

        class_scores = anchors[:, 4:]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(class_scores.shape[0]), class_ids]
        keep = scores > self.confidence_threshold
        if not keep.any():
            return self._empty()
        boxes_cxcywh, scores, class_ids = anchors[keep, :4], scores[keep], class_ids[keep]
        if scores.shape[0] > MAX_NMS_CANDIDATES:
            top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
            boxes_cxcywh, scores, class_ids = boxes_cxcywh[top], scores[top], class_ids[top]
        half = boxes_cxcywh[:, 2:] / 2
        xyxy = np.concatenate([boxes_cxcywh[:, :2] - half, boxes_cxcywh[:, :2] + half], axis=1)
        xywh = np.concatenate([xyxy[:, :2], boxes_cxcywh[:, 2:]], axis=1)
        selected = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), scores.tolist(), class_ids.tolist(), self.confidence_threshold, self.iou_threshold
        )
        order = np.asarray(selected, dtype=np.int64).reshape(-1)
        order = order[np.argsort(-scores[order], kind="stable")][: self.max_detections]
        return Detections(
            boxes=boxes_to_original(xyxy[order], geometry),
            scores=scores[order],
            class_ids=class_ids[order].astype(np.int64),
            class_names=tuple(self.metadata.classes[int(i)] for i in class_ids[order]),
        )

    @staticmethod
    def _empty() -> Detections:
        return Detections(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            class_ids=np.zeros(0, np.int64),
            class_names=(),
        )
