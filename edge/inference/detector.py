"""The detector inferencers: which defect, where, as boxes in original pixels.

``Detector`` serves an Ultralytics-style model: decode [batch, 4 + classes, anchors], filter, class-aware NMS.
NMS is OpenCV's batched (class-aware) NMS; everything else is vectorized numpy, with no Python loop over boxes.
The steps follow Ultralytics' predict (confidence strictly above the threshold, at most 30000 candidates by score
into NMS, at most ``max_detections`` out) so both give the same boxes for the same model and image.

``CropDetector`` serves a template-crops model (``exporters.crop_detector``): candidates where the image differs
from its template (``edge.inference.proposals``), one network pass over all their crops, the same filter and NMS.
``Detector.load`` opens either, as the file's architecture says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.inference.base import Inferencer
from edge.inference.errors import ModelLoadError
from edge.inference.images import Geometry, boxes_to_original, to_tensor
from edge.inference.proposals import boxes_from_crops, served_crops
from edge.inference.sessions import LoadedModel
from edge.inference.watchdog import InferenceWatchdog
from schemas.manifests import TEMPLATE_CROPS_ARCHITECTURE, ProposalSpec, Task

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
        self._check_outputs(model)
        self.confidence_threshold = confidence_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections

    @classmethod
    def from_model(cls, model: LoadedModel, **options: Any) -> Detector:  # the kind the file's architecture says
        return open_detector(model, **options) if cls is Detector else cls(model, **options)

    def _check_outputs(self, model: LoadedModel) -> None:
        outputs = model.session.get_outputs()
        expected = 4 + len(self.metadata.classes)
        shape = tuple(outputs[0].shape)
        channels = shape[1] if len(shape) == 3 else None
        if len(shape) != 3 or (isinstance(channels, int) and channels != expected):
            raise ModelLoadError(
                f"{model.path}: output {shape} is not [batch, 4 + {len(self.metadata.classes)} classes, anchors] "
                "(an Ultralytics-style head without NMS)"
            )

    def postprocess(self, outputs: list[np.ndarray], geometries: list[Geometry]) -> list[Detections]:
        raw = outputs[0]
        if raw.ndim != 3 or raw.shape[1] != 4 + len(self.metadata.classes):
            raise ValueError(f"{self.model.path}: unexpected detector output shape {raw.shape}")
        return [self._decode(raw[index].astype(np.float32).T, geometry) for index, geometry in enumerate(geometries)]

    def _decode(self, anchors: np.ndarray, geometry: Geometry) -> Detections:

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
        # NMS in model-input pixels, as Ultralytics does, then back to the original image (clipping there)
        order = nms_order(
            xyxy,
            scores,
            class_ids,
            confidence_threshold=self.confidence_threshold,
            iou_threshold=self.iou_threshold,
            max_detections=self.max_detections,
        )
        return Detections(
            boxes=boxes_to_original(xyxy[order], geometry),
            scores=scores[order],
            class_ids=class_ids[order].astype(np.int64),
            class_names=tuple(self.metadata.classes[int(i)] for i in class_ids[order]),
        )

    @staticmethod
    def _empty() -> Detections:
        return no_detections()


def no_detections() -> Detections:
    return Detections(
        boxes=np.zeros((0, 4), np.float32),
        scores=np.zeros(0, np.float32),
        class_ids=np.zeros(0, np.int64),
        class_names=(),
    )


def nms_order(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    *,
    confidence_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> np.ndarray:
    """Indices of the boxes (x1 y1 x2 y2) that OpenCV's class-aware NMS keeps, best first, at most
    ``max_detections``."""
    import cv2

    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    selected = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), scores.tolist(), class_ids.tolist(), confidence_threshold, iou_threshold
    )
    order = np.asarray(selected, dtype=np.int64).reshape(-1)
    return order[np.argsort(-scores[order], kind="stable")][:max_detections]


def suppress(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    classes: Sequence[str],
    *,
    confidence_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> Detections:
    """Class-aware NMS of candidate boxes (x1 y1 x2 y2, original pixels) as detections, best first."""
    order = nms_order(
        boxes,
        scores,
        class_ids,
        confidence_threshold=confidence_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )
    return Detections(
        boxes=boxes[order].astype(np.float32),
        scores=scores[order].astype(np.float32),
        class_ids=class_ids[order].astype(np.int64),
        class_names=tuple(classes[int(i)] for i in class_ids[order]),
    )


def decode_crops(
    scores: np.ndarray,
    relative: np.ndarray,
    windows: np.ndarray,
    image_size: tuple[int, int],
    classes: Sequence[str],
    *,
    confidence_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> Detections:
    """One image's template-crops outputs (background-first probabilities and crop-unit boxes per candidate window)
    to its detections; ``image_size`` is (width, height)."""
    if not len(windows):
        return no_detections()
    defect = scores[:, 1:].astype(np.float32)
    class_ids = defect.argmax(axis=1)
    best = defect[np.arange(defect.shape[0]), class_ids]
    keep = best > confidence_threshold
    if not keep.any():
        return no_detections()
    boxes = boxes_from_crops(relative[keep].astype(np.float32), windows[keep])
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, image_size[0])
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, image_size[1])
    return suppress(
        boxes,
        best[keep],
        class_ids[keep],
        classes,
        confidence_threshold=confidence_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )


class CropDetector(Detector):
    """A template-crops model: names each place where the image differs from its template, or dismisses it.

    Images come as template comparisons (``reference_composite``, which the pipeline builds for models whose input
    template is 'composite'); boxes come back in their pixels.
    """

    def __init__(self, model: LoadedModel, **options: Any) -> None:
        """``options`` as ``Detector``'s; refuses a model that is not a template-crops one."""
        architecture = model.metadata.architecture
        if architecture is None or architecture.name != TEMPLATE_CROPS_ARCHITECTURE:
            raise ModelLoadError(f"{model.path}: is not a {TEMPLATE_CROPS_ARCHITECTURE} model")
        try:
            self.proposals = ProposalSpec.from_params(architecture.params)
        except ValueError as exc:
            raise ModelLoadError(f"{model.path}: invalid proposal settings in its architecture: {exc}") from None
        super().__init__(model, **options)

    def _check_outputs(self, model: LoadedModel) -> None:
        outputs = model.session.get_outputs()
        channels = outputs[0].shape[1] if len(outputs) == 2 and len(outputs[0].shape) == 2 else None
        if len(outputs) != 2 or (isinstance(channels, int) and channels != 1 + len(self.metadata.classes)):
            raise ModelLoadError(
                f"{model.path}: a template-crops model gives scores [crops, 1 + {len(self.metadata.classes)}] and "
                f"boxes [crops, 4]; this one has outputs {[tuple(o.shape) for o in outputs]}"
            )

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Candidates of every image, one network pass over all their crops, then each image's boxes."""
        composites, windows_per_image, crops = served_crops(
            list(images), self.proposals, f"{self.name} v{self.version}"
        )
        sizes = [(composite.shape[1], composite.shape[0]) for composite in composites]
        if not crops:
            return [self._empty() for _ in images]
        tensor, _ = to_tensor(crops, self.metadata.input, self.model.input_dtype)
        scores, relative = self.run(tensor)[:2]
        results = []
        start = 0
        for windows, (width, height) in zip(windows_per_image, sizes, strict=True):
            end = start + len(windows)
            results.append(
                decode_crops(
                    scores[start:end],
                    relative[start:end],
                    windows,
                    (width, height),
                    self.metadata.classes,
                    confidence_threshold=self.confidence_threshold,
                    iou_threshold=self.iou_threshold,
                    max_detections=self.max_detections,
                )
            )
            start = end
        return results

    def postprocess(self, outputs: list[np.ndarray], geometries: list[Geometry]) -> list[Detections]:
        raise TypeError("a template-crops model's outputs are per candidate, not per image: use predict_batch")


def open_detector(model: LoadedModel, **options: Any) -> Detector:
    """The detector inferencer for a loaded model: a template-crops model or an Ultralytics-style one."""
    architecture = model.metadata.architecture
    if architecture is not None and architecture.name == TEMPLATE_CROPS_ARCHITECTURE:
        return CropDetector(model, **options)
    return Detector(model, **options)
