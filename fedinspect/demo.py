"""``fedinspect demo``: the whole system on one machine, on generated boards (or DeepPCB), with a report.

A Mosquitto child process on a loopback port (or, without Mosquitto, a development-only in-process Python
broker with a loud warning), a hub and one edge agent per plant run as real processes with
generated configs and keys. The demo bootstraps version 0 of both model lines, labels each plant's training images
through the edges' import API, then lets the hub run rounds of both lines while it prints progress. With golden
templates (the default) both lines are template-crops models the hub federates: the classifier calls a board as
defective as its most defect-like difference from its template, the detector names each difference. Each plant
has seen only some defect kinds (``kinds_per_plant``) while every test split holds them all, so no plant alone
knows every defect. Without templates the classifier is MobileNetV2 on the packaged ImageNet backbone and the
edges serve a YOLOv8n detector trained briefly on a seed set, not federated. At the end the demo scores every
global version of both lines on each plant's test images and on boards no plant trained on, trains the same models
on each plant alone and on all plants pooled for the same epochs, and writes an HTML report. Every child dies with
the demo (parent-death signal) and is stopped on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from edge.labels import pair_stem
from edge.model_records import newest_installed
from fedinspect.demo_data import LabeledImage, Plant, PlantData, load_plants
from fedinspect.devbroker import INSTALL_HINT, MosquittoBroker, find_mosquitto, free_port
from fedinspect.pybroker import WARNING as PYTHON_BROKER_WARNING
from fedinspect.pybroker import PythonBroker
from runtime.processes import child_environment, die_with_parent

CLASSIFIER = "pcb-classifier"
DETECTOR = "pcb-detector"
TEMPLATE_CROPS = "template-crops"
Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    out_dir: Path = Path("demo-out")
    rounds: int = 4
    plants: int = 3
    train_boards: int = 80
    test_boards: int = 26
    board_size: int = 256
    """Generated boards are drawn at 256 px, where the proposal step of the template-crops models frames their
    defects (``demo_data.GENERATED_PROPOSALS``); DeepPCB is read at its native 640 px for them (at
    ``classifier_size`` for a torchvision classifier)."""
    kinds_per_plant: int | None = 4
    """Each plant's training boards hold only this many of the 6 defect kinds (``demo_data.plant_kinds``); test
    boards and the unseen boards hold every kind. None: every plant has seen every kind."""
    classifier_arch: str = TEMPLATE_CROPS
    """template-crops (needs ``reference``): a board as defective as its most defect-like candidate, trained from
    verdicts and the labeled boxes (``edge.training.crop_classifier``); on DeepPCB 0.991 accuracy federated
    (docs/benchmarks.md). Or a torchvision architecture at ``classifier_size``."""
    classifier_size: int = 128
    classifier_pretrained: bool = True
    """A torchvision classifier on the packaged ImageNet backbone (``exporters.pretrained``; MobileNetV2). Measured
    on DeepPCB template comparisons at 128 px, 456 pooled training images, 6 epochs, scored on 144 validation images
    of the same groups: 0.938 accuracy pretrained, 0.500 (chance) for resnet18 from random weights."""
    detector_arch: str = TEMPLATE_CROPS
    """template-crops (needs ``reference``): federated like the classifier. yolov8n: trained ``detector_epochs``
    on a seed set at ``detector_size`` and served, not federated (the demo without templates)."""
    detector_size: int = 128
    detector_epochs: int = 12
    local_epochs: int = 2
    learning_rate: float = 0.001
    crop_local_epochs: int = 3
    """Local epochs a round of the template-crops classifier (``bench fl --score-on validation`` on the demo's
    plants, 4 rounds: federated accuracy 0.939 at 3, 0.927 at 6)."""
    crop_detector_local_epochs: int = 6
    """Local epochs a round of the template-crops detector (``bench fl --score-on validation`` on the demo's plants,
    4 rounds: federated mAP50 0.814 at 6, 0.766 at 3). A round's training is a few seconds of it; the rest of a
    round (exchange, checks, export) costs the same whatever the epochs."""
    crop_batch_size: int = 32
    """Crops a step for the template-crops lines (``line_training``)."""
    crop_learning_rate: float = 0.002
    """The template-crops models' rate (``bench fl`` on DeepPCB, docs/benchmarks.md)."""
    augmentation: tuple[tuple[str, float | bool], ...] = (
        ("rotate90", False),
        ("vertical_flip", False),
        ("brightness", 0.0),
    )
    """Training-image changes (edges and baselines alike). With a few dozen images a plant and a few epochs a round,
    the full default set slows learning more than it helps generalization (measured: train loss still at ln 2 after
    15 epochs with it, 0.15 without); mirror images alone are kept."""
    seed: int = 0
    deeppcb: Path | None = None
    round_timeout_s: float = 900.0
    strategy: str = "fedavgm"
    strategy_params: tuple[tuple[str, float], ...] = (("server_momentum", 0.5), ("server_learning_rate", 1.0))
    """The aggregation of a pretrained torchvision classifier's line. Chosen on validation boards from the plants'
    own training data (bench fl --score-on validation, the demo's generated plants, 4 rounds x 2 epochs): FedAvg
    0.829 accuracy, FedAvgM momentum 0.5 0.963, momentum 0.9 with server rate 0.5 0.939 (docs/benchmarks.md).
    Template-crops lines start from random weights and aggregate with FedAvg (``line_aggregation``): server momentum
    broke the crop detector on DeepPCB (validation mAP50-95 0.243 after round 1, then 0.000)."""
    keep_running: bool = False
    """After the report, keep the broker, the hub and the edges running (their pages open) until Ctrl-C."""
    reference: bool = True
    """The classifier compares each board with its golden template (``reference_composite``), as PCB inspection
    does: each edge keeps its boards' templates in ``inspection.templates_dir`` and every labeled image names its
    own; good samples are re-acquisitions of their template (``demo_data.reacquire``), never the template."""


class DemoError(RuntimeError):
    """The demo could not go on; the message says what failed and where its logs are."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    url: str
    auth: dict[str, str]
    """The header of the demo's admin token of this child's API."""


@dataclass
class Services:
    """The demo's child processes; ``stop`` ends them all (SIGTERM, then SIGKILL)."""

    children: list[Child] = field(default_factory=list)
    broker: MosquittoBroker | PythonBroker | None = None

    def spawn(self, name: str, role: str, config_file: Path, port: int, log_file: Path, data_dir: Path) -> Child:
        """Start ``fedinspect ROLE run``, with an admin token of its API for the demo (in its data_dir's tokens
        file, as ``fedinspect token add`` makes one)."""
        from runtime.access import ApiRole, TokenStore

        token = TokenStore(data_dir / "api-tokens.json").add("demo", ApiRole.ADMIN)
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "fedinspect.cli", role, "run", "--config", str(config_file)],
                stdout=log,
                stderr=log,
                env=child_environment(),
                preexec_fn=die_with_parent,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops the children in order
            )
        child = Child(name, process, log_file, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"})
        self.children.append(child)
        return child

    def wait_ready(self, child: Child, path: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise DemoError(
                    f"{child.name} exited at start-up (code {child.process.returncode}); see {child.log_file}"
                )
            try:
                if httpx.get(child.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise DemoError(f"{child.name} was not ready within {timeout_s:.0f} s; see {child.log_file}")

    def stop(self) -> None:
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.children.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


def template_id(item: LabeledImage) -> str:
    """The id an edge knows a board's golden template by: the board (both of its images share it)."""
    return pair_stem(f"{item.name}.png")


def _write_images(plant: Plant, root: Path, templates_dir: Path) -> None:
    """Each image as a PNG (and beside it its template, ``NAME.template.png``, for the baselines' trainer), and
    every board's template once into the plant's edge templates folder."""
    import cv2

    for split, images in (("train", plant.train), ("test", plant.test)):
        folder = root / plant.name / split
        folder.mkdir(parents=True, exist_ok=True)
        for item in images:
            cv2.imwrite(str(folder / f"{item.name}.png"), item.image)
            if item.template is not None:
                cv2.imwrite(str(folder / f"{item.name}.template.png"), item.template)
                templates_dir.mkdir(parents=True, exist_ok=True)
                board = templates_dir / f"{template_id(item)}.png"
                if not board.exists():
                    cv2.imwrite(str(board), item.template)


def import_labels(url: str, images: list[LabeledImage], auth: dict[str, str], author: str = "demo") -> int:
    """Label images at an edge through POST /v1/labels/import (YOLO txt), 100 at a time; returns how many.

    Images with a template are sent a board at a time, naming the board's template (``template_id``), which the
    edge already has in its templates folder: each sample is stored with the template it is compared with."""
    import cv2

    from edge.training.dataset import yolo_label_text

    batches: list[tuple[str | None, list[LabeledImage]]] = []
    for item in images:
        board = None if item.template is None else template_id(item)
        if batches and batches[-1][0] == board and len(batches[-1][1]) < 100:
            batches[-1][1].append(item)
        else:
            batches.append((board, [item]))
    imported = 0
    for board, batch in batches:
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        for item in batch:
            files.append(("images", (f"{item.name}.png", bytes(cv2.imencode(".png", item.image)[1]), "image/png")))
            label = yolo_label_text(item.image.shape, item.boxes)
            files.append(("labels", (f"{item.name}.txt", label.encode(), "text/plain")))
        form = {"format": "yolo", "author": author} | ({} if board is None else {"template": board})
        answer = httpx.post(f"{url}/v1/labels/import", data=form, files=files, headers=auth, timeout=300)
        if answer.status_code != 200:
            raise DemoError(f"label import at {url} failed: {answer.status_code} {answer.text[:300]}")
        report = answer.json()
        if report["refused"]:
            raise DemoError(f"label import at {url} refused {report['refused'][:3]}")
        imported += int(report["imported"])
    return imported


@dataclass(frozen=True)
class Line:
    """One model line of the demo: its registry name, task and architecture."""

    name: str
    task: str
    arch: str


def demo_lines(settings: DemoSettings) -> list[Line]:
    """The lines the hub federates: the classifier, and the detector when it is a template-crops model."""
    lines = [Line(CLASSIFIER, "classify", settings.classifier_arch)]
    if settings.detector_arch == TEMPLATE_CROPS:
        lines.append(Line(DETECTOR, "detect", TEMPLATE_CROPS))
    return lines


def line_training(line: Line, settings: DemoSettings) -> dict[str, float | int]:
    """How every plant trains ``line`` in a round (the report's baselines train the same way, for all rounds'
    epochs at once). A template-crops model's batch counts crops (about 20 a generated defective board with its
    jittered copies). Chosen on validation boards from the plants' own training boards (the crop detector pooled, 8
    epochs: mAP50 0.78 at 32 crops a step against 0.57-0.66 for the pooled baseline of a demo at 64; the crop
    classifier of one plant alone: 0.963 accuracy at 32, 0.500 at 256, which leaves it 5 steps an epoch)."""
    if line.arch != TEMPLATE_CROPS:
        return {"local_epochs": settings.local_epochs, "batch_size": 16, "learning_rate": settings.learning_rate}
    return {
        "local_epochs": settings.crop_detector_local_epochs if line.task == "detect" else settings.crop_local_epochs,
        "batch_size": settings.crop_batch_size,
        "learning_rate": settings.crop_learning_rate,
    }


def line_aggregation(line: Line, settings: DemoSettings) -> dict[str, object]:
    """A line's strategy at the hub (``rounds[i].aggregation``): ``settings.strategy`` for a pretrained classifier,
    FedAvg for a template-crops model trained from random weights."""
    if line.arch == TEMPLATE_CROPS:
        return {"strategy": "fedavg"}
    return {"strategy": settings.strategy, "params": dict(settings.strategy_params)}


def _bootstrap_models(settings: DemoSettings, data: PlantData, models_dir: Path, echo: Echo) -> tuple[Path, Path]:
    """Version 0 of the classifier line and of the detector (an untrained template-crops network the hub
    federates, or YOLOv8n trained briefly on a seed set that the edges serve)."""
    from fedinspect.seed_models import initial_classifier, initial_crop_classifier, initial_crop_detector, seed_detector

    if settings.classifier_arch == TEMPLATE_CROPS:
        classifier = initial_crop_classifier(
            models_dir / "classifier-v0",
            name=CLASSIFIER,
            seed=settings.seed,
            spec=data.proposals,
            base_width=data.crop_base_width,
        )
        echo("  classifier v0: untrained template-crops network (a board is its most defect-like difference)")
    else:
        classifier = initial_classifier(
            models_dir / "classifier-v0",
            name=CLASSIFIER,
            arch=settings.classifier_arch,
            size=settings.classifier_size,
            seed=settings.seed,
            reference=settings.reference,
            pretrained=settings.classifier_pretrained,
        )
        start = "ImageNet-pretrained" if settings.classifier_pretrained else "untrained"
        echo(
            f"  classifier v0: {start} {settings.classifier_arch}, {settings.classifier_size} px, "
            + ("compares each board with its golden template" if settings.reference else "1 channel")
        )
    if settings.detector_arch == TEMPLATE_CROPS:
        detector = initial_crop_detector(
            models_dir / "detector-v0",
            name=DETECTOR,
            classes=data.classes,
            seed=settings.seed,
            spec=data.proposals,
            base_width=data.crop_base_width,
        )
        echo("  detector v0: untrained template-crops network (names each difference from the template)")
        return classifier, detector
    detector, seconds = seed_detector(
        models_dir,
        models_dir / "detector",
        name=DETECTOR,
        classes=data.classes,
        size=settings.detector_size,
        epochs=settings.detector_epochs,
        seed=settings.seed,
        threads=os.cpu_count() or 1,
    )
    echo(f"  detector: YOLOv8n trained {settings.detector_epochs} epochs on 80 generated seed images ({seconds:.0f} s)")
    return classifier, detector


def _start_broker(services: Services, run_dir: Path, echo: Echo) -> dict[str, object]:
    """Mosquitto as a child process when installed, else the in-process Python broker (loudly development-only)."""
    if find_mosquitto() is not None:
        services.broker = MosquittoBroker(run_dir / "broker")
        services.broker.start()
        echo(f"broker: mosquitto on 127.0.0.1:{services.broker.port}")
        return {"host": "127.0.0.1", "port": services.broker.port, "topic_prefix": "demo/v1"}
    try:
        import amqtt  # noqa: F401
    except ImportError:
        raise DemoError(f"{INSTALL_HINT}; or pip install amqtt for a development-only Python broker") from None
    print(PYTHON_BROKER_WARNING, file=sys.stderr, flush=True)
    services.broker = PythonBroker()
    services.broker.start()
    echo(f"broker: in-process Python broker (development only) on 127.0.0.1:{services.broker.port}")
    return {"host": "127.0.0.1", "port": services.broker.port, "topic_prefix": "demo/v1", "protocol": "3.1.1"}


def _hub_config(settings: DemoSettings, run_dir: Path, broker: dict[str, object], port: int) -> dict[str, object]:
    return {
        "data_dir": str(run_dir / "hub"),
        "broker": broker,
        "http": {"port": port},
        "tick_interval_s": 0.5,
        "logging": {"level": "INFO"},
        "rounds": [
            {
                "model_name": line.name,
                "min_updates": settings.plants,
                "round_duration_s": settings.round_timeout_s,
                "max_rounds": settings.rounds,
                "training": line_training(line, settings),
                "aggregation": line_aggregation(line, settings),
            }
            for line in demo_lines(settings)
        ],
    }


def run_demo(settings: DemoSettings, echo: Echo = print) -> Path:
    """Run the demo; returns the report's index.html. Raises DemoError (or KeyboardInterrupt on Ctrl-C)."""
    from fedinspect.demo_report import write_report
    from hub.model_import import import_model
    from runtime.signing import generate_key_pair
    from schemas.config import HubConfig

    if not settings.reference and TEMPLATE_CROPS in (settings.classifier_arch, settings.detector_arch):
        raise DemoError("template-crops models compare each board with its golden template: keep the templates on")
    run_dir = settings.out_dir.resolve() / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    services = Services()

    def interrupted(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    try:
        echo(f"fedinspect demo: {settings.plants} plants, {settings.rounds} rounds; everything in {run_dir}")
        if settings.deeppcb is not None:
            echo(f"reading DeepPCB from {settings.deeppcb} (board groups become plants)")
        else:
            echo("generating boards: each plant has its own board style, defect mix and lighting")
        data = load_plants(
            settings.deeppcb,
            plants=settings.plants,
            size=_board_size(settings),
            seed=settings.seed,
            train_boards=settings.train_boards,
            test_boards=settings.test_boards,
            reference=settings.reference,
            kinds_per_plant=settings.kinds_per_plant,
        )
        for plant, kinds in zip(data.plants, _plants_kinds(settings), strict=False):
            echo(f"  {plant.name} has seen {', '.join(data.classes[k] for k in kinds)} only")
        for plant in data.plants:
            _write_images(plant, run_dir / "data", run_dir / "edges" / plant.name / "templates")
        echo("bootstrapping the initial models")
        classifier_bundle, detector_bundle = _bootstrap_models(settings, data, run_dir / "models", echo)

        broker = _start_broker(services, run_dir, echo)
        hub_dir = run_dir / "hub"
        generate_key_pair("hub", hub_dir / "keys")
        hub_port = free_port()
        hub_config = _hub_config(settings, run_dir, broker, hub_port)
        federated = [classifier_bundle] + ([detector_bundle] if settings.detector_arch == TEMPLATE_CROPS else [])
        for bundle in federated:  # version 0 of every line the hub federates
            import_model(HubConfig.model_validate(hub_config), bundle)
        (run_dir / "hub.yaml").write_text(json.dumps(hub_config, indent=1))

        edges: dict[str, Child] = {}
        for plant in data.plants:
            edge_dir = run_dir / "edges" / plant.name
            private_key, public_key = generate_key_pair(plant.name, edge_dir / "keys")
            (hub_dir / "keys" / "edges").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(public_key, hub_dir / "keys" / "edges" / public_key.name)
            port = free_port()
            config = {
                "edge_id": plant.name,
                "data_dir": str(edge_dir / "data"),
                "broker": broker,
                "http": {"port": port},
                "models": {
                    "classifier": str(classifier_bundle / "model.onnx"),
                    "detector": str(detector_bundle / "model.onnx"),
                    "hub_keys_dir": str(hub_dir / "keys"),
                },
                "status_interval_s": 5,
                **({"inspection": {"templates_dir": str(edge_dir / "templates")}} if settings.reference else {}),
                "training": {
                    "signing_key_file": str(private_key),
                    "threads": 1,
                    "idle_max_images_per_s": 50,
                    "augmentation": dict(settings.augmentation),
                },
            }
            (edge_dir / "edge.yaml").write_text(json.dumps(config, indent=1))
            edges[plant.name] = services.spawn(
                plant.name, "edge", edge_dir / "edge.yaml", port, edge_dir / "agent.log", edge_dir / "data"
            )
        for child in list(services.children):
            services.wait_ready(child, "/readyz")
        echo(f"edge agents ready: {', '.join(edges)}")
        for plant in data.plants:
            count = import_labels(edges[plant.name].url, plant.train, edges[plant.name].auth)
            echo(f"  {plant.name}: {count} labeled images imported ({sum(i.defective for i in plant.train)} defective)")

        hub = services.spawn("hub", "hub", run_dir / "hub.yaml", hub_port, run_dir / "hub.log", run_dir / "hub")
        services.wait_ready(hub, "/healthz")
        echo(
            f"hub running: rounds of {' and '.join(line.name for line in demo_lines(settings))}, "
            f"{settings.plants} updates each"
        )
        _print_pages(hub, edges, echo)
        _follow_rounds(settings, hub, edges, services, echo, run_dir / "edges")

        echo("scoring every global version and the local-only and centralized baselines")
        report = write_report(settings, data, run_dir, hub_dir, classifier_bundle, detector_bundle, echo)
        echo(f"done in {time.monotonic() - started:.0f} s. Report: {report}")
        if settings.keep_running:
            _print_pages(hub, edges, echo)
            echo("everything keeps running (--keep-running): look around and label; Ctrl-C stops it")
            try:
                while all(child.process.poll() is None for child in services.children):
                    time.sleep(1)
                echo("a demo process ended: stopping the rest")
            except KeyboardInterrupt:
                echo("stopping every demo process")
        return report
    finally:
        services.stop()
        signal.signal(signal.SIGTERM, previous)


def _print_pages(hub: Child, edges: dict[str, Child], echo: Echo) -> None:
    """Where a newcomer looks: the hub's and each edge's pages, and the demo's admin token each logs in with (a
    token of this demo's own loopback processes, made for it in their tokens files)."""
    echo("pages (log in with the token shown):")
    for child in [hub, *edges.values()]:
        token = child.auth["Authorization"].removeprefix("Bearer ")
        echo(f"  {child.name}: {child.url}/ui  token {token}")


def _board_size(settings: DemoSettings) -> int | None:
    """``board_size`` for generated boards and DeepPCB's native size for template-crops models (their proposal
    steps are set for them); without them both at the torchvision classifier's input size (the earlier demo drew
    boards at 128 px: defects of a few pixels stay visible)."""
    crops = TEMPLATE_CROPS in (settings.classifier_arch, settings.detector_arch)
    if settings.deeppcb is None:
        return settings.board_size if crops else settings.classifier_size
    return None if crops else settings.classifier_size


def _plants_kinds(settings: DemoSettings) -> list[tuple[int, ...]]:
    from fedinspect.demo_data import plant_kinds

    if settings.kinds_per_plant is None:
        return []
    return [plant_kinds(index, settings.plants, settings.kinds_per_plant) for index in range(settings.plants)]


def _installed_version(edge_data: Path, model: str) -> int:
    return newest_installed(edge_data / "models", model) or 0


def _follow_rounds(
    settings: DemoSettings, hub: Child, edges: dict[str, Child], services: Services, echo: Echo, edges_dir: Path
) -> None:
    """Print round and edge progress until every planned round of every line ended and each edge installed (and
    then served, or kept out for regressing on its holdout) each line's last version."""
    lines = [line.name for line in demo_lines(settings)]
    seen: dict[str, str] = {}
    serving: dict[tuple[str, str], int] = {}
    training: dict[str, str] = {}
    errors: dict[str, str] = {}
    settled_at = time.monotonic()
    timeout_s = settings.round_timeout_s * settings.rounds * len(lines)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in services.children:
            if child.process.poll() is not None:
                raise DemoError(f"{child.name} stopped (code {child.process.returncode}); see {child.log_file}")
        rounds = httpx.get(f"{hub.url}/v1/rounds", headers=hub.auth, timeout=10).json()
        for summary in rounds:
            state = f"{summary['state']}:{summary['updates_accepted']}"
            if seen.get(summary["round_id"]) == state:
                continue
            seen[summary["round_id"]] = state
            line = f"round {summary['round_id']}: {summary['state']}, {summary['updates_accepted']} updates"
            if summary["state"] == "published":
                detail = httpx.get(f"{hub.url}/v1/rounds/{summary['round_id']}", headers=hub.auth, timeout=10).json()
                line += f" -> global v{summary['new_version']}"
                for metric in ("accuracy", "mAP50"):
                    before, after = detail["metrics_before"].get(metric), detail["metrics_after"].get(metric)
                    if before is not None and after is not None:
                        line += f" (edges' local holdout {metric} {before:.2f} -> {after:.2f} after local training)"
            elif summary["state"] == "failed":
                line += f": {summary['reason']}"
            echo(line)
        for name, edge in edges.items():
            runs = httpx.get(f"{edge.url}/v1/training/runs", headers=edge.auth, timeout=10).json()
            running = next((r for r in runs if r["state"] == "running"), None)
            label = f"{running['round_id']}" if running else ""
            if running and training.get(name) != label:
                echo(f"  {name}: training for {running['round_id']}")
            training[name] = label
            models = httpx.get(f"{edge.url}/readyz", timeout=10).json()["models"]
            for model in lines:
                version = int(models[model]["version"])
                if serving.get((name, model), 0) != version:
                    echo(f"  {name}: now serving {model} v{version}")
                serving[name, model] = version
        for view in httpx.get(f"{hub.url}/v1/edges", headers=hub.auth, timeout=10).json():
            error = view["status"].get("last_error") or ""
            if error and errors.get(view["edge_id"]) != error:
                echo(f"  {view['edge_id']}: {error}")
            errors[view["edge_id"]] = error
        ended = {
            model: [r for r in rounds if r["model_name"] == model and r["state"] in ("published", "failed")]
            for model in lines
        }
        if all(len(done) >= settings.rounds for done in ended.values()):
            latest = {model: max((r["new_version"] or 0 for r in done), default=0) for model, done in ended.items()}
            installed = all(
                _installed_version(edges_dir / name / "data", model) >= version
                for name in edges
                for model, version in latest.items()
            )
            decided = all(
                serving.get((name, model)) == version or f"{model} v{version} not used" in errors.get(name, "")
                for name in edges
                for model, version in latest.items()
            )
            # an edge reports one last error, so one line's "not used" may hide the other's: then the 30 s
            if installed and (decided or time.monotonic() - settled_at > 30):
                return  # every edge served each last version or said why not (or 30 s passed after installing)
            if not installed:
                settled_at = time.monotonic()
        time.sleep(2)
    raise DemoError(f"the rounds did not finish within {timeout_s:.0f} s")
