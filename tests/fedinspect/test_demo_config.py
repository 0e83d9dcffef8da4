"""The demo's hub plan: which lines it federates, how each trains and aggregates (a valid hub config)."""

from __future__ import annotations

from pathlib import Path

from fedinspect.demo import CLASSIFIER, DETECTOR, DemoSettings, _hub_config
from schemas.config import HubConfig, RoundPlanConfig


def plans(settings: DemoSettings, tmp_path: Path) -> dict[str, RoundPlanConfig]:
    config = HubConfig.model_validate(_hub_config(settings, tmp_path, {"host": "127.0.0.1", "port": 1883}, 8080))
    return {plan.model_name: plan for plan in config.rounds}


def test_with_templates_both_template_crops_lines_are_federated_with_fedavg(tmp_path: Path) -> None:
    settings = DemoSettings(rounds=3, plants=3)
    lines = plans(settings, tmp_path)
    assert list(lines) == [CLASSIFIER, DETECTOR]
    for name in (CLASSIFIER, DETECTOR):
        plan = lines[name]
        assert plan.max_rounds == 3 and plan.min_updates == 3
        assert plan.aggregation is not None and plan.aggregation.strategy == "fedavg"
        assert plan.training.batch_size == settings.crop_batch_size
        assert plan.training.learning_rate == settings.crop_learning_rate
    assert lines[CLASSIFIER].training.local_epochs == settings.crop_local_epochs
    assert lines[DETECTOR].training.local_epochs == settings.crop_detector_local_epochs


def test_without_templates_only_the_pretrained_classifier_is_federated_with_server_momentum(tmp_path: Path) -> None:
    settings = DemoSettings(reference=False, classifier_arch="mobilenet_v2", detector_arch="yolov8n")
    lines = plans(settings, tmp_path)
    assert list(lines) == [CLASSIFIER]
    aggregation = lines[CLASSIFIER].aggregation
    assert (
        aggregation is not None and aggregation.strategy == "fedavgm" and aggregation.params["server_momentum"] == 0.5
    )
    assert lines[CLASSIFIER].training.learning_rate == settings.learning_rate
