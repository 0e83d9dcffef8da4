"""The classifier inferencer: class probabilities per image (logits are soft-maxed, probabilities kept)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.inference.base import Inferencer
from edge.inference.images import Geometry
from schemas.manifests import Task
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
