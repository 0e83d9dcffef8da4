"""The template-crops classifier trainer: good / defective verdicts alone, no boxes, then served by the edge."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge.training.jobs import TrainingError, TrainingJob, TrainingSample
from schemas.messages import TrainScope
from tests.conftest import require_module
from tests.support.models import crop_model_bundle
from tests.support.training import board_samples, training_job

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def crop_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained template-crops classifier on 32 px crops (the default 48 px costs twice the CPU)."""
    require_module("torch")
    return crop_model_bundle(tmp_path_factory.mktemp("crops") / "v0", task="classify", crop_px=32)


def verdict_samples(folder: Path, count: int, seed: int) -> list[TrainingSample]:
    """Boards with dust on every image, labeled by verdict only (no boxes drawn)."""
    return board_samples(folder, count, seed, classes=None, specks=4)


def job(bundle: Path, tmp_path: Path, **settings: object) -> TrainingJob:
    samples = verdict_samples(tmp_path / "train", 32, seed=41), verdict_samples(tmp_path / "holdout", 20, seed=42)
    defaults = {"local_epochs": 12, "batch_size": 32, "learning_rate": 0.003, "proximal_mu": 0.01}
    return training_job(bundle, tmp_path, ("t-crop-classifier", "classify"), samples, **(defaults | settings))


def test_board_loss_is_the_worst_candidate_and_every_good_crop(crop_classifier: Path) -> None:
    import torch

    from edge.training.crop_classifier import board_loss

    def bce(logit: float, target: float) -> float:
        p = 1 / (1 + math.exp(-logit))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    logits = torch.tensor([0.5, -1.0, 2.0, -2.0, -0.5])  # board 0: crops 0-1 (good), board 1: crops 2-4 (defective)
    owners = torch.tensor([0, 0, 1, 1, 1])
    targets = torch.tensor([0, 0, -1, -1, -1], dtype=torch.int8)  # verdicts only: a defective board's crops unknown
    loss = board_loss(logits, owners, targets, torch.tensor([False, True]), torch.tensor([1.0, 3.0]))
    good = bce(0.5, 0) + (bce(0.5, 0) + bce(-1.0, 0)) / 2  # its worst crop, and each of its crops
    defective = bce(2.0, 1)  # only its most defect-like crop: the others may be dust
    assert float(loss) == pytest.approx((good * 1.0 + defective * 3.0) / 4.0, rel=1e-6)


def test_a_boxed_defective_board_teaches_each_crop_its_box_label(crop_classifier: Path) -> None:
    import torch

    from edge.training.crop_classifier import board_loss

    def bce(logit: float, target: float) -> float:
        p = 1 / (1 + math.exp(-logit))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    logits = torch.tensor([2.0, -0.5, 1.0, -3.0])  # one defective board: a plain defect, a faint one, dust, ?
    targets = torch.tensor([1, 1, 0, -1], dtype=torch.int8)
    loss = board_loss(logits, torch.zeros(4, dtype=torch.int64), targets, torch.tensor([True]), torch.tensor([2.0]))
    worst = bce(2.0, 1)
    crops = (bce(2.0, 1) + bce(-0.5, 1) + bce(1.0, 0)) / 3  # the faint defect learns too; the unknown crop does not
    assert float(loss) == pytest.approx(worst + crops, rel=1e-6)


def test_box_labels_mark_candidates_as_defect_background_or_unknown() -> None:
    from edge.training.crop_classifier import UNKNOWN, labeled_board
    from edge.training.crop_detector import JITTERED_COPIES
    from schemas.manifests import ProposalSpec

    spec = ProposalSpec(crop_px=32, min_box_px=20, pad_px=2, open_px=1, group_px=1)
    template = np.full((200, 200), 255, np.uint8)
    image = template.copy()
    image[40:50, 40:50] = 0  # a labeled defect
    image[120:130, 120:130] = 0  # dust, far from every box
    image[40:50, 140:150] = 0  # a difference the box only grazes
    composite = np.dstack([image, template, cv2.absdiff(image, template)])
    boxes = np.array([[36, 36, 54, 54], [146, 30, 166, 60]], np.float32)
    rng = np.random.default_rng(0)
    crops, targets = labeled_board(composite, boxes, True, spec, rng)
    assert crops.shape == (3 + 2 * JITTERED_COPIES, 32, 32, 3)
    assert sorted(targets[:3].tolist()) == [UNKNOWN, 0, 1]
    assert targets[3:].tolist() == [1] * (2 * JITTERED_COPIES)  # jittered copies around both boxes
    _, verdict_only = labeled_board(composite, np.zeros((0, 4), np.float32), True, spec, rng)
    assert verdict_only.tolist() == [UNKNOWN] * 3
    _, good = labeled_board(composite, np.zeros((0, 4), np.float32), False, spec, rng)
    assert good.tolist() == [0] * 3


@pytest.mark.slow
def test_it_learns_from_verdicts_and_the_edge_serves_what_it_learned(crop_classifier: Path, tmp_path: Path) -> None:
    import safetensors.numpy

    from edge.inference.classifier import Classifier
    from edge.inference.images import decode_image, reference_composite
    from edge.training.classifier import train_classifier
    from exporters.rebuild import rebuild_and_export
    from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest
    from schemas.config import InferenceConfig

    training = job(crop_classifier, tmp_path)
    progress: list[str] = []
    result, delta = train_classifier(training, progress.append)  # dispatched to the crop classifier's trainer
    assert len(progress) == 12 and result.epochs == 12 and result.num_examples == 32
    assert result.metrics_before["accuracy"] <= 0.6  # untrained: every board about the same score
    assert result.metrics_after["accuracy"] >= 0.9  # dust told from defects without a box drawn
    base = safetensors.numpy.load_file(str(crop_classifier / WEIGHTS_FILE))
    assert set(delta) == set(base)
    assert all(not np.any(delta[key]) for key in base if key.startswith("box.")), "nothing trains the unused boxes"
    manifest = read_model_manifest({MANIFEST_FILE: crop_classifier / MANIFEST_FILE})
    trained = tmp_path / "v1"
    trained.mkdir()
    weights = {key: np.ascontiguousarray((base[key] + delta[key]).astype(base[key].dtype)) for key in base}
    safetensors.numpy.save_file(weights, str(trained / WEIGHTS_FILE))
    rebuild_and_export(
        manifest.model_copy(update={"version": 1, "parent": 0}), trained / WEIGHTS_FILE, tmp_path / "v1-bundle"
    )
    served = Classifier.load(tmp_path / "v1-bundle" / "model.onnx", InferenceConfig(), cache_dir=tmp_path)
    composites = [
        reference_composite(decode_image(s.image.read_bytes()), decode_image(s.template.read_bytes()))
        for s in training.holdout
        if s.template is not None
    ]
    verdicts = [r.class_name for r in served.predict_batch(composites)]
    accuracy = np.mean([v == s.verdict for v, s in zip(verdicts, training.holdout, strict=True)])
    assert accuracy == pytest.approx(result.metrics_after["accuracy"]), "the edge serves what the trainer scored"


def test_head_only_training_is_refused_for_it(crop_classifier: Path, tmp_path: Path) -> None:
    from edge.training.classifier import train_classifier

    with pytest.raises(TrainingError, match="train_scope 'head' needs a pretrained backbone"):
        train_classifier(job(crop_classifier, tmp_path, train_scope=TrainScope.HEAD), lambda _line: None)


def test_an_edge_whose_defect_class_is_not_the_models_is_refused(crop_classifier: Path, tmp_path: Path) -> None:
    from edge.training.classifier import train_classifier

    training = job(crop_classifier, tmp_path).model_copy(update={"defect_class": "good"})
    with pytest.raises(TrainingError, match="makes a board 'defective' when a candidate is a defect"):
        train_classifier(training, lambda _line: None)
