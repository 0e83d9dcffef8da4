"""Classify-then-detect: the classifier gates, the detector localizes (only gated-defective images, or always).

The result is typed and carries what the buffer, the event and the review queue need: verdict, defect score,
boxes with class names, the model versions that produced it and the wall time per stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.inference.base import Inferencer
from edge.inference.classifier import Classifier
from edge.inference.detector import Detections, Detector
from edge.inference.errors import ImageError, ModelLoadError
from edge.inference.images import check_template_size, reference_composite
from edge.inference.templates import TemplateError
from schemas.config import DetectorMode, InspectionConfig
from schemas.manifests import TemplateInput
from schemas.messages import DetectionBox, StageLatency, Verdict


@dataclass(frozen=True)
class InspectionResult:
    """The outcome of inspecting one image."""

    verdict: Verdict
    score: float
    """Classifier probability that the image is defective."""
    boxes: tuple[DetectionBox, ...]
    model_versions: dict[str, int]
    latency: StageLatency
    image_width: int
    image_height: int


def _versions(classifier: Classifier, detector: Detector | None) -> dict[str, int]:
    versions = {classifier.name: classifier.version}
    if detector is not None:
        versions[detector.name] = detector.version
    return versions


def detection_boxes(detections: Detections) -> tuple[DetectionBox, ...]:
    """Typed boxes from a detector's arrays (coordinates already clipped to the image)."""
    return tuple(
        DetectionBox(
            x1=float(box[0]),
            y1=float(box[1]),
            x2=float(box[2]),
            y2=float(box[3]),
            class_id=int(class_id),
            class_name=name,
            score=float(min(max(score, 0.0), 1.0)),
        )
        for box, class_id, name, score in zip(
            detections.boxes, detections.class_ids, detections.class_names, detections.scores, strict=True
        )
    )


def compares_with_template(model: Inferencer[Any] | None) -> bool:
    """Whether ``model`` sees each image stacked with its golden template (input template 'composite')."""
    return model is not None and model.metadata.input.template == TemplateInput.COMPOSITE


class ModelInputs:
    """The images as each model wants them: alone, or composed with their templates (composed once, on demand)."""

    def __init__(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None] | None) -> None:
        if templates is not None and len(templates) != len(images):
            raise ValueError(f"{len(images)} images but {len(templates)} templates")
        self.images = images
        self.templates = templates
        self._composites: dict[int, np.ndarray] = {}

    def check(self, model: Inferencer[Any] | None) -> None:
        """Raise ``TemplateError`` now, before any model runs, if ``model`` needs templates these images lack."""
        if compares_with_template(model):
            assert model is not None
            for index in range(len(self.images)):
                try:
                    check_template_size(self.images[index], self._template(index, model))
                except ImageError as exc:
                    raise TemplateError("template_mismatch", str(exc)) from None

    def take(self, indices: Sequence[int], model: Inferencer[Any]) -> list[np.ndarray]:
        if not compares_with_template(model):
            return [self.images[index] for index in indices]
        for index in indices:
            if index not in self._composites:
                self._composites[index] = reference_composite(self.images[index], self._template(index, model))
        return [self._composites[index] for index in indices]

    def _template(self, index: int, model: Inferencer[Any]) -> np.ndarray:
        template = None if self.templates is None else self.templates[index]
        if template is None:
            raise TemplateError(
                "no_template",
                f"model {model.name} v{model.version} compares each image with its golden template, and this image "
                "names none (give a template id, or set inspection.default_template)",
            )
        return template


class InspectionPipeline:
    """A classifier gate and an optional detector, with thresholds from ``InspectionConfig``.

    Models can be replaced while images are being inspected: each call takes the models it uses once, at its
    start, so a call in flight finishes on the models it began with and no call fails during a swap.
    """

    def __init__(self, classifier: Classifier, detector: Detector | None, config: InspectionConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._check_classifier(classifier)
        self.classifier = classifier
        self.defect_index = classifier.metadata.classes.index(config.defect_class)
        self.detector = self._configured(detector)

    def _check_classifier(self, classifier: Classifier) -> None:
        classes = classifier.metadata.classes
        if self.config.defect_class not in classes:
            raise ModelLoadError(
                f"{classifier.model.path}: classifier classes {classes} do not include inspection.defect_class "
                f"{self.config.defect_class!r}"
            )

    def _configured(self, detector: Detector | None) -> Detector | None:
        if detector is not None:
            detector.confidence_threshold = self.config.confidence_threshold
            detector.iou_threshold = self.config.iou_threshold
            detector.max_detections = self.config.max_detections
        return detector

    def replace_classifier(self, classifier: Classifier) -> Classifier:
        """Serve ``classifier`` from the next call on; returns the one it replaces."""
        self._check_classifier(classifier)
        with self._lock:
            previous = self.classifier
            self.classifier = classifier
            self.defect_index = classifier.metadata.classes.index(self.config.defect_class)
        return previous

    def replace_detector(self, detector: Detector) -> Detector | None:
        """Serve ``detector`` from the next call on; returns the one it replaces."""
        configured = self._configured(detector)
        with self._lock:
            previous = self.detector
            self.detector = configured
        return previous

    def _models(self) -> tuple[Classifier, Detector | None, int]:
        with self._lock:
            return self.classifier, self.detector, self.defect_index

    @property
    def needs_template(self) -> bool:
        """Whether every image must come with its golden template (a served model compares with it)."""
        classifier, detector, _ = self._models()
        return compares_with_template(classifier) or compares_with_template(detector)

    @property
    def model_versions(self) -> dict[str, int]:
        classifier, detector, _ = self._models()
        return _versions(classifier, detector)

    def inspect(
        self, image: np.ndarray, *, template: np.ndarray | None = None, decode_ms: float = 0.0
    ) -> InspectionResult:
        return self.inspect_batch([image], templates=[template], decode_ms=decode_ms)[0]

    def inspect_batch(
        self,
        images: Sequence[np.ndarray],
        *,
        templates: Sequence[np.ndarray | None] | None = None,
        decode_ms: float = 0.0,
    ) -> list[InspectionResult]:
        """Inspect a batch; the stage times are per batch, shared by its images.

        ``templates``: each image's golden template (or None), used by models that compare with it; such a model
        without a template for an image, or with one of another size, raises ``TemplateError`` before anything runs.
        """
        if not images:
            return []
        classifier, detector, defect_index = self._models()  # this call's models, whatever a swap does meanwhile
        inputs = ModelInputs(images, templates)
        inputs.check(classifier)
        inputs.check(detector)
        started = time.perf_counter()
        classifications = classifier.predict_batch(inputs.take(range(len(images)), classifier))
        classified = time.perf_counter()
        scores = [c.probability(defect_index) for c in classifications]
        defective = [score >= self.config.defect_threshold for score in scores]
        detections: dict[int, Detections] = {}
        detect_ms: float | None = None
        if detector is not None:
            wanted = [
                index
                for index, is_defective in enumerate(defective)
                if is_defective or self.config.detector_mode == DetectorMode.ALWAYS
            ]
            if wanted:
                found = detector.predict_batch(inputs.take(wanted, detector))
                detections = dict(zip(wanted, found, strict=True))
                detect_ms = (time.perf_counter() - classified) * 1000
        finished = time.perf_counter()
        classify_ms = (classified - started) * 1000
        versions = _versions(classifier, detector)
        return [
            self._result(
                image,
                score,
                is_defective,
                detections.get(index),
                versions,
                decode_ms,
                classify_ms,
                detect_ms if index in detections else None,
                (finished - started) * 1000,
            )
            for index, (image, score, is_defective) in enumerate(zip(images, scores, defective, strict=True))
        ]

    @staticmethod
    def _result(
        image: np.ndarray,
        score: float,
        is_defective: bool,
        found: Detections | None,
        versions: dict[str, int],
        decode_ms: float,
        classify_ms: float,
        detect_ms: float | None,
        stages_ms: float,
    ) -> InspectionResult:
        return InspectionResult(
            verdict=Verdict.DEFECTIVE if is_defective else Verdict.GOOD,
            score=float(min(max(score, 0.0), 1.0)),
            boxes=detection_boxes(found) if found is not None else (),
            model_versions=dict(versions),
            latency=StageLatency(
                decode_ms=decode_ms, classify_ms=classify_ms, detect_ms=detect_ms, total_ms=decode_ms + stages_ms
            ),
            image_width=int(image.shape[1]),
            image_height=int(image.shape[0]),
        )
