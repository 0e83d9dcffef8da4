"""The template-crops detector trainer in its worker process: boards compared with their templates, a real export."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from edge.training.jobs import TrainingError, TrainingJob
from edge.training.runner import TrainerProcess
from schemas.bundle import WEIGHTS_FILE
from schemas.messages import TrainScope
from tests.conftest import require_module
from tests.support.models import CROP_CLASSES
from tests.support.training import board_samples, training_job

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def crop_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("torch")
    from fedinspect.seed_models import initial_crop_detector

    return initial_crop_detector(
        tmp_path_factory.mktemp("crops") / "v0", name="pcb-detector", classes=CROP_CLASSES, seed=0
    )


def job(bundle: Path, tmp_path: Path, **settings: object) -> TrainingJob:
    train = board_samples(tmp_path / "train", 40, seed=31, classes=CROP_CLASSES)
    holdout = board_samples(tmp_path / "holdout", 12, seed=32, classes=CROP_CLASSES)
    defaults = {"local_epochs": 25, "batch_size": 16, "learning_rate": 0.003, "proximal_mu": 0.01}
    return training_job(bundle, tmp_path, ("t-crops", "detect"), (train, holdout), **(defaults | settings))


def test_training_learns_the_defects_and_yields_a_delta_of_every_tensor(crop_bundle: Path, tmp_path: Path) -> None:
    progress: list[dict[str, object]] = []
    result, delta = TrainerProcess(job(crop_bundle, tmp_path), timeout_s=600, on_progress=progress.append).run(
        threading.Event()
    )
    assert [p["epoch"] for p in progress] == list(range(1, 26))
    assert result.num_examples == 40 and result.epochs == 25 and not result.stopped_early
    assert result.metrics_before["mAP50"] < 0.2  # untrained: background and classes at chance
    assert result.metrics_after["mAP50"] > 0.9  # both kinds told apart and framed
    assert result.metrics_after["mAP50"] > result.metrics_before["mAP50"] + 0.5
    base = safetensors.numpy.load_file(str(crop_bundle / WEIGHTS_FILE))
    assert set(delta) == set(base)
    assert all(delta[k].shape == base[k].shape for k in base)
    assert any(float(np.abs(v).max()) > 0 for k, v in delta.items() if k.endswith("weight"))


def test_head_only_training_is_refused_for_it(crop_bundle: Path, tmp_path: Path) -> None:
    from edge.training.detector import train_detector

    with pytest.raises(TrainingError, match="train_scope 'head' is for classifiers"):
        train_detector(job(crop_bundle, tmp_path, train_scope=TrainScope.HEAD), lambda _line: None)
