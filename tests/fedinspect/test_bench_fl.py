"""`fedinspect bench fl` on a tiny generated setting: every arm is trained and scored; the summary gives the ratios."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fedinspect.bench_fl import FlBenchSettings, run_fl_bench, summary
from schemas.bundle import MANIFEST_FILE, read_model_manifest
from schemas.manifests import TemplateInput

pytestmark = pytest.mark.slow
pytest.importorskip("ultralytics")
cv2 = pytest.importorskip("cv2")

if TYPE_CHECKING:
    import numpy as np


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
        detector_arch="yolov8n",
        pretrain_epochs=1,
        reference=True,
    )
    results = run_fl_bench(settings, echo=lines.append)
    arms = {"federated", "centralized", "plant-a alone", "plant-b alone"}
    assert set(results["detect"]) == set(results["classify"]) == arms
    for row in results["detect"].values():
        assert 0 <= row["mAP50-95"] <= row["mAP50"] <= 1
        assert set(row["AP50"]) <= {"open", "short", "mousebite", "spur", "copper", "pin-hole"}
    for row in results["classify"].values():
        assert all(0 <= row[key] <= 1 for key in ("accuracy", "escape_rate", "false_reject_rate"))
        assert 0 <= row["escape_rate_at_2pct_false_rejects"] <= 1
    assert "detect: round 2/2 aggregated" in " ".join(lines)
    # where each federated round's time went: the trainers' own stages, the rest, and the hub's part
    stages = results["detect"]["federated"]["stage_seconds"]
    assert {"prepare", "train", "score", "other", "aggregate", "write global"} <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values()) and stages["train"] > 0
    assert any("round 2/2 aggregated" in line and "train " in line and "aggregate " in line for line in lines)
    federated = results["detect"]["federated"]
    printed = f"  detect: federated: mAP50 {federated['mAP50']:.3f}, mAP50-95 {federated['mAP50-95']:.3f} ("
    assert any(line.startswith(printed) for line in lines), "each arm's figures are printed when measured"
    assert "detect: v0 = YOLOv8n, 1 epochs on generated boards" in " ".join(lines)
    assert any(line.startswith("federated / centralized mAP50-95:") for line in lines)
    assert (tmp_path / "bench" / "results.json").is_file()
    # every arm's final model is a bundle an evaluator can score elsewhere
    for task in ("detect", "classify"):
        for arm, row in results[task].items():
            bundle = Path(row["bundle"])
            assert bundle.name == f"{task}-{arm.replace(' ', '-')}"
            assert {"model.onnx", "weights.safetensors", "manifest.json"} <= {f.name for f in bundle.iterdir()}
            exported = read_model_manifest({MANIFEST_FILE: bundle / MANIFEST_FILE})
            assert exported.input.template == TemplateInput.COMPOSITE
    # both models compare with templates (their trainers compose them, as at an edge)
    assert "both models compare each image with its template" in lines[0]
    detector = read_model_manifest({MANIFEST_FILE: tmp_path / "bench" / "detector-v0" / MANIFEST_FILE})
    classifier = read_model_manifest({MANIFEST_FILE: tmp_path / "bench" / "classifier-v0" / MANIFEST_FILE})
    assert detector.input.template == classifier.input.template == TemplateInput.COMPOSITE
    assert classifier.input.channels == 3
    stored = next((tmp_path / "bench" / "images" / "plant-a").glob("*_test.png"))
    image = cv2.imread(str(stored), cv2.IMREAD_UNCHANGED)
    template = cv2.imread(str(stored.with_suffix(".template.png")), cv2.IMREAD_UNCHANGED)
    assert image.shape == template.shape == (128, 128) and (image != template).any()
    scored = cv2.imread(str(next((tmp_path / "bench" / "detect-heldout" / "images" / "val").glob("*_test.png"))))
    assert scored.shape == (128, 128, 3) and (scored[:, :, 2] != 128).any(), "scored on template comparisons"
    # a good sample is a re-acquisition of its template, never the template itself
    good = next((tmp_path / "bench" / "images" / "plant-a").glob("*_temp.png"))
    good_template = cv2.imread(str(good.with_suffix(".template.png")), cv2.IMREAD_UNCHANGED)
    assert (cv2.imread(str(good), cv2.IMREAD_UNCHANGED) != good_template).any()
    assert summary(results)[-1].startswith("federated classifier: escapes ")


def test_both_template_crops_models_on_plants_that_each_saw_some_defect_kinds(tmp_path: Path) -> None:
    from schemas.manifests import TEMPLATE_CROPS_ARCHITECTURE

    lines: list[str] = []
    settings = FlBenchSettings(
        work_dir=tmp_path / "bench",
        plants=2,
        boards=6,
        rounds=1,
        local_epochs=1,
        imgsz=192,
        reference=True,
        classifier_arch="template-crops",
        kinds_per_plant=3,
    )
    results = run_fl_bench(settings, echo=lines.append)
    assert "plant-a trained on open, short, mousebite only" in lines[0]
    assert "plant-b trained on spur, copper, pin-hole only" in lines[0]
    for task in ("detect", "classify"):
        assert set(results[task]) == {"federated", "centralized", "plant-a alone", "plant-b alone"}
        federated = read_model_manifest({MANIFEST_FILE: Path(results[task]["federated"]["bundle"]) / MANIFEST_FILE})
        assert federated.architecture.name == TEMPLATE_CROPS_ARCHITECTURE and federated.task.value == task
    assert all(0 <= row["escape_rate"] <= 1 for row in results["classify"].values())


def weights_only_v0(tmp_path: Path, size: int = 1) -> Path:
    """A version 0 folder with one zero tensor ``w`` (all that _compare reads when training is faked)."""
    import numpy as np
    import safetensors.numpy

    v0 = tmp_path / "v0"
    v0.mkdir()
    safetensors.numpy.save_file({"w": np.zeros(size, np.float32)}, str(v0 / "weights.safetensors"))
    (v0 / "manifest.json").write_text("{}")
    return v0


def _detect_row(map50: float, map50_95: float) -> dict[str, object]:
    return {"mAP50": map50, "mAP50-95": map50_95, "AP50": {"open": map50}}


def test_summary_gives_the_ratios_and_warns_when_nothing_has_learned_yet() -> None:
    learned = {
        "detect": {
            "federated": _detect_row(0.80, 0.48),
            "centralized": _detect_row(0.82, 0.50),
            "plant-a alone": _detect_row(0.60, 0.30),
            "plant-b alone": _detect_row(0.62, 0.35),
        }
    }
    lines = summary(learned)
    assert lines[-1] == (
        "federated / centralized mAP50-95: 0.960 (target >= 0.95); federated - best plant alone: +0.130 (target > 0)"
    )
    untrained = {"detect": {name: _detect_row(0.004, 0.001) for name in learned["detect"]}}
    assert summary(untrained)[-1].startswith(
        "warning: centralized mAP50 0.004 < 0.05: the training budget is too small"
    )


def test_only_the_federated_plants_train_at_the_scaled_learning_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from fedinspect import bench_fl

    v0 = weights_only_v0(tmp_path, size=3)
    calls: list[tuple[str, int, float]] = []

    def recorded_train(
        task: str,
        base_dir: Path,
        samples: list[str],
        epochs: int,
        settings: FlBenchSettings,
        work: Path,
        *,
        learning_rate: float,
        **_: object,
    ) -> tuple[int, dict[str, np.ndarray]]:
        calls.append((work.name, epochs, learning_rate))
        return len(samples), {"w": np.full(3, learning_rate, np.float32)}

    monkeypatch.setattr(bench_fl, "_train", recorded_train)
    exported: list[str] = []

    def recorded_export(v0: Path, weights: dict[str, np.ndarray], out: Path) -> Path:
        exported.append(out.name)
        return out

    monkeypatch.setattr(bench_fl, "export_arm", recorded_export)
    settings = FlBenchSettings(
        work_dir=tmp_path / "bench", rounds=2, local_epochs=3, learning_rate=0.002, federated_lr_scale=3.0
    )
    scores = bench_fl._compare(
        "detect", v0, {"plant-a": ["x"], "plant-b": ["y", "z"]}, settings, lambda w: {"w0": float(w["w"][0])}, print
    )
    assert calls == [
        ("r1-plant-a", 3, pytest.approx(0.006)),
        ("r1-plant-b", 3, pytest.approx(0.006)),
        ("r2-plant-a", 3, pytest.approx(0.006)),
        ("r2-plant-b", 3, pytest.approx(0.006)),
        ("centralized", 6, 0.002),
        ("alone-plant-a", 6, 0.002),
        ("alone-plant-b", 6, 0.002),
    ]
    # two rounds of FedAvg over deltas of 0.006 each; the other arms are v0 plus their one delta
    assert scores["federated"]["w0"] == pytest.approx(0.012)
    assert scores["centralized"]["w0"] == scores["plant-b alone"]["w0"] == pytest.approx(0.002)
    assert exported == ["detect-federated", "detect-centralized", "detect-plant-a-alone", "detect-plant-b-alone"]


def test_validation_scoring_takes_a_fifth_of_each_plants_boards_out_of_its_training() -> None:
    from edge.labels import pair_stem
    from fedinspect import bench_fl
    from fedinspect.demo_data import synthetic_plants

    data = synthetic_plants(2, train_boards=30, test_boards=3, size=64, seed=4)
    split = bench_fl._validation_data(data)
    assert split.unseen == []
    for before, after in zip(data.plants, split.plants, strict=True):
        assert sorted(i.name for i in after.train + after.test) == sorted(i.name for i in before.train)
        boards = {
            side: {pair_stem(f"{i.name}.png") for i in images}
            for side, images in (("train", after.train), ("val", after.test))
        }
        assert boards["train"].isdisjoint(boards["val"]), "both images of a board stay on one side"
        assert 0.05 < len(boards["val"]) / 30 < 0.4
        assert not {i.name for i in before.test} & {i.name for i in after.test}, "held-out test boards are not used"
    again = bench_fl._validation_data(data)
    assert [i.name for i in again.plants[0].test] == [i.name for i in split.plants[0].test]


class UnitTrainer:
    """Stands in for the edges' trainers in ``_compare``: every run returns a delta of 1 on ``w`` and is recorded by
    its work folder (relative to the task's); with ``seconds`` each run advances a fake clock, the federated arm's
    runs by ``seconds[1]``, the others by ``seconds[0]``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, seconds: tuple[float, float] | None = None) -> None:
        import types

        from fedinspect import bench_fl

        self.trained: list[str] = []
        self.now = 0.0
        self.seconds = seconds
        monkeypatch.setattr(bench_fl, "_train", self.train)
        monkeypatch.setattr(bench_fl, "export_arm", lambda v0, weights, out: out)
        if seconds is not None:
            monkeypatch.setattr(bench_fl, "time", types.SimpleNamespace(monotonic=lambda: self.now))

    def train(
        self,
        task: str,
        base_dir: Path,
        samples: list[str],
        epochs: int,
        settings: FlBenchSettings,
        work: Path,
        **kw: object,
    ) -> tuple[int, dict[str, np.ndarray]]:
        import numpy as np

        run = work.relative_to(settings.work_dir / task).as_posix()
        self.trained.append(run)
        if self.seconds is not None:
            self.now += self.seconds[1] if run.startswith("federated") else self.seconds[0]
        return len(samples), {"w": np.ones(1, np.float32)}


def compare(v0: Path, plants: dict[str, list[str]], settings: FlBenchSettings, **kw: Any) -> dict[str, Any]:
    """``bench_fl._compare`` of the detector on faked training: held-out scores report ``w`` unless ``score`` says
    otherwise; ``validate`` as given."""
    from fedinspect import bench_fl

    score = kw.pop("score", lambda w: {"w0": float(w["w"][0])})
    return bench_fl._compare("detect", v0, plants, settings, score, kw.pop("echo", print), **kw)


def test_the_federated_arm_uses_the_chosen_strategy_and_can_run_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = UnitTrainer(monkeypatch)
    settings = FlBenchSettings(
        work_dir=tmp_path / "bench",
        rounds=3,
        strategy="fedavgm",
        strategy_params=(("server_momentum", 0.5), ("server_learning_rate", 1.0)),
        arms="federated",
    )
    scores = compare(weights_only_v0(tmp_path), {"plant-a": ["x"]}, settings)
    # deltas of 1 each round; velocity 1, 1.5, 1.75: w = 1 + 1.5 + 1.75 (FedAvg would give 3)
    assert scores["federated"]["w0"] == pytest.approx(4.25)
    assert set(scores) == {"federated"} and len(trainer.trained) == 3


def test_until_converged_each_arm_stops_after_patience_steps_without_gain_and_keeps_its_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = UnitTrainer(monkeypatch)
    # validation peaks at w = 2 (the second step) for every arm; held-out scoring reports the weights it got
    settings = FlBenchSettings(work_dir=tmp_path / "bench", rounds=10, local_epochs=2, patience=2, until="converged")
    lines: list[str] = []
    scores = compare(
        weights_only_v0(tmp_path),
        {"plant-a": ["x"], "plant-b": ["y"]},
        settings,
        score=lambda w: {"mAP50": 0.5, "mAP50-95": float(w["w"][0]), "AP50": {}},
        echo=lines.append,
        validate=lambda w: {"mAP50-95": 1.0 - abs(float(w["w"][0]) - 2.0) / 10},
    )
    assert list(scores) == ["federated", "centralized", "plant-a alone", "plant-b alone"]  # reported federated first
    for row in scores.values():
        assert row["best_step"] == 2 and row["best_epochs"] == 4 and row["epochs"] == 8
        assert row["mAP50-95"] == pytest.approx(2.0)  # held out scores the best step's weights, not the last one's
        assert row["stopped"] == "no gain in 2 steps"
        assert [point["mAP50-95"] for point in row["curve"]] == pytest.approx([0.9, 1.0, 0.9, 0.8])
        assert [point["epochs"] for point in row["curve"]] == [2, 4, 6, 8]
    assert trainer.trained[:2] == ["centralized-s1", "centralized-s2"]  # the baselines first, the federated arm last
    assert trainer.trained[-3:] == ["federated-s3/plant-b", "federated-s4/plant-a", "federated-s4/plant-b"]
    assert trainer.trained.count("centralized-s4") == 1 and "centralized-s5" not in trainer.trained
    assert (tmp_path / "bench" / "detect-learning-curves.png").stat().st_size > 1000
    assert any("detect: federated: best at step 2 (no gain in 2 steps)" in line for line in lines)
    assert any(
        line.startswith("detect federated: best on validation after 4 of 8 epochs")
        for line in summary({"detect": scores})
    )


def test_until_converged_stops_an_arm_when_its_budget_share_is_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    UnitTrainer(monkeypatch)
    settings = FlBenchSettings(
        work_dir=tmp_path / "bench", rounds=50, until="converged", budget_minutes=1e-6, arms="federated"
    )
    scores = compare(
        weights_only_v0(tmp_path), {"plant-a": ["x"]}, settings, validate=lambda w: {"mAP50-95": float(w["w"][0])}
    )
    row = scores["federated"]
    # validation still improving, 49 steps left: only the spent budget stops it, after its first step
    assert row["stopped"] == "budget share of 0.0 min spent"
    assert row["epochs"] == settings.local_epochs and row["best_step"] == 1 and len(row["curve"]) == 1


def test_until_converged_passes_what_an_early_arm_leaves_of_its_share_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 minutes for 3 arms: the baselines reach their step cap in 3 minutes each, so the federated arm, last, has
    6 minutes (not an equal 4), and it stops before a step that would overrun them."""
    UnitTrainer(monkeypatch, seconds=(60.0, 150.0))
    settings = FlBenchSettings(work_dir=tmp_path / "bench", rounds=3, until="converged", budget_minutes=12, patience=5)
    scores = compare(
        weights_only_v0(tmp_path), {"plant-a": ["x"]}, settings, validate=lambda w: {"mAP50-95": float(w["w"][0])}
    )
    assert scores["centralized"]["stopped"] == scores["plant-a alone"]["stopped"] == "step cap"
    assert scores["centralized"]["seconds"] == scores["plant-a alone"]["seconds"] == pytest.approx(180)
    # 360 s left: after 2 steps of 150 s a third would end at 450 s
    assert scores["federated"]["stopped"] == "budget share of 6.0 min spent"
    assert len(scores["federated"]["curve"]) == 2
