"""The template-crops detector trainer in its worker process: boards compared with their templates, a real export."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from edge.training.jobs import TrainingError, TrainingJob, TrainingSample
from edge.training.runner import TrainerProcess
from schemas.bundle import WEIGHTS_FILE
from schemas.config import AugmentationConfig
from schemas.messages import TrainingConfig, TrainScope
from tests.conftest import require_module
from tests.support.models import CROP_CLASSES, board_pairs

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def crop_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("torch")
    from fedinspect.seed_models import initial_crop_detector

    return initial_crop_detector(
        tmp_path_factory.mktemp("crops") / "v0", name="pcb-detector", classes=CROP_CLASSES, seed=0
    )


def labeled_boards(folder: Path, count: int, seed: int) -> list[TrainingSample]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for index, (image, template, boxes) in enumerate(board_pairs(count, seed)):
        path, template_path = folder / f"{seed}-{index}.png", folder / f"{seed}-{index}.template.png"
        cv2.imwrite(str(path), image)
        cv2.imwrite(str(template_path), template)
        samples.append(
            TrainingSample(
                sample_id=f"s-{seed}-{index}",
                image=path,
                template=template_path,
                verdict="defective" if boxes else "good",
                boxes=[
                    {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "class_name": CROP_CLASSES[kind]}
                    for kind, x1, y1, x2, y2 in boxes
                ],
            )
        )
    return samples


def job(bundle: Path, tmp_path: Path, **settings: object) -> TrainingJob:
    return TrainingJob(
        run_id="t-crops",
        task="detect",
        base_dir=bundle,
        work_dir=tmp_path / "run",
        train=labeled_boards(tmp_path / "train", 40, seed=31),
        holdout=labeled_boards(tmp_path / "holdout", 12, seed=32),
        settings=TrainingConfig.model_validate(
            {"local_epochs": 25, "batch_size": 16, "learning_rate": 0.003, "proximal_mu": 0.01} | settings
        ),
        augmentation=AugmentationConfig(),
        threads=2,
        deadline_s=300,
    )


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
