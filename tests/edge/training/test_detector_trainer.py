"""The Ultralytics detector trainer in its worker process, from a real exported YOLO bundle and labeled images."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import safetensors.numpy

from edge.training.runner import TrainerProcess
from schemas.bundle import WEIGHTS_FILE
from tests.support.models import DETECTOR_CLASSES
from tests.support.training import shape_samples, training_job

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")


def test_detector_training_yields_a_delta_of_the_global_tensors_and_holdout_map(
    detector_bundle: Path, tmp_path: Path
) -> None:
    train = shape_samples(tmp_path / "train", 12, seed=21, classes=DETECTOR_CLASSES)
    holdout = shape_samples(tmp_path / "holdout", 4, seed=22, classes=DETECTOR_CLASSES)
    settings = {"local_epochs": 2, "batch_size": 8, "learning_rate": 0.0005, "proximal_mu": 0.01}
    job = training_job(detector_bundle, tmp_path, ("t-detector", "detect"), (train, holdout), **settings)
    progress: list[dict[str, object]] = []
    result, delta = TrainerProcess(job, timeout_s=600, on_progress=progress.append).run(threading.Event())
    assert [p["epoch"] for p in progress] == [1, 2]
    assert result.num_examples == 12 and result.epochs == 2
    assert set(result.metrics_before) == set(result.metrics_after) == {"mAP50", "mAP50-95"}
    assert result.metrics_before["mAP50"] > 0.3, "the fixture detector finds the shapes before fine-tuning"
    weights = safetensors.numpy.load_file(str(detector_bundle / WEIGHTS_FILE))
    assert set(delta) == set(weights)
    assert all(delta[k].shape == weights[k].shape and delta[k].dtype == weights[k].dtype for k in weights)
    assert any(float(abs(delta[k]).max()) > 0 for k in weights if k.endswith(".weight"))
    # 90-degree rotation adds one turned copy of every training image; the holdout goes to val untouched
    dataset = job.work_dir / "dataset"
    assert len(list((dataset / "images" / "train").glob("*.png"))) == 24
    assert len(list((dataset / "images" / "val").glob("*.png"))) == 4
