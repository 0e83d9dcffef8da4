"""The inferencer interface shared by the classifier and the detector (load, preprocess, run, postprocess, predict).

An inferencer is configured from the ONNX file's metadata alone; the task in the metadata must match the
inferencer, so a detector file loaded as a classifier is refused with a clear error rather than misread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import numpy as np

from edge.inference.errors import ModelLoadError
from edge.inference.images import Geometry, normalize_image, to_tensor
from edge.inference.sessions import LoadedModel, SessionRunner, load_model
from edge.inference.watchdog import InferenceWatchdog
from schemas.config import InferenceConfig
from schemas.manifests import Task

ResultT = TypeVar("ResultT")


class Inferencer(ABC, Generic[ResultT]):
    """One ONNX model: images in, typed results out."""

    task: Task

    def __init__(
        self, model: LoadedModel, *, watchdog: InferenceWatchdog | None = None, io_binding: bool | None = None
    ) -> None:
        if model.metadata.task != self.task:
            raise ModelLoadError(
                f"{model.path}: is a {model.metadata.task.value} model, but was loaded as a {self.task.value} model"
            )
        self.model = model
        self.metadata = model.metadata
        self.watchdog = watchdog
        self._runner = SessionRunner(model, io_binding=io_binding)

    @classmethod
    def load(
        cls,
        path: Path,
        config: InferenceConfig,
        *,
        cache_dir: Path,
        watchdog: InferenceWatchdog | None = None,
        io_binding: bool | None = None,
        **options: Any,
    ) -> Self:
        """Load ``path`` on the configured providers; ``options`` go to the inferencer (e.g. detector thresholds)."""
        model = load_model(path, config, cache_dir=cache_dir)
        return cls.from_model(model, watchdog=watchdog, io_binding=io_binding, **options)

    @classmethod
    def from_model(cls, model: LoadedModel, **options: Any) -> Self:
        """The inferencer for a loaded model (a family's base class may pick the subclass the model's architecture
        names)."""
        return cls(model, **options)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Geometry]]:
        """Images (grayscale or BGR uint8) to the model's input tensor and the geometry to map results back."""
        checked = [normalize_image(image) for image in images]
        return to_tensor(checked, self.metadata.input, self.model.input_dtype)

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model on a preprocessed batch, in chunks when the model has a fixed batch size."""
        static = self.model.static_batch
        if static is None or tensor.shape[0] == static:
            return self._run_once(tensor)
        parts: list[list[np.ndarray]] = []
        for start in range(0, tensor.shape[0], static):
            chunk = tensor[start : start + static]
            real = chunk.shape[0]
            if real < static:  # pad the last chunk; the padded rows are dropped below
                chunk = np.concatenate([chunk, np.zeros((static - real, *chunk.shape[1:]), dtype=chunk.dtype)])
            parts.append([output[:real] for output in self._run_once(chunk)])
        return [np.concatenate([part[i] for part in parts]) for i in range(len(parts[0]))]

    def _run_once(self, tensor: np.ndarray) -> list[np.ndarray]:
        if self.watchdog is None:
            return self._runner.run(tensor)
        with self.watchdog.track(self.name):
            return self._runner.run(tensor)

    @abstractmethod
    def postprocess(self, outputs: list[np.ndarray], geometries: list[Geometry]) -> list[ResultT]:
        """Raw outputs of a batch to one result per image."""

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[ResultT]:
        if not images:
            return []
        tensor, geometries = self.preprocess(images)
        return self.postprocess(self.run(tensor), geometries)

    def predict(self, image: np.ndarray) -> ResultT:
        return self.predict_batch([image])[0]
