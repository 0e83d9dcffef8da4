"""Fixtures for the trainers: a torchvision classifier bundle and labeled samples written as image files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge.training.jobs import TrainingJob, TrainingSample
from schemas.config import AugmentationConfig
from schemas.messages import TrainingConfig
from tests.conftest import require_module
from tests.support.models import CLASSIFIER_SIZE, blob_samples, small_classifier_bundle


@pytest.fixture(scope="session")
def mobilenet_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained torchvision mobilenet_v3_small (2 classes, 1 channel, 64 px) as a model bundle."""
    require_module("torch")
    return small_classifier_bundle(tmp_path_factory.mktemp("training") / "mobilenet", size=CLASSIFIER_SIZE, seed=3)


@pytest.fixture(scope="session")
def blob_training_samples(tmp_path_factory: pytest.TempPathFactory) -> list[TrainingSample]:
    """80 labeled good / defective images (PNG files), balanced."""
    import cv2

    folder = tmp_path_factory.mktemp("blob-samples")
    images, labels = blob_samples(80, seed=3)
    samples = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / f"{index:03d}.png"
        cv2.imwrite(str(path), image)
        samples.append(TrainingSample(sample_id=f"s-{index:03d}", image=path, verdict="defective" if label else "good"))
    return samples


@pytest.fixture
def classifier_job(
    mobilenet_bundle: Path, blob_training_samples: list[TrainingSample], tmp_path: Path
) -> Callable[..., TrainingJob]:
    def make(**changes: object) -> TrainingJob:
        fields: dict[str, object] = {
            "run_id": "t-test",
            "task": "classify",
            "base_dir": mobilenet_bundle,
            "work_dir": tmp_path / "run",
            "train": blob_training_samples[:60],
            "holdout": blob_training_samples[60:],
            "settings": TrainingConfig(local_epochs=4, batch_size=16, learning_rate=0.003),
            "augmentation": AugmentationConfig(),
            "deadline_s": 300,
            "threads": 2,
        }
        fields.update(changes)
        return TrainingJob.model_validate(fields)

    return make
