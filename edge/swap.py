"""Hot-swapping a new global model: evaluate it on the local holdout, swap it in atomically unless it regresses.

The local holdout is the fixed part of the labeled samples that training never uses (``edge.buffer.is_holdout``).
A new classifier is scored by accuracy of the good / defective verdict, a new detector by the F1 of its boxes
against the labeled boxes (same class, IoU >= 0.5). A model that scores more than ``tolerance`` below the model
in use is not swapped in, and the decision says why; ``rollback`` brings back the model a swap replaced.

Every swap and rollback is recorded in ``models/{name}/serving.json`` (written atomically): a restarted agent
serves again the model it served before (``served_model_file``), not the one its config names.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.buffer import EdgeBuffer, LabeledSample
from edge.inference.classifier import Classifier
from edge.inference.detector import Detector, box_iou
from edge.inference.errors import ImageError, ModelLoadError
from edge.inference.images import decode_image
from edge.inference.pipeline import InspectionPipeline
from edge.inference.sessions import load_model
from edge.inference.watchdog import InferenceWatchdog
from schemas.config import InferenceConfig
from schemas.manifests import Task

log = logging.getLogger(__name__)
SERVING_RECORD = "serving.json"


def served_model_file(models_dir: Path, name: str, configured_version: int) -> Path | None:
    """The model file the edge last served for line ``name``, if recorded, still there and newer than the
    configured version (a deployment that configures a newer model wins)."""
    record = models_dir / name / SERVING_RECORD
    try:
        served = json.loads(record.read_text(encoding="utf-8"))
        version, model_file = int(served["version"]), Path(served["model_file"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "serving record unreadable; using the configured model", extra={"path": str(record), "error": str(exc)}
        )
        return None
    if version <= configured_version or not model_file.is_file():
        return None
    return model_file


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


def _images(samples: list[LabeledSample]) -> list[tuple[LabeledSample, np.ndarray]]:
    loaded = []
    for sample in samples:
        try:
            loaded.append((sample, decode_image(sample.image_path.read_bytes(), source=sample.sample_id)))
        except (OSError, ImageError) as exc:
            log.warning("holdout image skipped", extra={"sample_id": sample.sample_id, "error": str(exc)})
    return loaded


def classifier_accuracy(
    classifier: Classifier, defect_class: str, data: list[tuple[LabeledSample, np.ndarray]]
) -> float:
    index = classifier.metadata.classes.index(defect_class)
    results = classifier.predict_batch([image for _, image in data])
    hits = sum(
        (result.class_id == index) == (sample.verdict == "defective")
        for (sample, _), result in zip(data, results, strict=True)
    )
    return hits / len(data)


def detector_f1(detector: Detector, data: list[tuple[LabeledSample, np.ndarray]], iou: float = 0.5) -> float:
    """F1 of predicted boxes against labeled boxes (greedy one-to-one matching by score, same class)."""
    true_positive = predicted = expected = 0
    for (sample, _), found in zip(data, detector.predict_batch([image for _, image in data]), strict=True):
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
                Classifier(loaded, watchdog=self.watchdog)
                if task == Task.CLASSIFY
                else Detector(loaded, watchdog=self.watchdog)
            )
            if current is not None and current.name != new.name:
                raise ModelLoadError(f"{model_file}: is model line {new.name!r}, the edge serves {current.name!r}")
            holdout = _images(self.buffer.labeled_samples(holdout=True))
            before = after = None
            if current is None:
                reason = "no model of this task was in use"
            elif not holdout:
                reason = "no labeled local holdout yet; taking the new model unchecked"
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
                        len(holdout),
                        f"regresses on the local holdout: {after:.3f} vs {before:.3f} now "
                        f"(tolerance {self.tolerance:g}); keeping version {current.version}",
                    )
                    log.warning("new model not swapped in", extra=vars(decision))
                    return decision
                reason = f"holdout score {after:.3f} vs {before:.3f}"
            self._swap(task, new)
            decision = SwapDecision(
                new.name, current.version if current else -1, new.version, True, before, after, len(holdout), reason
            )
            log.info("model swapped in", extra=vars(decision))
            return decision

    def _score(self, model: Classifier | Detector, holdout: list[tuple[LabeledSample, np.ndarray]]) -> float:
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
        if self.models_dir is None:
            return
        record = self.models_dir / served.name / SERVING_RECORD
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        body = {"version": served.version, "model_file": str(served.model.path.resolve())}
        tmp.write_text(json.dumps(body), encoding="utf-8")
        tmp.replace(record)

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
