"""The classifier inferencers: class probabilities per image (logits are soft-maxed, probabilities kept).

``Classifier`` serves a whole-image model. ``CropClassifier`` serves a template-crops model of one defect class
(``exporters.crop_detector.export_crop_classifier``): the candidates where the image differs from its template
(``edge.inference.proposals``), one network pass over their crops, and the board as defective as its most
defect-like candidate (an image that differs from its template nowhere is good). ``Classifier.load`` (and
``from_model``) opens either, as the file's architecture says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.inference.base import Inferencer
from edge.inference.errors import ModelLoadError
from edge.inference.images import Geometry, to_tensor
from edge.inference.proposals import served_crops
from edge.inference.sessions import LoadedModel
from edge.inference.watchdog import InferenceWatchdog
from schemas.manifests import CROP_DEFECT_CLASS_PARAM, TEMPLATE_CROPS_ARCHITECTURE, ProposalSpec, Task
from schemas.onnxmeta import ScoreKind


@dataclass(frozen=True)
class Classification:
    """Probabilities over the classifier's classes for one image."""

    class_id: int
    class_name: str
    probabilities: tuple[float, ...]

    def probability(self, class_id: int) -> float:
        return self.probabilities[class_id]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


class Classifier(Inferencer[Classification]):
    task = Task.CLASSIFY

    @classmethod
    def from_model(cls, model: LoadedModel, **options: Any) -> Classifier:  # the kind the file's architecture says
        return open_classifier(model, **options) if cls is Classifier else cls(model, **options)

    def postprocess(self, outputs: list[np.ndarray], geometries: list[Geometry]) -> list[Classification]:
        scores = outputs[0].astype(np.float32).reshape(len(geometries), -1)
        classes = self.metadata.classes
        if scores.shape[1] != len(classes):
            raise ValueError(
                f"{self.model.path}: model gives {scores.shape[1]} scores but its metadata names {len(classes)} classes"
            )
        probabilities = scores if self.metadata.scores == ScoreKind.PROBABILITIES else softmax(scores)
        best = probabilities.argmax(axis=1)
        return [
            Classification(class_id=int(index), class_name=classes[int(index)], probabilities=tuple(row.tolist()))
            for index, row in zip(best, probabilities, strict=True)
        ]


class CropClassifier(Classifier):
    """A template-crops classifier: a board is as defective as its most defect-like candidate.

    Images come as template comparisons (``reference_composite``, which the pipeline builds for models whose input
    template is 'composite').
    """

    def __init__(
        self, model: LoadedModel, *, watchdog: InferenceWatchdog | None = None, io_binding: bool | None = None
    ) -> None:
        super().__init__(model, watchdog=watchdog, io_binding=io_binding)  # first: is it a classifier at all
        architecture = model.metadata.architecture
        if architecture is None or architecture.name != TEMPLATE_CROPS_ARCHITECTURE:
            raise ModelLoadError(f"{model.path}: is not a {TEMPLATE_CROPS_ARCHITECTURE} model")
        classes = model.metadata.classes
        defect_class = architecture.params.get(CROP_DEFECT_CLASS_PARAM)
        if len(classes) != 2 or defect_class not in classes:
            raise ModelLoadError(
                f"{model.path}: a template-crops classifier has two classes and names one of them its "
                f"{CROP_DEFECT_CLASS_PARAM!r}; this one has classes {list(classes)} and {defect_class!r}"
            )
        try:
            self.proposals = ProposalSpec.from_params(architecture.params)
        except ValueError as exc:
            raise ModelLoadError(f"{model.path}: invalid proposal settings in its architecture: {exc}") from None
        outputs = model.session.get_outputs()
        channels = outputs[0].shape[1] if len(outputs) == 2 and len(outputs[0].shape) == 2 else None
        if len(outputs) != 2 or (isinstance(channels, int) and channels != 2):
            raise ModelLoadError(
                f"{model.path}: a template-crops classifier gives scores [crops, 2] (background, defect) and boxes "
                f"[crops, 4]; this one has outputs {[tuple(o.shape) for o in outputs]}"
            )
        self.defect_index = classes.index(str(defect_class))

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Classification]:
        """Candidates of every image, one network pass over all their crops, then each board's verdict."""
        _, windows, crops = served_crops(list(images), self.proposals, f"{self.name} v{self.version}")
        counts = [len(found) for found in windows]
        defect = np.zeros(0, np.float32)
        if crops:
            tensor, _ = to_tensor(crops, self.metadata.input, self.model.input_dtype)
            defect = self.run(tensor)[0][:, 1].astype(np.float32)
        results = []
        start = 0
        classes = self.metadata.classes
        good_index = 1 - self.defect_index
        for count in counts:
            board = float(defect[start : start + count].max()) if count else 0.0
            start += count
            probabilities = [0.0, 0.0]
            probabilities[self.defect_index], probabilities[good_index] = board, 1.0 - board
            best = self.defect_index if board > 0.5 else good_index
            results.append(Classification(best, classes[best], tuple(probabilities)))
        return results

    def postprocess(self, outputs: list[np.ndarray], geometries: list[Geometry]) -> list[Classification]:
        raise TypeError("a template-crops model's outputs are per candidate, not per image: use predict_batch")


def open_classifier(model: LoadedModel, **options: Any) -> Classifier:
    """The classifier inferencer for a loaded model: a template-crops model or a whole-image one."""
    architecture = model.metadata.architecture
    if architecture is not None and architecture.name == TEMPLATE_CROPS_ARCHITECTURE:
        return CropClassifier(model, **options)
    return Classifier(model, **options)
