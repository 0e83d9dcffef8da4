"""Training jobs for the trainer tests: generated images written as PNG files and labeled as the buffer would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.training.jobs import TrainingJob, TrainingSample
from schemas.config import AugmentationConfig
from schemas.messages import TrainingConfig
from tests.support.models import board_pairs, shapes_samples

Boxes = list[tuple[int, int, int, int, int]]
"""(class index, x1, y1, x2, y2) per box, as the generators in ``tests.support.models`` give them."""


def _write_sample(
    folder: Path, name: str, image: np.ndarray, template: np.ndarray | None, boxes: Boxes, classes: Sequence[str] | None
) -> TrainingSample:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    cv2.imwrite(str(path), image)
    template_path = None
    if template is not None:
        template_path = folder / f"{name}.template.png"
        cv2.imwrite(str(template_path), template)
    named = [] if classes is None else [(classes[kind], x1, y1, x2, y2) for kind, x1, y1, x2, y2 in boxes]
    return TrainingSample(
        sample_id=f"s-{name}",
        image=path,
        template=template_path,
        verdict="defective" if boxes else "good",
        boxes=[{"x1": x1, "y1": y1, "x2": x2, "y2": y2, "class_name": label} for label, x1, y1, x2, y2 in named],
    )


def board_samples(
    folder: Path, count: int, seed: int, *, classes: Sequence[str] | None, specks: int = 0
) -> list[TrainingSample]:
    """``board_pairs`` boards with their templates; boxes named from ``classes``, or none (None: verdict only)."""
    return [
        _write_sample(folder, f"{seed}-{index}", image, template, boxes, classes)
        for index, (image, template, boxes) in enumerate(board_pairs(count, seed, specks=specks))
    ]


def shape_samples(folder: Path, count: int, seed: int, *, classes: Sequence[str]) -> list[TrainingSample]:
    """``shapes_samples`` images (no template), every one defective with its boxes."""
    return [
        _write_sample(folder, f"{seed}-{index}", image, None, boxes, classes)
        for index, (image, boxes) in enumerate(shapes_samples(count, seed))
    ]


def training_job(
    bundle: Path, tmp_path: Path, run: tuple[str, str], samples: tuple[list[TrainingSample], ...], **settings: Any
) -> TrainingJob:
    """A job on ``bundle``: ``run`` is (run id, task), ``samples`` (train, holdout); the default augmentation, 2
    threads and a 300 s deadline."""
    train, holdout = samples
    return TrainingJob(
        run_id=run[0],
        task=run[1],
        base_dir=bundle,
        work_dir=tmp_path / "run",
        train=train,
        holdout=holdout,
        settings=TrainingConfig.model_validate(settings),
        augmentation=AugmentationConfig(),
        threads=2,
        deadline_s=300,
    )
