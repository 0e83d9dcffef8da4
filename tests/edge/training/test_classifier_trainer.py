"""The classifier trainer on a real torchvision model and real images: it learns, reports holdout metrics before
and after, balances classes, keeps FedProx runs near the global weights, and fails with reasons."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from edge.training.classifier import class_indices, class_weights, train_classifier
from edge.training.jobs import TrainingError, TrainingJob, TrainingSample
from edge.training.runner import TrainerProcess
from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest
from schemas.messages import TrainingConfig

torch = pytest.importorskip("torch")


def test_class_weights_are_inverse_class_frequency() -> None:
    weights = class_weights(np.array([0, 0, 0, 1]), 3)
    # n / (k * count) with k = 2 classes present: 4 / (2 * 3) and 4 / (2 * 1); the absent class weighs nothing
    assert weights == pytest.approx([2 / 3, 2.0, 0.0])


def test_class_indices_name_the_missing_defect_class(mobilenet_bundle: Path) -> None:
    manifest = read_model_manifest({MANIFEST_FILE: mobilenet_bundle / MANIFEST_FILE})
    assert class_indices(manifest, "defective") == (0, 1)
    with pytest.raises(TrainingError, match="do not include the defect class 'scratch'"):
        class_indices(manifest, "scratch")


def parameter_drift(delta: dict[str, np.ndarray], module: Any) -> float:
    names = {name for name, _ in module.named_parameters()}
    return float(np.sqrt(sum(np.sum(delta[n].astype(np.float64) ** 2) for n in names)))


def test_training_learns_and_reports_holdout_metrics(classifier_job: Callable[..., TrainingJob]) -> None:
    progress: list[str] = []
    result, delta = train_classifier(classifier_job(), progress.append)
    assert result.num_examples == 60 and result.epochs == 4 and not result.stopped_early
    assert len(progress) == 4 and '"epoch": 4' in progress[-1]
    assert result.metrics_before["holdout_size"] == 20
    assert result.metrics_after["accuracy"] >= 0.8 > result.metrics_before["accuracy"]
    assert result.metrics_after["loss"] < result.metrics_before["loss"]
    weights = safetensors.numpy.load_file(str(classifier_job().base_dir / WEIGHTS_FILE))
    assert set(delta) == set(weights)
    assert all(delta[k].dtype == weights[k].dtype and delta[k].shape == weights[k].shape for k in weights)
    # 60 samples in batches of 16 -> 4 steps per epoch, counted by every BatchNorm
    assert int(delta["features.0.1.num_batches_tracked"]) == 16


def test_fedprox_keeps_the_local_model_near_the_global_one(classifier_job: Callable[..., TrainingJob]) -> None:
    from exporters.torch_classifier import build_torchvision_classifier

    module = build_torchvision_classifier("mobilenet_v3_small", 2, 1)
    settings = {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.003}
    _, free = train_classifier(classifier_job(settings=TrainingConfig(**settings), seed=1), lambda _: None)
    _, proximal = train_classifier(
        classifier_job(settings=TrainingConfig(**settings, proximal_mu=50.0), seed=1), lambda _: None
    )
    assert parameter_drift(proximal, module) < 0.8 * parameter_drift(free, module)


def test_unreadable_images_are_skipped_and_none_readable_fails(
    classifier_job: Callable[..., TrainingJob], blob_training_samples: list[TrainingSample], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    bad = TrainingSample(sample_id="s-bad", image=broken, verdict="good")
    gone = TrainingSample(sample_id="s-gone", image=tmp_path / "missing.png", verdict="good")
    settings = TrainingConfig(local_epochs=1, batch_size=16)
    result, _ = train_classifier(
        classifier_job(train=[*blob_training_samples[:20], bad, gone], settings=settings), lambda _: None
    )
    assert result.num_examples == 20
    with pytest.raises(TrainingError, match="none of the 2 training images could be read"):
        train_classifier(classifier_job(train=[bad, gone], settings=settings), lambda _: None)


def test_the_worker_process_returns_the_delta_and_relays_progress(classifier_job: Callable[..., TrainingJob]) -> None:
    job = classifier_job(settings=TrainingConfig(local_epochs=2, batch_size=16, learning_rate=0.003))
    progress: list[dict[str, object]] = []
    result, delta = TrainerProcess(job, timeout_s=300, on_progress=progress.append).run(threading.Event())
    assert [p["epoch"] for p in progress] == [1, 2]
    assert result.num_examples == 60 and "accuracy" in result.metrics_after
    assert set(delta) == set(safetensors.numpy.load_file(str(job.base_dir / WEIGHTS_FILE)))


def test_the_worker_process_reports_why_it_failed(classifier_job: Callable[..., TrainingJob]) -> None:
    with pytest.raises(TrainingError, match="do not include the defect class 'scratch'") as failed:
        TrainerProcess(classifier_job(defect_class="scratch"), timeout_s=300).run(threading.Event())
    assert not failed.value.interrupted


def test_a_run_past_its_time_limit_or_stopped_is_killed(classifier_job: Callable[..., TrainingJob]) -> None:
    long_run = TrainingConfig(local_epochs=1000, batch_size=16)
    with pytest.raises(TrainingError, match="ran past its time limit of 3 s") as overran:
        TrainerProcess(classifier_job(settings=long_run), timeout_s=3).run(threading.Event())
    assert not overran.value.interrupted
    stop = threading.Event()
    threading.Timer(2, stop.set).start()
    with pytest.raises(TrainingError, match="the agent is stopping") as stopped:
        TrainerProcess(classifier_job(settings=long_run), timeout_s=300).run(stop)
    assert stopped.value.interrupted


def test_the_time_budget_stops_training_early_with_a_result(classifier_job: Callable[..., TrainingJob]) -> None:
    result, _ = train_classifier(
        classifier_job(settings=TrainingConfig(local_epochs=1000, batch_size=16), deadline_s=2), lambda _: None
    )
    assert result.stopped_early and result.epochs < 1000 and "accuracy" in result.metrics_after


@pytest.mark.slow
def test_the_pretrained_classifier_learns_the_toy_set_in_a_few_steps(
    classifier_job: Callable[..., TrainingJob], pretrained_classifier_bundle: Path
) -> None:
    settings = TrainingConfig(local_epochs=2, batch_size=16, learning_rate=0.001)
    result, delta = train_classifier(
        classifier_job(base_dir=pretrained_classifier_bundle, settings=settings), lambda _: None
    )
    assert result.epochs == 2
    assert result.metrics_after["loss"] < result.metrics_before["loss"]
    assert result.metrics_after["accuracy"] >= 0.8 > result.metrics_before["accuracy"]
    assert np.any(delta["features.0.0.weight"] != 0), "full fine-tuning moves the backbone too"


@pytest.mark.slow
def test_head_only_training_leaves_every_backbone_tensor_bit_identical(
    classifier_job: Callable[..., TrainingJob], pretrained_classifier_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import exporters.common
    from schemas.manifests import TensorEncoding
    from schemas.messages import TrainScope
    from schemas.tensors import encode_tensors

    snapshots: list[dict[str, np.ndarray]] = []
    original = exporters.common.state_dict_arrays

    def recording(module: Any) -> dict[str, np.ndarray]:
        snapshots.append(original(module))
        return snapshots[-1]

    monkeypatch.setattr(exporters.common, "state_dict_arrays", recording)
    settings = {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.003}
    head = TrainingConfig(**settings, train_scope=TrainScope.HEAD)
    result, delta = train_classifier(
        classifier_job(base_dir=pretrained_classifier_bundle, settings=head, seed=1), lambda _: None
    )
    base, trained = snapshots[0], snapshots[-1]
    backbone = [key for key in base if key.startswith("features.")]
    assert len(backbone) > 300 and any(key.endswith("running_mean") for key in backbone)
    for key in backbone:
        assert trained[key].tobytes() == base[key].tobytes(), key
        assert not np.any(delta[key]), key
    assert set(delta) == set(base), "the update still names every tensor"
    assert np.any(delta["classifier.1.weight"]) and np.any(delta["classifier.1.bias"])
    assert result.metrics_after["loss"] < result.metrics_before["loss"]

    monkeypatch.setattr(exporters.common, "state_dict_arrays", original)
    _, full = train_classifier(
        classifier_job(base_dir=pretrained_classifier_bundle, settings=TrainingConfig(**settings), seed=1),
        lambda _: None,
    )
    encoding = TensorEncoding(dtype="int8", quantization="per_channel", compression="zstd")
    # frozen tensors are zeros: the head-only update is a small fraction of the full one on the wire
    assert len(encode_tensors(delta, encoding)) < 0.1 * len(encode_tensors(full, encoding))


def test_head_only_training_needs_a_known_classifier_head(
    classifier_job: Callable[..., TrainingJob], tmp_path: Path
) -> None:
    from edge.training.classifier import freeze_backbone
    from edge.training.detector import train_detector
    from schemas.messages import TrainScope
    from tests.schemas.samples import model_manifest

    with pytest.raises(TrainingError, match=r"head-only training: ultralytics architecture 'yolov8n\.yaml'"):
        freeze_backbone(torch.nn.Linear(2, 2), model_manifest())
    head = TrainingConfig(train_scope=TrainScope.HEAD)
    with pytest.raises(TrainingError, match="train_scope 'head' is for classifiers"):
        train_detector(classifier_job(task="detect", settings=head), lambda _: None)
