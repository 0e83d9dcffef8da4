"""``fedinspect bench fl``: is federated learning worth it? Federated vs centralized vs each plant alone.

The same data, the same training budget (rounds x local epochs epochs over each plant's images), the same
trainers the edges run (``edge.training``), the hub's FedAvg, in one process without the network. Scored on a
held-out split: every plant's test images plus the boards no plant trained on (held-out DeepPCB groups or a
generated style no plant has). Prints mAP50, mAP50-95 and per-class AP50 for the detector, accuracy for the
classifier, and the ratios: federated / centralized and federated vs the best plant alone.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedinspect.demo_data import LabeledImage, Plant, PlantData, load_plants, plant_kinds

Echo = Callable[[str], None]
MEANINGFUL_MAP50 = 0.05
"""Below this centralized mAP50 no arm has learned to detect anything yet, and the ratios are noise."""


@dataclass(frozen=True)
class FlBenchSettings:
    work_dir: Path
    task: str = "both"
    rounds: int = 5
    local_epochs: int = 2
    plants: int = 3
    boards: int = 40
    imgsz: int = 320
    classifier_size: int = 128
    strategy: str = "fedavg"
    """The hub's aggregation strategy for the federated arm (``hub.strategies``), with ``strategy_params``."""
    strategy_params: tuple[tuple[str, float], ...] = ()
    arms: str = "all"
    """all: federated, centralized and each plant alone; federated: only the federated arm (to compare strategies
    or schedules against baselines measured once)."""
    until: str = "epochs"
    """epochs: every arm trains rounds x local epochs epochs. converged: every arm trains in steps of local epochs
    (a round for the federated arm), scored after each on validation boards (a fifth of each plant's training
    boards, taken out of training), until ``patience`` steps bring no gain, ``rounds`` steps are done, or its share
    of ``budget_minutes`` is spent; its best step on validation is then scored once on the held-out set."""
    patience: int = 3
    budget_minutes: float = 90.0
    """converged: the wall-clock budget of all arms together. The baselines train first, the federated arm last;
    each arm gets an equal share of what is left when it starts, so what an arm that stops early leaves passes on."""
    score_on: str = "held-out"
    """held-out: every plant's test split and the unseen boards. validation: a fifth of each plant's training boards
    (by board, so both images of a pair stay together), taken out of its training split; no unseen boards. Choose
    settings on validation, then score the chosen configuration once on the held-out set."""
    classifier_arch: str = "mobilenet_v2"
    """A torchvision architecture, or template-crops: a board as defective as the most defect-like place where it
    differs from its template (``edge.training.crop_classifier``; needs ``reference``)."""
    pretrained: bool = True
    """Classifier v0 on the packaged ImageNet backbone (``exporters.pretrained``, mobilenet_v2 only), else from
    random weights."""
    detector_arch: str = "template-crops"
    """template-crops: candidates where a board differs from its template, each named by a small network on its
    crop (``exporters.crop_detector``; needs ``reference``); yolov8n: Ultralytics YOLOv8n at ``imgsz``."""
    pretrain_epochs: int = 0
    """Detector version 0 (yolov8n): trained this many epochs on generated boards first (0: untrained)."""
    max_images: int | None = None
    threads: int = 2
    device: str = "cpu"
    """Where every arm trains and the detector is scored: cpu, or cuda (cuda:N)."""
    seed: int = 0
    deeppcb: Path | None = None
    kinds_per_plant: int | None = None
    """Each plant's training boards hold only this many of the defect kinds (``demo_data.plant_kinds``; DeepPCB: the
    others painted over with the template), its test boards and the unseen boards every kind: plants that differ in
    what they have seen. None: every plant has every kind its boards have."""
    reference: bool = False
    """Both models see each image with its board's template (``reference_composite``), as an edge with
    ``inspection.templates_dir`` serves them; good samples are re-acquisitions of their template
    (``demo_data.reacquire``), never the template itself."""
    learning_rate: float = 0.001
    """Every arm's optimizer step size (AdamW for the detector, Adam for the classifier)."""
    crop_detector_batch: int = 64
    """Crops a step of the template-crops detector (64 on DeepPCB; the demo's generated boards train at 32,
    ``DemoSettings.crop_batch_size``)."""
    labeled_kinds_only: bool = True
    """Template-crops detector: each run leaves the defect kinds its training data has no box of out of the loss's
    softmax (``TrainingJob.labeled_kinds_only``); False trains them as background, as before."""
    detector_augmentation: tuple[tuple[str, str], ...] = ()
    """The detector's training-image changes as ``training.augmentation`` keys in edge.yaml say them (e.g.
    ``("rotate90", "false")``), over the defaults; every arm trains with the same. The classifier keeps flips only."""
    learning_rate_decay: float = 1.0
    """Round n (or step n, with ``until`` converged: every arm's) trains at the rate x this^(n-1), never below
    ``learning_rate_floor`` of it, as a round plan's ``learning_rate_decay`` makes the hub announce it; until
    epochs, the baselines train all their epochs in one schedule and keep the rate."""
    learning_rate_floor: float = 0.05
    federated_lr_scale: float = 1.0
    """The plants' learning rate in the federated arm is ``learning_rate`` x this. Averaging K plants' updates
    makes one step where pooled training makes K (like a K-times larger batch), and the linear-scaling rule of
    large-batch training says to scale the step size by K to match; 1.0 leaves every arm on the same rate."""


def _samples(images: list[LabeledImage], folder: Path, classes: tuple[str, ...]) -> list[Any]:
    import cv2

    from edge.training.jobs import TrainingSample

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for item in images:
        path = folder / f"{item.name}.png"
        template = None if item.template is None else folder / f"{item.name}.template.png"
        for file, image in ((path, item.image), (template, item.template)):
            if file is not None and image is not None and not file.exists():
                cv2.imwrite(str(file), image)
        samples.append(
            TrainingSample(
                sample_id=item.name,
                image=path,
                verdict="defective" if item.defective else "good",
                boxes=item.box_labels(classes),
                template=template,
            )
        )
    return samples


def _with_weights(base_dir: Path, weights: dict[str, np.ndarray], out: Path) -> Path:
    """A bundle folder with base_dir's manifest and these weights (all a trainer reads)."""
    import safetensors.numpy

    from schemas.tensors import contiguous

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base_dir / "manifest.json", out / "manifest.json")
    safetensors.numpy.save_file({k: contiguous(v) for k, v in weights.items()}, str(out / "weights.safetensors"))
    return out


def export_arm(v0: Path, weights: dict[str, np.ndarray], out: Path) -> Path:
    """An arm's model as a signed-format bundle (model.onnx, weights.safetensors, manifest.json; the format of
    ``fedinspect export``), so that any evaluator can score it on boards of its own."""
    from exporters.rebuild import rebuild_and_export
    from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest

    staged = _with_weights(v0, weights, out.with_name(f".{out.name}.staged"))
    try:
        shutil.rmtree(out, ignore_errors=True)
        rebuild_and_export(read_model_manifest({MANIFEST_FILE: v0 / MANIFEST_FILE}), staged / WEIGHTS_FILE, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return out


def _train(
    task: str,
    base_dir: Path,
    samples: list[Any],
    epochs: int,
    settings: FlBenchSettings,
    work: Path,
    *,
    learning_rate: float,
    stages: dict[str, float] | None = None,
) -> Any:
    from edge.training.classifier import train_classifier
    from edge.training.detector import train_detector
    from edge.training.jobs import TrainingJob
    from schemas.config import AugmentationConfig
    from schemas.messages import TrainingConfig

    # template-crops models step over crops (about 20 a board), the other models over whole images; the crop
    # classifier learns from one crop of each defective board (its most defect-like), so it takes more at a time
    batch = 16
    if task == "detect" and settings.detector_arch == "template-crops":
        batch = settings.crop_detector_batch
    if task == "classify" and settings.classifier_arch == "template-crops":
        batch = 256
    job = TrainingJob(
        run_id=work.name,
        task=task,
        base_dir=base_dir,
        work_dir=work,
        train=samples,
        settings=TrainingConfig(local_epochs=epochs, batch_size=batch, learning_rate=learning_rate),
        augmentation=AugmentationConfig(rotate90=False, vertical_flip=False, brightness=0.0)
        if task == "classify"
        else AugmentationConfig.model_validate(dict(settings.detector_augmentation)),
        labeled_kinds_only=settings.labeled_kinds_only,
        threads=settings.threads,
        device=settings.device,
        deadline_s=24 * 3600,
        seed=settings.seed,
    )
    train = train_classifier if task == "classify" else train_detector
    started = time.monotonic()
    result, delta = train(job, lambda _line: None)
    shutil.rmtree(work, ignore_errors=True)
    if stages is not None:  # where a round's time goes, for the per-stage print
        for stage, seconds in result.stage_seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
        other = time.monotonic() - started - sum(result.stage_seconds.values())
        stages["other"] = stages.get("other", 0.0) + max(other, 0.0)
    return result.num_examples, delta


def _rate_of_round(settings: FlBenchSettings, rate: float, number: int) -> float:
    """The learning rate of round (or step) ``number`` as a round plan with the bench's decay announces it."""
    from schemas.config import RoundPlanConfig
    from schemas.messages import TrainingConfig

    plan = RoundPlanConfig(
        model_name="bench",
        training=TrainingConfig(learning_rate=rate),
        learning_rate_decay=settings.learning_rate_decay,
        learning_rate_floor=settings.learning_rate_floor,
    )
    return plan.training_for_round(number).learning_rate


def _compare(
    task: str,
    v0: Path,
    plants: dict[str, list[Any]],
    settings: FlBenchSettings,
    score: Callable[[dict[str, np.ndarray]], dict[str, Any]],
    echo: Echo,
    validate: Callable[[dict[str, np.ndarray]], dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Scores of the federated, centralized and plant-alone models trained from ``v0``."""
    import safetensors.numpy

    if validate is not None:
        return _compare_until_converged(task, v0, plants, settings, score, validate, echo)

    from hub.strategies import make_strategy
    from hub.strategies.base import ClientUpdate
    from hub.strategies.fedavg import FedAvg
    from schemas.config import AggregationConfig

    work = settings.work_dir / task
    base = safetensors.numpy.load_file(str(v0 / "weights.safetensors"))
    budget = settings.rounds * settings.local_epochs
    client_lr = settings.learning_rate * settings.federated_lr_scale
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    weights, current = base, v0
    strategy = make_strategy(
        AggregationConfig.model_validate({"strategy": settings.strategy, "params": dict(settings.strategy_params)})
    )
    stage_totals: dict[str, float] = {}
    for number in range(1, settings.rounds + 1):
        updates = []
        stages: dict[str, float] = {}
        for name, samples in plants.items():
            count, delta = _train(
                task,
                current,
                samples,
                settings.local_epochs,
                settings,
                work / f"r{number}-{name}",
                learning_rate=_rate_of_round(settings, client_lr, number),
                stages=stages,
            )
            updates.append(ClientUpdate(name, count, delta))
        mark = time.monotonic()
        weights = strategy.aggregate(weights, updates)
        stages["aggregate"] = time.monotonic() - mark
        mark = time.monotonic()
        current = _with_weights(v0, weights, work / f"global-v{number}")
        stages["write global"] = time.monotonic() - mark
        for stage, seconds in stages.items():
            stage_totals[stage] = stage_totals.get(stage, 0.0) + seconds
        echo(
            f"  {task}: round {number}/{settings.rounds} aggregated ({time.monotonic() - started:.0f} s); "
            + stage_line(stages)
        )

    def record(arm: str, weights: dict[str, np.ndarray], started: float) -> None:
        # each arm's figures are printed as soon as they exist: a run stopped early still tells what it measured
        scores = score(weights)
        seconds = time.monotonic() - started
        bundle = export_arm(v0, weights, settings.work_dir / "bundles" / f"{task}-{arm.replace(' ', '-')}")
        results[arm] = scores | {"seconds": seconds, "bundle": str(bundle)}
        figures = ", ".join(f"{key} {value:.3f}" for key, value in scores.items() if isinstance(value, float))
        echo(f"  {task}: {arm}: {figures} ({seconds:.0f} s); bundle {bundle}")

    record("federated", weights, started)
    results["federated"]["stage_seconds"] = stage_totals
    if settings.arms == "federated":
        return results
    pooled = [sample for samples in plants.values() for sample in samples]
    started = time.monotonic()
    _, delta = _train(task, v0, pooled, budget, settings, work / "centralized", learning_rate=settings.learning_rate)
    record("centralized", FedAvg.apply(base, delta), started)
    for name, samples in plants.items():
        started = time.monotonic()
        _, delta = _train(
            task, v0, samples, budget, settings, work / f"alone-{name}", learning_rate=settings.learning_rate
        )
        record(f"{name} alone", FedAvg.apply(base, delta), started)
    return results


def stage_line(stages: dict[str, float]) -> str:
    """Where a round's time went, e.g. 'prepare 12 s, train 80 s, score 3 s, other 2 s, aggregate 0 s'."""
    return ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in stages.items())


PRIMARY_METRIC = {"detect": "mAP50-95", "classify": "accuracy"}
"""What convergence is judged by (on validation boards)."""


def _compare_until_converged(
    task: str,
    v0: Path,
    plants: dict[str, list[Any]],
    settings: FlBenchSettings,
    score: Callable[[dict[str, np.ndarray]], dict[str, Any]],
    validate: Callable[[dict[str, np.ndarray]], dict[str, Any]],
    echo: Echo,
) -> dict[str, dict[str, Any]]:
    """Every arm trained step by step (``local_epochs`` epochs a step; a round for the federated arm) until its
    validation score stops improving, its step cap or its share of the budget; its best step scored on held out.

    Each arm's record holds its learning curve (validation score after every step), the epochs over its data, the
    seconds it took here (one box, plants one after another) and, for the federated arm, the seconds it would take
    with every plant training on its own box at once (the slowest plant of each round, plus aggregation)."""
    import safetensors.numpy

    from hub.strategies import make_strategy
    from hub.strategies.base import ClientUpdate
    from hub.strategies.fedavg import FedAvg
    from schemas.config import AggregationConfig

    work = settings.work_dir / task
    base = safetensors.numpy.load_file(str(v0 / "weights.safetensors"))
    metric = PRIMARY_METRIC[task]
    # The baselines train first: an arm that converges (or reaches its step cap) inside its share leaves the rest
    # of it to the arms after it, and the federated arm, which makes the fewest optimizer steps per epoch, is the
    # one still rising when an equal share runs out.
    baselines = [] if settings.arms == "federated" else ["centralized", *(f"{p} alone" for p in plants)]
    names = [*baselines, "federated"]
    budget_end = time.monotonic() + settings.budget_minutes * 60
    pooled = [sample for samples in plants.values() for sample in samples]
    results: dict[str, dict[str, Any]] = {}
    for arms_left, arm in zip(range(len(names), 0, -1), names, strict=True):
        share_s = max(0.0, budget_end - time.monotonic()) / arms_left
        strategy = make_strategy(
            AggregationConfig.model_validate({"strategy": settings.strategy, "params": dict(settings.strategy_params)})
        )
        started = time.monotonic()
        weights, current = base, v0
        best_value, best_weights, best_step = -float("inf"), base, 0
        curve: list[dict[str, float]] = []
        parallel_s = 0.0
        stale = 0
        stopped = "step cap"
        for step in range(1, settings.rounds + 1):
            step_started = time.monotonic()
            stages: dict[str, float] = {}
            folder = work / f"{arm.replace(' ', '-')}-s{step}"
            if arm == "federated":
                updates, slowest = [], 0.0
                for name, samples in plants.items():
                    plant_started = time.monotonic()
                    count, delta = _train(
                        task,
                        current,
                        samples,
                        settings.local_epochs,
                        settings,
                        folder / name,
                        learning_rate=_rate_of_round(
                            settings, settings.learning_rate * settings.federated_lr_scale, step
                        ),
                        stages=stages,
                    )
                    slowest = max(slowest, time.monotonic() - plant_started)
                    updates.append(ClientUpdate(name, count, delta))
                aggregation_started = time.monotonic()
                weights = strategy.aggregate(weights, updates)
                parallel_s += slowest + time.monotonic() - aggregation_started
            else:
                samples = pooled if arm == "centralized" else plants[arm.removesuffix(" alone")]
                _, delta = _train(
                    task,
                    current,
                    samples,
                    settings.local_epochs,
                    settings,
                    folder,
                    learning_rate=_rate_of_round(settings, settings.learning_rate, step),
                    stages=stages,
                )
                weights = FedAvg.apply(weights, delta)
                parallel_s += time.monotonic() - step_started
            current = _with_weights(v0, weights, work / f"{arm.replace(' ', '-')}-current")
            value = float(validate(weights)[metric])
            seconds = time.monotonic() - started
            curve.append(
                {"step": step, "epochs": step * settings.local_epochs, "seconds": round(seconds, 1), metric: value}
            )
            echo(
                f"  {task}: {arm}: step {step}, {step * settings.local_epochs} epochs: validation {metric} "
                f"{value:.3f}; " + stage_line(stages)
            )
            if value > best_value:
                best_value, best_weights, best_step, stale = value, weights, step, 0
            else:
                stale += 1
            if stale >= settings.patience:
                stopped = f"no gain in {settings.patience} steps"
                break
            if seconds + (time.monotonic() - step_started) > share_s:  # a next step as long as this one overruns
                stopped = f"budget share of {share_s / 60:.1f} min spent"
                break
        scores = score(best_weights)
        bundle = export_arm(v0, best_weights, settings.work_dir / "bundles" / f"{task}-{arm.replace(' ', '-')}")
        results[arm] = scores | {
            "seconds": time.monotonic() - started,
            "parallel_seconds": parallel_s,
            "epochs": len(curve) * settings.local_epochs,
            "best_step": best_step,
            "best_epochs": best_step * settings.local_epochs,
            "stopped": stopped,
            "curve": curve,
            "bundle": str(bundle),
        }
        figures = ", ".join(f"{key} {value:.3f}" for key, value in scores.items() if isinstance(value, float))
        echo(
            f"  {task}: {arm}: best at step {best_step} ({stopped}): held out {figures}; "
            f"{time.monotonic() - started:.0f} s here, {parallel_s:.0f} s with plants in parallel"
        )
    results = {arm: results[arm] for arm in ["federated", *baselines]}
    _plot_curves(settings.work_dir / f"{task}-learning-curves.png", task, results, metric)
    return results


def _plot_curves(path: Path, task: str, results: dict[str, dict[str, Any]], metric: str) -> None:
    """Every arm's validation score against epochs over its data, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for arm, row in results.items():
        curve = row["curve"]
        axes.plot([p["epochs"] for p in curve], [p[metric] for p in curve], marker="o", label=arm)
    axes.set_xlabel("epochs over the arm's data")
    axes.set_ylabel(f"validation {metric}")
    axes.set_title(f"{task}: learning curves")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _crop_detector_scorer(
    v0: Path, held_out: list[LabeledImage], classes: tuple[str, ...], settings: FlBenchSettings
) -> Any:
    """Scores a template-crops detector as the edge serves it: exported to ONNX, run by the edge's inferencer on
    each held-out board compared with its template, mAP as Ultralytics computes it (``DetectorScorer``)."""
    from edge.training.detection_map import LabeledBoxes
    from fedinspect.demo_report import DetectorScorer

    scorer = DetectorScorer(classes, settings.work_dir, threads=settings.threads)
    inputs = [item.model_input() for item in held_out]
    truth = [LabeledBoxes.of(item.boxes) for item in held_out]

    def score(weights: dict[str, np.ndarray]) -> dict[str, Any]:
        bundle = export_arm(v0, weights, settings.work_dir / "detect-scoring")
        scores = scorer.scores_of(bundle / "model.onnx", inputs, truth)
        return {"mAP50": scores.map50, "mAP50-95": scores.map50_95, "AP50": scores.ap50}

    return score


def _detector_scorer(
    v0: Path, held_out: list[LabeledImage], classes: tuple[str, ...], settings: FlBenchSettings, name: str = "heldout"
) -> Any:
    import torch

    from edge.training.dataset import write_data_yaml, write_yolo_sample
    from exporters.rebuild import rebuild_module
    from exporters.ultralytics_env import prepare_ultralytics
    from schemas.bundle import MANIFEST_FILE, read_model_manifest

    root = settings.work_dir / f"detect-{name}"
    for item in held_out:
        write_yolo_sample(root, "val", item.name, item.model_input(), item.boxes)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    data_yaml = write_data_yaml(root, classes)
    manifest = read_model_manifest({MANIFEST_FILE: v0 / MANIFEST_FILE})
    prepare_ultralytics(settings.work_dir / "ultralytics", threads=settings.threads)

    def score(weights: dict[str, np.ndarray]) -> dict[str, Any]:
        from ultralytics import YOLO

        bundle = _with_weights(v0, weights, settings.work_dir / "detect-scoring")
        checkpoint = bundle / "model.pt"
        torch.save({"model": rebuild_module(manifest, bundle / "weights.safetensors"), "train_args": {}}, checkpoint)
        metrics = YOLO(str(checkpoint)).val(
            data=str(data_yaml),
            split="val",
            imgsz=settings.imgsz,
            batch=8,
            workers=0,
            plots=False,
            verbose=False,
            device=settings.device,
        )
        per_class = {
            classes[int(i)]: float(ap) for i, ap in zip(metrics.box.ap_class_index, metrics.box.ap50, strict=True)
        }
        return {"mAP50": float(metrics.box.map50), "mAP50-95": float(metrics.box.map), "AP50": per_class}

    return score


def _fresh_v0(settings: FlBenchSettings, kind: str) -> Path:
    """An empty folder for the benchmark's version 0 of the ``kind`` ("detector", "classifier") line. A
    template-crops model compares each board with its template, so it needs ``reference``."""
    arch = settings.detector_arch if kind == "detector" else settings.classifier_arch
    if arch == "template-crops" and not settings.reference:
        raise ValueError(f"a template-crops {kind} compares each board with its template: set reference")
    v0 = settings.work_dir / f"{kind}-v0"
    shutil.rmtree(v0, ignore_errors=True)
    return v0


def run_fl_bench(settings: FlBenchSettings, echo: Echo = print) -> dict[str, Any]:
    """Run the comparison; returns every number (also written to work_dir/results.json)."""
    import torch

    from fedinspect.demo_report import ClassifierScorer, InspectionRates
    from fedinspect.seed_models import (
        initial_classifier,
        initial_crop_classifier,
        initial_crop_detector,
        seed_detector,
    )
    from schemas.bundle import MANIFEST_FILE, read_model_manifest

    settings.work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    data = load_plants(
        settings.deeppcb,
        plants=settings.plants,
        size=settings.imgsz,
        seed=settings.seed,
        train_boards=settings.boards,
        test_boards=max(4, settings.boards // 3),
        reference=settings.reference,
        kinds_per_plant=settings.kinds_per_plant,
    )
    data = _limited(data, settings.max_images)
    converging = settings.until == "converged"
    if converging and settings.score_on == "validation":
        raise ValueError("until converged already stops on validation boards; score on the held-out set")
    if settings.score_on == "validation":
        data = _validation_data(data)
    held_out = _held_out(data)
    validation: PlantData | None = None
    validation_images: list[LabeledImage] = []
    if converging:  # train on four fifths of each plant's boards, judge convergence on the fifth
        validation = _validation_data(data)
        data = dataclasses.replace(
            data, plants=[Plant(p.name, v.train, p.test) for p, v in zip(data.plants, validation.plants, strict=True)]
        )
        validation_images = [image for plant in validation.plants for image in plant.test]
    echo(
        f"fl benchmark: {len(data.plants)} plants ({', '.join(f'{p.name} {len(p.train)}' for p in data.plants)} "
        f"training images), {'validation' if settings.score_on == 'validation' else 'held out'} {len(held_out)} "
        f"images ({len(data.unseen)} of unseen boards); strategy {settings.strategy}"
        + "".join(f" {key}={value:g}" for key, value in settings.strategy_params)
        + "; "
        + (
            f"until converged on {len(validation_images)} validation images (patience {settings.patience}, at most "
            f"{settings.rounds} steps of {settings.local_epochs} epochs, {settings.budget_minutes:g} min for all arms)"
            if converging
            else f"{settings.rounds} rounds x {settings.local_epochs} local epochs"
        )
        + f"; learning rate {settings.learning_rate:g}"
        + (f" (federated plants x {settings.federated_lr_scale:g})" if settings.federated_lr_scale != 1.0 else "")
        + (
            f", x {settings.learning_rate_decay:g} a round (at least {settings.learning_rate_floor:g} of it)"
            if settings.learning_rate_decay != 1.0
            else ""
        )
        + ("; both models compare each image with its template" if settings.reference else "")
        + "".join(
            f"; {plant.name} trained on {', '.join(data.classes[k] for k in kinds)} only"
            for plant, kinds in _plants_kinds(data, settings.kinds_per_plant)
        )
    )
    results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(settings).items()}}
    plants = _training_samples(data, settings.work_dir / "images")
    if settings.task in ("detect", "both"):
        v0 = _fresh_v0(settings, "detector")
        if settings.detector_arch == "template-crops":
            initial_crop_detector(
                v0,
                name="bench-detector",
                classes=data.classes,
                seed=settings.seed,
                spec=data.proposals,
                base_width=data.crop_base_width,
            )
            results["detect"] = _compare(
                "detect",
                v0,
                plants,
                settings,
                _crop_detector_scorer(v0, held_out, data.classes, settings),
                echo,
                _crop_detector_scorer(v0, validation_images, data.classes, settings) if converging else None,
            )
    if settings.task in ("detect", "both") and settings.detector_arch == "yolov8n":
        v0 = _fresh_v0(settings, "detector")
        _, seconds = seed_detector(
            settings.work_dir,
            v0,
            name="bench-detector",
            classes=data.classes,
            size=settings.imgsz,
            epochs=settings.pretrain_epochs,
            seed=settings.seed,
            threads=settings.threads,
            device=settings.device,
            reference=settings.reference,
        )
        if settings.pretrain_epochs:
            echo(f"  detect: v0 = YOLOv8n, {settings.pretrain_epochs} epochs on generated boards ({seconds:.0f} s)")
        scorer = _detector_scorer(v0, held_out, data.classes, settings)
        validate = _detector_scorer(v0, validation_images, data.classes, settings, "validation") if converging else None
        results["detect"] = _compare("detect", v0, plants, settings, scorer, echo, validate)
    if settings.task in ("classify", "both"):
        v0 = _fresh_v0(settings, "classifier")
        if settings.classifier_arch == "template-crops":
            initial_crop_classifier(
                v0, name="bench-classifier", seed=settings.seed, spec=data.proposals, base_width=data.crop_base_width
            )
        else:
            initial_classifier(
                v0,
                name="bench-classifier",
                arch=settings.classifier_arch,
                size=settings.classifier_size,
                seed=settings.seed,
                reference=settings.reference,
                pretrained=settings.pretrained,
            )
        classifier = ClassifierScorer(
            read_model_manifest({MANIFEST_FILE: v0 / MANIFEST_FILE}), v0 / "weights.safetensors"
        )
        # scored as each plant serves a model: BatchNorm statistics of its own images (edge.training.batchnorm) for
        # a model of images alone; the unseen boards calibrate on themselves, without their labels
        test_sets = [(p.test, p.train) for p in data.plants] + ([(data.unseen, data.unseen)] if data.unseen else [])

        def scorer(sets: list[tuple[list[LabeledImage], list[LabeledImage]]]) -> Callable[..., np.ndarray]:
            def scores(weights: dict[str, np.ndarray]) -> np.ndarray:
                return np.concatenate([classifier.defect_scores(weights, test, cal) for test, cal in sets])

            return scores

        def inspector(sets: list[tuple[list[LabeledImage], list[LabeledImage]]]) -> Callable[..., dict[str, Any]]:
            truth = np.array([image.defective for test, _ in sets for image in test], dtype=bool)
            scores = scorer(sets)

            def inspection(weights: dict[str, np.ndarray]) -> dict[str, Any]:
                return dataclasses.asdict(InspectionRates.of(truth, scores(weights)))

            return inspection

        validation_sets = (
            [(v.test, p.train) for p, v in zip(data.plants, validation.plants, strict=True)]
            if validation is not None
            else []
        )
        results["classify"] = _compare(
            "classify",
            v0,
            plants,
            settings,
            inspector(test_sets),
            echo,
            inspector(validation_sets) if validation is not None else None,
        )
        if validation is not None:  # the operating point a line would set from its own good boards
            _at_validation_threshold(
                results["classify"], scorer(validation_sets), validation_sets, scorer(test_sets), test_sets
            )
    (settings.work_dir / "results.json").write_text(json.dumps(results, indent=1))
    for line in summary(results):
        echo(line)
    return results


def _plants_kinds(data: PlantData, kinds_per_plant: int | None) -> list[tuple[Plant, tuple[int, ...]]]:
    if kinds_per_plant is None:
        return []
    count = len(data.plants)
    return [(p, plant_kinds(i, count, kinds_per_plant, len(data.classes))) for i, p in enumerate(data.plants)]


MAX_FALSE_REJECTS = 0.02
"""The false-reject rate a line accepts (issue target): the threshold is set where validation good boards stay
below it."""


def _at_validation_threshold(
    arms: dict[str, dict[str, Any]],
    validation_scores: Callable[..., np.ndarray],
    validation_sets: list[tuple[list[LabeledImage], list[LabeledImage]]],
    held_out_scores: Callable[..., np.ndarray],
    held_out_sets: list[tuple[list[LabeledImage], list[LabeledImage]]],
) -> None:
    """Each arm's final model at the threshold chosen on validation boards (at most ``MAX_FALSE_REJECTS`` of their
    good boards rejected), scored once on the held-out set: escapes and false rejects at an operating point set
    without looking at the held-out boards."""
    import safetensors.numpy

    from fedinspect.demo_report import InspectionRates, threshold_at_false_rejects

    def truth(sets: list[tuple[list[LabeledImage], list[LabeledImage]]]) -> np.ndarray:
        return np.array([image.defective for test, _ in sets for image in test], dtype=bool)

    validation_truth, held_out_truth = truth(validation_sets), truth(held_out_sets)
    for row in arms.values():
        weights = safetensors.numpy.load_file(str(Path(row["bundle"]) / "weights.safetensors"))
        threshold = threshold_at_false_rejects(validation_scores(weights)[~validation_truth], MAX_FALSE_REJECTS)
        rates = InspectionRates.of(held_out_truth, held_out_scores(weights), threshold=threshold)
        row["at_validation_threshold"] = {"threshold": threshold, **dataclasses.asdict(rates)}


def _held_out(data: PlantData) -> list[LabeledImage]:
    """What every arm is scored on: each plant's test split and the boards no plant trained on."""
    return [image for plant in data.plants for image in plant.test] + data.unseen


def _training_samples(data: PlantData, folder: Path) -> dict[str, list[Any]]:
    """Each plant's training split as trainer samples, its image files under ``folder / plant``."""
    return {plant.name: _samples(plant.train, folder / plant.name, data.classes) for plant in data.plants}


def _validation_data(data: PlantData) -> PlantData:
    """Each plant's training images split by board: a fifth of the boards (by a hash of the board's name, so the
    split does not depend on the order or the run) become the plant's test split; no unseen boards."""
    import zlib

    from edge.labels import pair_stem

    def is_validation(image: LabeledImage) -> bool:
        return zlib.crc32(pair_stem(f"{image.name}.png").encode()) % 5 == 0

    plants = [
        Plant(p.name, [i for i in p.train if not is_validation(i)], [i for i in p.train if is_validation(i)])
        for p in data.plants
    ]
    return dataclasses.replace(data, plants=plants, unseen=[])


def _limited(data: PlantData, max_images: int | None) -> PlantData:
    if max_images is None:
        return data
    return dataclasses.replace(data, plants=[Plant(p.name, p.train[:max_images], p.test) for p in data.plants])


def summary(results: dict[str, Any]) -> list[str]:
    lines = []
    detect = results.get("detect")
    if detect:
        classes = list(next(iter(detect.values()))["AP50"])
        lines.append(f"{'detector':<18}{'mAP50':>8}{'mAP50-95':>10}" + "".join(f"{c:>10}" for c in classes))
        for name, row in detect.items():
            lines.append(
                f"{name:<18}{row['mAP50']:>8.3f}{row['mAP50-95']:>10.3f}"
                + "".join(f"{row['AP50'].get(c, 0.0):>10.3f}" for c in classes)
            )
        if "centralized" in detect:  # not with --arms federated
            central = detect["centralized"]["mAP50-95"]
            alone = max(row["mAP50-95"] for name, row in detect.items() if name.endswith(" alone"))
            federated = detect["federated"]["mAP50-95"]
            ratio = federated / central if central > 0 else float("nan")
            lines.append(
                f"federated / centralized mAP50-95: {ratio:.3f} (target >= 0.95); "
                f"federated - best plant alone: {federated - alone:+.3f} (target > 0)"
            )
            central_map50 = detect["centralized"]["mAP50"]
            if central_map50 < MEANINGFUL_MAP50:
                lines.append(
                    f"warning: centralized mAP50 {central_map50:.3f} < {MEANINGFUL_MAP50}: the training "
                    "budget is too small for these ratios to mean anything; raise --rounds, --local-epochs, "
                    "--pretrain-epochs, --max-images, or train on a GPU (--device cuda)"
                )
    for task in ("detect", "classify"):
        for name, row in (results.get(task) or {}).items():
            if "curve" in row:
                lines.append(
                    f"{task} {name}: best on validation after {row['best_epochs']} of {row['epochs']} epochs "
                    f"({row['stopped']}); {row['seconds']:.0f} s on this box, {row['parallel_seconds']:.0f} s with "
                    "every plant on its own box"
                )
    classify = results.get("classify")
    if classify:
        lines.append(f"{'classifier':<18}{'accuracy':>9}{'escapes':>9}{'false rej':>10}{'escapes @2% FR':>16}")
        for name, row in classify.items():
            at_2pct = row.get("escape_rate_at_2pct_false_rejects")
            lines.append(
                f"{name:<18}{row['accuracy']:>9.3f}{row.get('escape_rate', float('nan')):>9.3f}"
                f"{row.get('false_reject_rate', float('nan')):>10.3f}"
                + (f"{at_2pct:>16.3f}" if at_2pct is not None else f"{'-':>16}")
            )
        for name, row in classify.items():
            chosen = row.get("at_validation_threshold")
            if chosen:
                lines.append(
                    f"{name}: at the threshold {chosen['threshold']:.3f} chosen on validation boards (<= 2 % of their "
                    f"good boards rejected): held out escapes {chosen['escape_rate']:.3f}, false rejects "
                    f"{chosen['false_reject_rate']:.3f}"
                )
        federated = classify.get("federated", {})
        if "escape_rate" in federated:
            lines.append(
                f"federated classifier: escapes {federated['escape_rate']:.3f} (target <= 0.01) at false rejects "
                f"{federated['false_reject_rate']:.3f} (target <= 0.02)"
            )
    return lines
