"""`fedinspect bench fl` on a tiny generated setting: every arm is trained and scored; the summary gives the ratios."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedinspect.bench_fl import FlBenchSettings, run_fl_bench, summary

pytestmark = pytest.mark.slow
pytest.importorskip("ultralytics")


def test_federated_centralized_and_alone_are_each_trained_and_scored(tmp_path: Path) -> None:
    lines: list[str] = []
    settings = FlBenchSettings(
        work_dir=tmp_path / "bench",
        plants=2,
        boards=4,
        rounds=2,
        local_epochs=1,
        imgsz=128,
        classifier_size=64,
        pretrain_epochs=1,
    )
    results = run_fl_bench(settings, echo=lines.append)
    arms = {"federated", "centralized", "plant-a alone", "plant-b alone"}
    assert set(results["detect"]) == set(results["classify"]) == arms
    for row in results["detect"].values():
        assert 0 <= row["mAP50-95"] <= row["mAP50"] <= 1
        assert set(row["AP50"]) <= {"open", "short", "mousebite", "spur", "copper", "pin-hole"}
    assert all(0 <= row["accuracy"] <= 1 for row in results["classify"].values())
    assert "detect: round 2/2 aggregated" in " ".join(lines)
    assert "detect: v0 = YOLOv8n, 1 epochs on generated boards" in " ".join(lines)
    assert any(line.startswith("federated / centralized mAP50-95:") for line in lines)
    assert (tmp_path / "bench" / "results.json").is_file()
    assert summary(results)[-1].startswith("classifier accuracy: federated ")
