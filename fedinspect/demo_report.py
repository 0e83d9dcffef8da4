"""The demo's report: every global classifier version scored per plant, against local-only and centralized
training with the same budget, a confusion matrix, and detector results drawn on test boards.

Writes ``report/index.html`` (plots as PNG files next to it) and ``report/metrics.json`` with every number.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedinspect.demo_data import LabeledImage, PlantData
from schemas.bundle import WEIGHTS_FILE
from schemas.manifests import TEMPLATE_CROPS_ARCHITECTURE, ProposalSpec, TemplateInput

if TYPE_CHECKING:
    from edge.training.detection_map import DetectionScores, LabeledBoxes
    from edge.training.jobs import TrainingJob
    from fedinspect.demo import DemoSettings, Line
    from schemas.manifests import ModelManifest

Echo = Callable[[str], None]
SERVED_THRESHOLD = 0.5
"""An edge serves the larger of the classifier's two outputs: the defect class wins above a softmax of 0.5."""
CLASSIFIER = "pcb-classifier"
UNSEEN = "unseen boards"
CENTRALIZED = "centralized"


class ClassifierScorer:
    """Scores classifier weights (any version of the line) on labeled images, preprocessed as the edge serves.

    With ``calibration`` images the BatchNorm statistics are first recomputed on them, as an edge does before it
    serves a new global version (``edge.training.batchnorm``): a plant's model is scored as that plant runs it.
    """

    def __init__(self, manifest: ModelManifest, weights_file: Path) -> None:
        from exporters.rebuild import rebuild_module

        self.manifest = manifest
        self.net = rebuild_module(manifest, weights_file).eval()
        self.defect = manifest.classes.index("defective")

    def predict(
        self,
        weights: Mapping[str, np.ndarray],
        images: Sequence[LabeledImage],
        calibration: Sequence[LabeledImage] = (),
    ) -> np.ndarray:
        """True where the model says defective (the served verdict)."""
        return self.defect_scores(weights, images, calibration) > SERVED_THRESHOLD

    def defect_scores(
        self,
        weights: Mapping[str, np.ndarray],
        images: Sequence[LabeledImage],
        calibration: Sequence[LabeledImage] = (),
    ) -> np.ndarray:
        """The softmax probability of the defect class for each image."""
        import torch

        from edge.inference.images import to_tensor
        from edge.training.batchnorm import calibration_batches, recalibrate_batchnorm

        self.net.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in weights.items()})
        if self.manifest.architecture.name == TEMPLATE_CROPS_ARCHITECTURE:  # a board as its worst candidate
            from edge.training.crop_classifier import board_crops, board_defect_scores

            spec = ProposalSpec.from_params(self.manifest.architecture.params)
            boards = [board_crops(image.model_input(), spec) for image in images]
            return board_defect_scores(self.net, boards, self.manifest.input.scale)
        if calibration and self.manifest.input.template == TemplateInput.NONE:
            # as the edge does: it recomputes BatchNorm statistics only for models that take the image alone
            recalibrate_batchnorm(
                self.net, calibration_batches([i.model_input() for i in calibration], self.manifest.input)
            )
        self.net.eval()
        verdicts = []
        with torch.no_grad():
            for start in range(0, len(images), 64):
                chunk = [i.model_input() for i in images[start : start + 64]]
                batch, _ = to_tensor(chunk, self.manifest.input, np.dtype(np.float32))
                probabilities = torch.softmax(self.net(torch.from_numpy(batch)), dim=1)
                verdicts.append(probabilities[:, self.defect].numpy())
        return np.concatenate(verdicts)

    def accuracy(
        self,
        weights: Mapping[str, np.ndarray],
        images: Sequence[LabeledImage],
        calibration: Sequence[LabeledImage] = (),
    ) -> float:
        truth = np.array([i.defective for i in images])
        return float(np.mean(self.predict(weights, images, calibration) == truth))


@dataclass(frozen=True)
class InspectionRates:
    """What a line cares about: escapes (defective boards called good) and false rejects (good boards called
    defective), as fractions of the defective and of the good boards, with the counts they come from."""

    accuracy: float
    escape_rate: float
    false_reject_rate: float
    defective: int
    good: int
    escape_rate_at_2pct_false_rejects: float | None = None
    """The escape rate of the lowest threshold that rejects at most 2 % of these good boards (a point
    of the curve on these images, not a tuned setting)."""

    @classmethod
    def of(
        cls, truly_defective: np.ndarray, scores: np.ndarray, *, threshold: float = SERVED_THRESHOLD
    ) -> InspectionRates:
        """The rates of defect ``scores`` against the truth, a board called defective above ``threshold`` (default:
        the served verdict)."""
        predicted_defective = scores > threshold
        defective, good = int(truly_defective.sum()), int((~truly_defective).sum())
        escapes = int((~predicted_defective & truly_defective).sum())
        rejects = int((predicted_defective & ~truly_defective).sum())
        at_2pct = None
        if defective and good:
            at_2pct = float(np.mean(scores[truly_defective] <= threshold_at_false_rejects(scores[~truly_defective])))
        return cls(
            accuracy=float(np.mean(predicted_defective == truly_defective)) if len(truly_defective) else 0.0,
            escape_rate=escapes / defective if defective else 0.0,
            false_reject_rate=rejects / good if good else 0.0,
            defective=defective,
            good=good,
            escape_rate_at_2pct_false_rejects=at_2pct,
        )


def threshold_at_false_rejects(good_scores: np.ndarray, rate: float = 0.02) -> float:
    """The lowest threshold (a board is defective above it) that calls at most ``rate`` of these good boards
    defective: how a line would set ``inspection.defect_threshold`` from good boards of its own."""
    ranked = np.sort(np.asarray(good_scores, np.float64))[::-1]
    allowed = int(np.floor(rate * len(ranked)))  # good boards that may score above the threshold
    return float(ranked[allowed]) if allowed < len(ranked) else -np.inf


def baseline_job(
    name: str,
    images: list[tuple[LabeledImage, Path]],
    bundle: Path,
    settings: DemoSettings,
    work: Path,
    line: Line,
    classes: Sequence[str],
) -> TrainingJob:
    """Training ``line``'s model from version 0 (``bundle``) on ``images`` (with their files) as the plants train
    it in a round (``line_training``), for all rounds' epochs at once, with the verdicts and the boxes (named from
    ``classes``) the edges have: the crop classifier learns from boxes too (``edge.training.crop_classifier``)."""
    from edge.training.jobs import TrainingJob, TrainingSample
    from fedinspect.demo import line_training
    from schemas.config import AugmentationConfig
    from schemas.messages import TrainingConfig

    training = line_training(line, settings)
    return TrainingJob(
        run_id=f"baseline-{line.task}-{name}",
        task=line.task,
        base_dir=bundle,
        work_dir=work / line.task / name,
        train=[
            TrainingSample(
                sample_id=i.name,
                image=path,
                verdict="defective" if i.defective else "good",
                boxes=i.box_labels(classes),
                template=None if i.template is None else path.with_name(f"{i.name}.template.png"),
            )
            for i, path in images
        ],
        settings=TrainingConfig.model_validate(
            training | {"local_epochs": settings.rounds * int(training["local_epochs"])}
        ),
        augmentation=AugmentationConfig.model_validate(dict(settings.augmentation)),
        deadline_s=3600,
        seed=settings.seed,
    )


def trained_weights(job: TrainingJob) -> dict[str, np.ndarray]:
    """Run ``job`` (one thread) and return the trained weights (version 0 plus the delta)."""
    import safetensors.numpy

    from edge.training.classifier import train_classifier
    from edge.training.detector import train_detector
    from hub.strategies.base import Strategy

    train = train_classifier if job.task == "classify" else train_detector
    _, delta = train(job, lambda _line: None)
    return Strategy.apply(safetensors.numpy.load_file(str(job.base_dir / WEIGHTS_FILE)), delta)


class Baselines:
    """Every line's baselines, each plant alone and all plants pooled, trained at once in worker processes of one
    thread each (a worker a CPU core), the longest first, while the report scores the global versions. Trained one
    after another on the trainer's one thread they left half of a 2-core box idle for ten minutes. Workers die with
    the demo; ``close`` stops them. (The pool pickles jobs and weights between this process and its own children
    only; nothing from a peer or a file is unpickled.)"""

    def __init__(self, jobs: dict[tuple[str, str], TrainingJob], workers: int | None = None) -> None:
        import multiprocessing
        import os

        from runtime.processes import die_with_parent

        count = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        # spawn: a fresh interpreter, not a fork of a process that holds threads, sockets and torch state
        self._pool = multiprocessing.get_context("spawn").Pool(count, initializer=die_with_parent)
        longest_first = sorted(jobs.items(), key=lambda item: -len(item[1].train))
        self._results = {key: self._pool.apply_async(trained_weights, (job,)) for key, job in longest_first}

    def weights(self, line: str, arm: str) -> dict[str, np.ndarray]:
        """The weights of ``line`` trained by ``arm`` (a plant's name, or "centralized"); waits for them."""
        return self._results[(line, arm)].get()

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


def baseline_jobs(
    settings: DemoSettings,
    data: PlantData,
    files: dict[str, list[tuple[LabeledImage, Path]]],
    bundles: dict[str, tuple[Line, Path]],
    work: Path,
) -> dict[tuple[str, str], TrainingJob]:
    """For every line (name -> (line, version 0 bundle)): a job for each plant alone and one for all pooled."""
    pooled = [pair for pairs in files.values() for pair in pairs]
    jobs = {}
    for name, (line, bundle) in bundles.items():
        for plant in data.plants:
            jobs[(name, plant.name)] = baseline_job(
                plant.name, files[plant.name], bundle, settings, work, line, data.classes
            )
        jobs[(name, CENTRALIZED)] = baseline_job(CENTRALIZED, pooled, bundle, settings, work, line, data.classes)
    return jobs


class DetectorScorer:
    """Scores detector ONNX files as the edge serves them (its inferencer, each board compared with its template)
    by mAP on labeled images, with the detections kept as Ultralytics' validator keeps them. ``threads``: ONNX
    Runtime's and Ultralytics' CPU threads (default: theirs)."""

    def __init__(self, classes: Sequence[str], work: Path, *, threads: int | None = None) -> None:
        from exporters.ultralytics_env import prepare_ultralytics
        from schemas.config import CpuProviderConfig, InferenceConfig

        prepare_ultralytics(work / "ultralytics", threads=threads)  # offline, for its AP computation
        self.classes = list(classes)
        self.work = work
        self.config = (
            InferenceConfig()
            if threads is None
            else InferenceConfig(providers=[CpuProviderConfig(kind="cpu", intra_op_threads=threads)])
        )

    def scores(self, model_file: Path, images: Sequence[LabeledImage]) -> DetectionScores:
        from edge.training.detection_map import LabeledBoxes

        return self.scores_of(model_file, [i.model_input() for i in images], [LabeledBoxes.of(i.boxes) for i in images])

    def scores_of(
        self, model_file: Path, inputs: Sequence[np.ndarray], truth: Sequence[LabeledBoxes]
    ) -> DetectionScores:
        """As ``scores``, on images already compared with their templates and their boxes (scored many times)."""
        from edge.inference.detector import Detector
        from edge.training.crop_detector import SCORING_CONFIDENCE, SCORING_IOU
        from edge.training.detection_map import detection_map

        detector = Detector.load(
            model_file,
            self.config,
            cache_dir=self.work,
            confidence_threshold=SCORING_CONFIDENCE,
            iou_threshold=SCORING_IOU,
        )
        return detection_map([detector.predict(image) for image in inputs], truth, self.classes)


def _plot_rounds(
    path: Path,
    scores: dict[str, list[float]],
    local: dict[str, float],
    central: float,
    *,
    model: str = "model",
    metric: str = "accuracy (good / defective)",
) -> None:
    """Each test set's score by global version of ``model``, with each plant alone and the pooled mean as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, values) in enumerate(scores.items()):
        color = colors[index % len(colors)]
        axes.plot(range(len(values)), values, marker="o", color=color, label=f"global {model} on {name}")
        if name in local:
            axes.axhline(local[name], color=color, linestyle=":", label=f"{name} alone")
    axes.axhline(central, color="black", linestyle="--", label="centralized (pooled), mean over plants")
    axes.set_xlabel("global version (after round n)")
    axes.set_ylabel(metric)
    axes.set_ylim(0, 1.02)
    axes.set_xticks(range(max(len(v) for v in scores.values())))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _plot_confusion(path: Path, matrix: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(3.6, 3.2), dpi=110)
    axes.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        axes.text(col, row, str(int(value)), ha="center", va="center", color="black")
    axes.set_xticks([0, 1], ["good", "defective"])
    axes.set_yticks([0, 1], ["good", "defective"])
    axes.set_xlabel("predicted")
    axes.set_ylabel("labeled")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _detector_examples(model_file: Path, data: PlantData, out: Path) -> list[str]:
    """Two defective test boards of each plant with the served detector's boxes (at the served confidence) drawn
    on the inspected image, each labeled box in green beside them; returns the file names."""
    import cv2

    from edge.inference.detector import Detector
    from edge.rendering import render_sample
    from schemas.config import InferenceConfig

    detector = Detector.load(model_file, InferenceConfig(), cache_dir=out / ".cache")
    names = []
    for plant in data.plants:
        for item in [i for i in plant.test if i.defective][:2]:
            found = detector.predict(item.model_input())
            boxes = [
                {
                    "x1": float(b[0]),
                    "y1": float(b[1]),
                    "x2": float(b[2]),
                    "y2": float(b[3]),
                    "class_name": n,
                    "score": float(s),
                }
                for b, n, s in zip(found.boxes, found.class_names, found.scores, strict=True)
            ]
            labeled = cv2.cvtColor(item.image, cv2.COLOR_GRAY2BGR) if item.image.ndim == 2 else item.image.copy()
            for _, x1, y1, x2, y2 in item.boxes:
                cv2.rectangle(labeled, (int(x1), int(y1)), (int(x2), int(y2)), (0, 160, 0), 1)
            name = f"example-{item.name}.png"
            (out / name).write_bytes(render_sample(bytes(cv2.imencode(".png", labeled)[1]), boxes))
            names.append(name)
    return names


def write_report(
    settings: DemoSettings,
    data: PlantData,
    run_dir: Path,
    hub_dir: Path,
    classifier_bundle: Path,
    detector_bundle: Path,
    echo: Echo,
) -> Path:
    from fedinspect.demo import DETECTOR, demo_lines
    from hub.db import open_hub_database
    from hub.registry import ModelRegistry
    from schemas.config import HubConfig

    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    config = HubConfig.model_validate_json((run_dir / "hub.yaml").read_text())
    registry = ModelRegistry(open_hub_database(config), hub_dir / "artifacts")
    lines = {line.name: line for line in demo_lines(settings)}
    files = {
        plant.name: [(i, run_dir / "data" / plant.name / "train" / f"{i.name}.png") for i in plant.train]
        for plant in data.plants
    }
    bundles = {CLASSIFIER: (lines[CLASSIFIER], classifier_bundle)}
    if DETECTOR in lines:
        bundles[DETECTOR] = (lines[DETECTOR], detector_bundle)
    baselines = Baselines(baseline_jobs(settings, data, files, bundles, run_dir / "baselines"))
    try:
        return _report(settings, data, registry, lines, baselines, classifier_bundle, detector_bundle, out, echo)
    finally:
        baselines.close()


def _report(
    settings: DemoSettings,
    data: PlantData,
    registry: Any,
    lines: dict[str, Line],
    baselines: Baselines,
    classifier_bundle: Path,
    detector_bundle: Path,
    out: Path,
    echo: Echo,
) -> Path:
    from fedinspect.demo import DETECTOR, line_aggregation

    versions = registry.versions(CLASSIFIER)
    scorer = ClassifierScorer(versions[0].manifest, classifier_bundle / WEIGHTS_FILE)
    # (test images, calibration images): every model is scored as a plant serves it, with BatchNorm statistics of
    # that plant's own images; a line no plant trained on calibrates on the images it inspects (no labels used)
    test_sets = {plant.name: (plant.test, plant.train) for plant in data.plants}
    if data.unseen:
        test_sets[UNSEEN] = (data.unseen, data.unseen)
    scores: dict[str, list[float]] = {name: [] for name in test_sets}
    for version in versions:
        weights = registry.weights(CLASSIFIER, version.manifest.version)
        for name, (images, calibration) in test_sets.items():
            scores[name].append(scorer.accuracy(weights, images, calibration))
    final_weights = registry.weights(CLASSIFIER, versions[-1].manifest.version)
    predicted = np.concatenate([scorer.predict(final_weights, plant.test, plant.train) for plant in data.plants])
    truth = np.array([i.defective for plant in data.plants for i in plant.test])
    confusion = np.array(
        [
            [np.sum(~truth & ~predicted), np.sum(~truth & predicted)],
            [np.sum(truth & ~predicted), np.sum(truth & predicted)],
        ]
    )

    local: dict[str, float] = {}
    for plant in data.plants:
        weights = baselines.weights(CLASSIFIER, plant.name)
        local[plant.name] = scorer.accuracy(weights, plant.test, plant.train)
        echo(f"  classifier, {plant.name} alone: {local[plant.name]:.3f} on its own test boards")
    central_weights = baselines.weights(CLASSIFIER, CENTRALIZED)
    central = {name: scorer.accuracy(central_weights, *sets) for name, sets in test_sets.items()}
    central_mean = float(np.mean([central[p.name] for p in data.plants]))
    federated_mean = float(np.mean([scores[p.name][-1] for p in data.plants]))
    initial_mean = float(np.mean([scores[p.name][0] for p in data.plants]))
    echo(
        f"  classifier, final global v{len(versions) - 1}: mean over plants {federated_mean:.3f} "
        f"(v0 {initial_mean:.3f}); centralized {central_mean:.3f}"
    )

    _plot_rounds(out / "accuracy_by_round.png", scores, local, central_mean)
    _plot_confusion(out / "confusion.png", confusion, f"global v{len(versions) - 1} on all plants' test boards")
    metrics: dict[str, Any] = {
        "aggregation": ", ".join(
            f"{name}: {line_aggregation(line, settings)['strategy']}" for name, line in lines.items()
        ),
        "versions": [v.manifest.version for v in versions],
        "accuracy_by_version": scores,
        "local_only": local,
        "centralized": central,
        "federated_mean_final": federated_mean,
        "federated_mean_initial": initial_mean,
        "centralized_mean": central_mean,
        "confusion_final": confusion.tolist(),
        "settings": {k: str(v) for k, v in vars(settings).items()},
    }
    served_detector = detector_bundle / "model.onnx"
    if DETECTOR in lines:
        metrics["detector"], served_detector = _detector_results(
            registry, data, baselines, detector_bundle, lines[DETECTOR], out, echo
        )
    examples = _detector_examples(served_detector, data, out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    index = out / "index.html"
    index.write_text(_html(metrics, examples, data), encoding="utf-8")
    return index


def _detector_results(
    registry: Any,
    data: PlantData,
    baselines: Baselines,
    detector_bundle: Path,
    line: Line,
    out: Path,
    echo: Echo,
) -> tuple[dict[str, Any], Path]:
    """Every global detector version's mAP on each plant's test boards and the unseen boards, against the same
    detector trained on each plant alone and on all plants pooled; returns them and the last version's ONNX."""
    from fedinspect.bench_fl import export_arm

    work = out.parent / "detector-scoring"
    scorer = DetectorScorer(data.classes, work)
    test_sets = {plant.name: plant.test for plant in data.plants}
    if data.unseen:
        test_sets[UNSEEN] = data.unseen
    versions = [v.manifest.version for v in registry.versions(line.name)]
    by_version: dict[str, list[dict[str, float]]] = {name: [] for name in test_sets}
    model_file = detector_bundle / "model.onnx"
    for version in versions:
        model_file = registry.export_bundle_files(line.name, version, work / f"v{version}")["model.onnx"]
        for name, images in test_sets.items():
            by_version[name].append(scorer.scores(model_file, images).as_metrics())
    local: dict[str, dict[str, float]] = {}
    for plant in data.plants:
        weights = baselines.weights(line.name, plant.name)
        bundle = export_arm(detector_bundle, weights, work / f"alone-{plant.name}")
        local[plant.name] = scorer.scores(bundle / "model.onnx", plant.test).as_metrics()
        echo(f"  detector, {plant.name} alone: mAP50 {local[plant.name]['mAP50']:.3f} on its own test boards")
    weights = baselines.weights(line.name, CENTRALIZED)
    bundle = export_arm(detector_bundle, weights, work / CENTRALIZED)
    central = {name: scorer.scores(bundle / "model.onnx", images).as_metrics() for name, images in test_sets.items()}
    final = {name: values[-1]["mAP50"] for name, values in by_version.items()}
    echo(
        f"  detector, final global v{versions[-1]}: mAP50 "
        + ", ".join(f"{name} {value:.3f}" for name, value in final.items())
        + "; centralized "
        + ", ".join(f"{name} {value['mAP50']:.3f}" for name, value in central.items())
    )
    map50 = {name: [value["mAP50"] for value in values] for name, values in by_version.items()}
    central_mean = float(np.mean([central[p.name]["mAP50"] for p in data.plants]))
    _plot_rounds(
        out / "detector_map50_by_round.png",
        map50,
        {k: v["mAP50"] for k, v in local.items()},
        central_mean,
        model="detector",
        metric="mAP50",
    )
    results = {
        "versions": versions,
        "scores_by_version": by_version,
        "map50_by_version": map50,
        "local_only": local,
        "centralized": central,
        "centralized_mean_map50": central_mean,
    }
    return results, model_file


def _html(metrics: dict[str, Any], examples: list[str], data: PlantData) -> str:
    scores: dict[str, list[float]] = metrics["accuracy_by_version"]
    versions: list[int] = metrics["versions"]
    header = "".join(f"<th>v{v}</th>" for v in versions)
    rows = []
    for name, values in scores.items():
        local = metrics["local_only"].get(name)
        cells = "".join(f"<td>{value:.3f}</td>" for value in values)
        rows.append(
            f"<tr><th>{html.escape(name)}</th>{cells}<td>{'' if local is None else f'{local:.3f}'}</td>"
            f"<td>{metrics['centralized'][name]:.3f}</td></tr>"
        )
    images = "".join(
        f'<figure><img src="{html.escape(n)}" width="320"><figcaption>{html.escape(n)}</figcaption></figure>'
        for n in examples
    )
    detector = metrics.get("detector")
    if detector is None:
        detector_part = (
            "<h2>Detector on test boards</h2>\n<p>The YOLOv8n detector the edges serve (trained briefly on a seed "
            f"set; not federated without templates):</p>\n{images}"
        )
    else:
        detector_rows = []
        for name, values in detector["map50_by_version"].items():
            alone = detector["local_only"].get(name)
            alone_cell = "" if alone is None else f"{alone['mAP50']:.3f}"
            cells = "".join(f"<td>{value:.3f}</td>" for value in values)
            detector_rows.append(
                f"<tr><th>{html.escape(name)}</th>{cells}<td>{alone_cell}</td>"
                f"<td>{detector['centralized'][name]['mAP50']:.3f}</td></tr>"
            )
        detector_header = "".join(f"<th>v{v}</th>" for v in detector["versions"])
        detector_part = f"""<h2>Detector per round (mAP50)</h2>
<p>The template-crops detector, federated in the same rounds: every global version's mAP50 on each plant's test
boards (every defect kind, also those the plant never labeled) and on the unseen boards, against the same detector
trained on that plant alone and on all plants pooled for the same epochs.</p>
<img src="detector_map50_by_round.png" alt="detector mAP50 by round">
<table><tr><th>test set</th>{detector_header}<th>alone</th><th>centralized</th></tr>{"".join(detector_rows)}</table>
<h2>Detector on test boards</h2>
<p>The last global detector's boxes in red (at the served confidence), the labeled defects in green:</p>
{images}"""
    plants = ", ".join(f"{p.name} ({len(p.train)} training / {len(p.test)} test images)" for p in data.plants)
    if metrics["settings"].get("reference") == "True":
        serving = "each edge compared every board with its golden template"
        scoring = ": each board compared with its golden template (good boards are re-acquisitions of it)"
    else:
        serving = "each edge recomputed its BatchNorm statistics on its own recent images"
        scoring = (
            ": with BatchNorm statistics of that plant's training images (the unseen boards: of the unseen images "
            "themselves, without their labels)"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fedinspect demo report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:4px}}</style>
</head><body>
<h1>fedinspect demo</h1>
<p>Plants: {html.escape(plants)}. Each round every edge fine-tuned the global classifier on its own labels in a
low-priority process and sent only the signed weight delta; the hub aggregated them
({html.escape(metrics["aggregation"])}), exported ONNX, signed
and published the new version; {serving} and swapped it in after checking it on its local holdout. No image left
its plant.</p>
<h2>Global classifier per round</h2>
<p>Mean accuracy over the plants' test boards: {metrics["federated_mean_initial"]:.3f} with the initial model,
{metrics["federated_mean_final"]:.3f} after the last round; centralized training on all plants' images pooled
(same epochs): {metrics["centralized_mean"]:.3f}.</p>
<img src="accuracy_by_round.png" alt="accuracy by round">
<table><tr><th>test set</th>{header}<th>alone</th><th>centralized</th></tr>{"".join(rows)}</table>
<p>"alone": the same classifier trained only on that plant's images for the same number of epochs. Every model is
scored as a plant serves it{scoring}.</p>
<h2>Confusion matrix (last global version)</h2>
<img src="confusion.png" alt="confusion matrix">
{detector_part}
</body></html>
"""
