"""Hot-swapping a new global model: evaluate it on the local holdout, swap it in atomically unless it regresses.

The local holdout is the fixed part of the labeled samples that training never uses (``edge.buffer.labels.is_holdout``).
A new classifier is scored by accuracy of the good / defective verdict, a new detector by the F1 of its boxes
against the labeled boxes (same class, IoU >= 0.5). Each model sees the holdout as it sees live images: alone, or
compared with the golden template stored with each sample; when either model compares with templates, both are
scored on the holdout samples that have one. A model that scores more than ``tolerance`` below the model
in use is not swapped in, and the decision says why; ``rollback`` brings back the model a swap replaced.

Every swap and rollback is recorded (``edge.model_records.record_served``): a restarted agent serves again the
model it served before, not the one its config names.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.buffer import EdgeBuffer
from edge.buffer.labels import LabeledSample
from edge.inference.classifier import Classifier, open_classifier
from edge.inference.detector import Detector, box_iou, open_detector
from edge.inference.errors import ImageError, ModelLoadError
from edge.inference.images import decode_image
from edge.inference.pipeline import InspectionPipeline, ModelInputs, compares_with_template
from edge.inference.sessions import load_model
from edge.inference.watchdog import InferenceWatchdog
from edge.model_records import record_served
from schemas.config import InferenceConfig
from schemas.manifests import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwapDecision:
    model: str
    from_version: int
    to_version: int
    swapped: bool
    score_before: float | None
    score_after: float | None
    holdout_size: int
    reason: str


@dataclass(frozen=True)
class Holdout:
    """The local holdout, decoded: samples with their images and golden templates (None where none was stored)."""

    samples: list[LabeledSample]
    images: list[np.ndarray]
    templates: list[np.ndarray | None]

    @classmethod
    def load(cls, samples: list[LabeledSample], *, need_templates: bool) -> Holdout:
        """Readable samples (unreadable ones skipped and logged); only those with a template if ``need_templates``."""
        kept: list[LabeledSample] = []
        images: list[np.ndarray] = []
        templates: list[np.ndarray | None] = []
        for sample in samples:
            if need_templates and sample.template_path is None:
                continue
            try:
                image = decode_image(sample.image_path.read_bytes(), source=sample.sample_id)
                template = (
                    None
                    if sample.template_path is None
                    else decode_image(sample.template_path.read_bytes(), source=f"{sample.sample_id} template")
                )
            except (OSError, ImageError) as exc:
                log.warning("holdout image skipped", extra={"sample_id": sample.sample_id, "error": str(exc)})
                continue
            kept.append(sample)
            images.append(image)
            templates.append(template)
        return cls(kept, images, templates)

    def inputs_for(self, model: Classifier | Detector) -> list[np.ndarray]:
        """The holdout images as ``model`` takes them (alone, or compared with their templates)."""
        return ModelInputs(self.images, self.templates).take(range(len(self.images)), model)


def classifier_accuracy(classifier: Classifier, defect_class: str, holdout: Holdout) -> float:
    index = classifier.metadata.classes.index(defect_class)
    results = classifier.predict_batch(holdout.inputs_for(classifier))
    hits = sum(
        (result.class_id == index) == (sample.verdict == "defective")
        for sample, result in zip(holdout.samples, results, strict=True)
    )
    return hits / len(holdout.samples)


def detector_f1(detector: Detector, holdout: Holdout, iou: float = 0.5) -> float:
    """F1 of predicted boxes against labeled boxes (greedy one-to-one matching by score, same class)."""
    true_positive = predicted = expected = 0
    for sample, found in zip(holdout.samples, detector.predict_batch(holdout.inputs_for(detector)), strict=True):
        truth = sample.boxes
        predicted += len(found)
        expected += len(truth)
        if not truth or not len(found):
            continue
        truth_boxes = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in truth], dtype=np.float32)
        overlaps = box_iou(found.boxes, truth_boxes)
        used: set[int] = set()
        for row, name in enumerate(found.class_names):  # found is sorted best first
            candidates = [
                col
                for col in np.argsort(-overlaps[row])
                if col not in used and overlaps[row, col] >= iou and truth[col]["class_name"] == name
            ]
            if candidates:
                used.add(int(candidates[0]))
                true_positive += 1
    if predicted + expected == 0:
        return 1.0
    return 2 * true_positive / (predicted + expected)


class ModelSwapper:
    def __init__(
        self,
        pipeline: InspectionPipeline,
        buffer: EdgeBuffer,
        inference: InferenceConfig,
        *,
        cache_dir: Path,
        tolerance: float,
        watchdog: InferenceWatchdog | None = None,
        models_dir: Path | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.models_dir = models_dir
        self.buffer = buffer
        self.inference = inference
        self.cache_dir = cache_dir
        self.tolerance = tolerance
        self.watchdog = watchdog
        self._previous: dict[Task, Classifier | Detector] = {}
        self._lock = threading.Lock()  # one swap decision at a time

    def consider(self, model_file: Path) -> SwapDecision:
        """Load ``model_file``, compare it with the model in use on the local holdout, swap it in if not worse."""
        with self._lock:
            loaded = load_model(model_file, self.inference, cache_dir=self.cache_dir)
            task = loaded.metadata.task
            current: Classifier | Detector | None = (
                self.pipeline.classifier if task == Task.CLASSIFY else self.pipeline.detector
            )
            new: Classifier | Detector = (
                open_classifier(loaded, watchdog=self.watchdog)
                if task == Task.CLASSIFY
                else open_detector(loaded, watchdog=self.watchdog)
            )
            if current is not None and current.name != new.name:
                raise ModelLoadError(f"{model_file}: is model line {new.name!r}, the edge serves {current.name!r}")
            if current is not None and new.version < current.version:
                # versions only go forward here too (the updater already refuses older signed versions)
                decision = SwapDecision(
                    new.name,
                    current.version,
                    new.version,
                    False,
                    None,
                    None,
                    0,
                    f"version {new.version} is older than version {current.version} in use; a rollback comes as a "
                    "new version or through the rollback command",
                )
                log.warning("older model not swapped in", extra=vars(decision))
                return decision
            if compares_with_template(new) and self.pipeline.config.templates_dir is None:
                raise ModelLoadError(
                    f"{model_file}: {new.name} v{new.version} compares each image with its golden template, and this "
                    "edge has no inspection.templates_dir; configure the templates before serving it"
                )
            need_templates = compares_with_template(new) or compares_with_template(current)
            holdout = Holdout.load(self.buffer.labels.labeled_samples(holdout=True), need_templates=need_templates)
            before = after = None
            if current is None:
                reason = "no model of this task was in use"
            elif not holdout.samples:
                reason = (
                    "no labeled local holdout with golden templates yet; taking the new model unchecked"
                    if need_templates
                    else "no labeled local holdout yet; taking the new model unchecked"
                )
            else:
                before, after = self._score(current, holdout), self._score(new, holdout)
                if after < before - self.tolerance:
                    decision = SwapDecision(
                        new.name,
                        current.version,
                        new.version,
                        False,
                        before,
                        after,
                        len(holdout.samples),
                        f"regresses on the local holdout: {after:.3f} vs {before:.3f} now "
                        f"(tolerance {self.tolerance:g}); keeping version {current.version}",
                    )
                    log.warning("new model not swapped in", extra=vars(decision))
                    return decision
                reason = f"holdout score {after:.3f} vs {before:.3f}"
            self._swap(task, new)
            decision = SwapDecision(
                new.name,
                current.version if current else -1,
                new.version,
                True,
                before,
                after,
                len(holdout.samples),
                reason,
            )
            log.info("model swapped in", extra=vars(decision))
            return decision

    def _score(self, model: Classifier | Detector, holdout: Holdout) -> float:
        if isinstance(model, Classifier):
            return classifier_accuracy(model, self.pipeline.config.defect_class, holdout)
        return detector_f1(model, holdout)

    def _swap(self, task: Task, new: Classifier | Detector) -> None:
        if isinstance(new, Classifier):
            self._previous[task] = self.pipeline.replace_classifier(new)
        else:
            previous = self.pipeline.replace_detector(new)
            if previous is not None:
                self._previous[task] = previous
        self._record(new)

    def _record(self, served: Classifier | Detector) -> None:
        if self.models_dir is not None:
            record_served(self.models_dir, served.name, served.version, served.model.path)

    def previous_version(self, task: Task) -> int | None:
        """Version of the model a rollback of ``task`` would bring back, if any."""
        with self._lock:
            previous = self._previous.get(task)
            return None if previous is None else previous.version

    def rollback(self, task: Task) -> SwapDecision:
        """Serve again the model the last swap of ``task`` replaced."""
        with self._lock:
            previous = self._previous.pop(task, None)
            if previous is None:
                raise ModelLoadError(f"no earlier {task.value} model to roll back to")
            current = self.pipeline.classifier if task == Task.CLASSIFY else self.pipeline.detector
            self._swap(task, previous)
            self._previous.pop(task, None)
            decision = SwapDecision(
                previous.name, current.version if current else -1, previous.version, True, None, None, 0, "rollback"
            )
            log.warning("model rolled back", extra=vars(decision))
            return decision
