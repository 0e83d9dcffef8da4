"""The Ultralytics detector trainer in its worker process, from a real exported YOLO bundle and labeled images."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import safetensors.numpy

from edge.training.jobs import TrainingJob, TrainingSample
from edge.training.runner import TrainerProcess
from schemas.bundle import WEIGHTS_FILE
from schemas.config import AugmentationConfig
from schemas.messages import TrainingConfig
from tests.support.models import DETECTOR_CLASSES, shapes_samples

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")


def labeled_shapes(folder: Path, count: int, seed: int) -> list[TrainingSample]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for index, (image, boxes) in enumerate(shapes_samples(count, seed)):
        path = folder / f"{seed}-{index}.png"
        cv2.imwrite(str(path), image)
        samples.append(
            TrainingSample(
                sample_id=f"s-{seed}-{index}",
                image=path,
                verdict="defective",
                boxes=[
                    {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "class_name": DETECTOR_CLASSES[kind]}
                    for kind, x1, y1, x2, y2 in boxes
                ],
            )
        )
    return samples


def test_detector_training_yields_a_delta_of_the_global_tensors_and_holdout_map(
    detector_bundle: Path, tmp_path: Path
) -> None:
    job = TrainingJob(
        run_id="t-detector",
        task="detect",
        base_dir=detector_bundle,
        work_dir=tmp_path / "run",
        train=labeled_shapes(tmp_path / "train", 12, seed=21),
        holdout=labeled_shapes(tmp_path / "holdout", 4, seed=22),
        settings=TrainingConfig(local_epochs=2, batch_size=8, learning_rate=0.0005, proximal_mu=0.01),
        augmentation=AugmentationConfig(),
        threads=2,
        deadline_s=300,
    )
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
