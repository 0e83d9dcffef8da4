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


@pytest.mark.parametrize("labeled_kinds_only", [True, False])
def test_a_kind_without_labels_is_left_to_the_plants_that_label_it(
    crop_bundle: Path, tmp_path: Path, labeled_kinds_only: bool
) -> None:
    """A plant whose boards carry boxes of one kind only: with restricted softmax the other kind's output row is
    not taught anything (only AdamW's weight decay moves it); trained as background, it is pushed down hard."""
    from edge.training.detector import train_detector

    known, unknown = CROP_CLASSES
    train = [
        sample.model_copy(update={"boxes": [box for box in sample.boxes if box["class_name"] == known]})
        for sample in board_samples(tmp_path / "train", 16, seed=41, classes=CROP_CLASSES)
    ]
    assert any(sample.boxes for sample in train)
    run = training_job(
        crop_bundle, tmp_path, ("t-kinds", "detect"), (train, []), local_epochs=3, batch_size=16, learning_rate=0.003
    ).model_copy(update={"labeled_kinds_only": labeled_kinds_only})
    _, delta = train_detector(run, lambda _line: None)
    base = safetensors.numpy.load_file(str(crop_bundle / WEIGHTS_FILE))
    head = next(name for name in base if name.endswith("classes.weight"))
    rows = {kind: 1 + CROP_CLASSES.index(kind) for kind in CROP_CLASSES}  # row 0 is background
    moved = {
        kind: float(np.linalg.norm(delta[head][row]) / np.linalg.norm(base[head][row])) for kind, row in rows.items()
    }
    assert moved[known] > 0.05  # the labeled kind is learned either way
    if labeled_kinds_only:
        assert moved[unknown] < 0.001
    else:
        assert moved[unknown] > 0.05


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5])
def test_a_quarter_turn_moves_each_crop_s_box_with_its_pixels(turns: int) -> None:
    require_module("torch")
    import torch

    from edge.training.crop_detector import _turned

    crops = torch.zeros(2, 3, 48, 48)
    boxes = torch.tensor([[0.125, 0.25, 0.5, 0.375], [0.5, 0.0, 1.0, 0.75]])
    for crop, (x1, y1, x2, y2) in zip(crops, (boxes * 48).round().int().tolist(), strict=True):
        crop[:, y1:y2, x1:x2] = 1.0  # every channel, so the box is where the bright pixels are
    turned, moved = _turned(crops, boxes, turns)
    for crop, box in zip(turned, moved, strict=True):
        rows, cols = torch.nonzero(crop[0], as_tuple=True)
        found = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]) / 48
        torch.testing.assert_close(box, found.float(), atol=1e-6, rtol=0)
    if turns % 4:
        assert not torch.equal(turned, crops)


def test_relighting_keeps_a_composite_s_three_channels_in_agreement() -> None:
    require_module("torch")
    import torch

    from edge.inference.images import reference_composite
    from edge.training.crop_detector import _relit, as_tensor

    rng = np.random.default_rng(3)
    template = rng.choice(np.array([40, 180], np.uint8), size=(16, 16))  # x 1.3 stays below 255
    image = template.copy()
    image[4:9, 4:9] = 180 - image[4:9, 4:9] + 40  # a defect: copper swapped with substrate
    scale = 1 / 255
    crops = as_tensor([reference_composite(image, template)] * 64, scale)
    relit = _relit(crops, 0.3, torch.Generator().manual_seed(0), scale)
    factors = relit[:, 0, 0, 0] / crops[:, 0, 0, 0]  # the one factor each crop was lit by
    assert float(factors.min()) >= 0.7 - 1e-6 and float(factors.max()) <= 1.3 + 1e-6
    assert float(factors.max() - factors.min()) > 0.2, "crops are lit differently"
    np.testing.assert_allclose(relit[:, :2], crops[:, :2] * factors[:, None, None, None], atol=1e-5)
    # the difference channel is still 128 + (image - template) / 2 of the relit image and template
    expected = 128 * scale + (relit[:, 0] - relit[:, 1]) / 2
    np.testing.assert_allclose(relit[:, 2], expected, atol=1.5 * scale)
    assert torch.equal(_relit(crops, 0.0, torch.Generator().manual_seed(0), scale), crops)
