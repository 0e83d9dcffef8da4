"""``fedinspect demo``: the whole system on one machine, on generated boards (or DeepPCB), with a report.

A Mosquitto child process on a loopback port (or, without Mosquitto, a development-only in-process Python
broker with a loud warning), a hub and one edge agent per plant run as real processes with
generated configs and keys. The demo bootstraps the initial models (an untrained MobileNetV3 classifier line the
hub federates, and a YOLO detector trained briefly on a seed set that the edges serve), labels each plant's
training images through the edges' import API, then lets the hub run its rounds while it prints progress. At the
end it scores every global version on each plant's test images and on boards no plant trained on, trains the
same classifier on each plant alone and on all plants pooled with the same budget, and writes an HTML report.
Every child dies with the demo (parent-death signal) and is stopped on Ctrl-C.
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
from fedinspect.demo_data import LabeledImage, Plant, PlantData, load_plants
from fedinspect.devbroker import INSTALL_HINT, MosquittoBroker, find_mosquitto, free_port
from fedinspect.processes import die_with_parent
from fedinspect.pybroker import WARNING as PYTHON_BROKER_WARNING
from fedinspect.pybroker import PythonBroker

CLASSIFIER = "pcb-classifier"
DETECTOR = "pcb-detector"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    out_dir: Path = Path("demo-out")
    rounds: int = 4
    plants: int = 3
    train_boards: int = 80
    test_boards: int = 26
    board_size: int = 128
    """Boards drawn at 128 px: defects of a few pixels are a larger part of the image than on 256 px boards
    scaled down (measured, one plant, resnet18, 8 epochs from scratch: 0.83 test accuracy on 100 boards drawn at
    128 px; 0.5-0.6 on 40 boards drawn at 256 px and scaled to 128)."""
    classifier_size: int = 128
    classifier_arch: str = "mobilenet_v2"
    classifier_pretrained: bool = True
    """MobileNetV2 on the packaged ImageNet backbone (``exporters.pretrained``), comparing each board with its
    template. Measured on DeepPCB template comparisons at 128 px, 456 pooled training images, 6 epochs, scored on
    144 validation images of the same groups: 0.938 accuracy pretrained, 0.500 (chance) for resnet18 from random
    weights (docs/benchmarks.md). From random weights (an earlier demo without templates): resnet18 0.73,
    mobilenet_v3_small 0.57 after 16 epochs on one generated plant."""
    detector_size: int = 128
    detector_epochs: int = 12
    local_epochs: int = 2
    learning_rate: float = 0.001
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
    """The hub's aggregation. Chosen on validation boards from the plants' own training data (bench fl
    --score-on validation, the demo's generated plants, 4 rounds x 2 epochs): FedAvg 0.829 accuracy, FedAvgM
    momentum 0.5 0.963, momentum 0.9 with server rate 0.5 0.939 (docs/benchmarks.md)."""
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
        from schemas.access import ApiRole, TokenStore

        token = TokenStore(data_dir / "api-tokens.json").add("demo", ApiRole.ADMIN)
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "fedinspect.cli", role, "run", "--config", str(config_file)],
                stdout=log,
                stderr=log,
                env=env,
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


def _bootstrap_models(settings: DemoSettings, data: PlantData, models_dir: Path, echo: Echo) -> tuple[Path, Path]:
    """Version 0 of the classifier line (untrained) and the detector the edges serve (trained on a seed set)."""
    from fedinspect.seed_models import initial_classifier, seed_detector

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
        "aggregation": {"strategy": settings.strategy, "params": dict(settings.strategy_params)},
        "rounds": [
            {
                "model_name": CLASSIFIER,
                "min_updates": settings.plants,
                "round_duration_s": settings.round_timeout_s,
                "max_rounds": settings.rounds,
                "training": {
                    "local_epochs": settings.local_epochs,
                    "batch_size": 16,
                    "learning_rate": settings.learning_rate,
                },
            }
        ],
    }


def run_demo(settings: DemoSettings, echo: Echo = print) -> Path:
    """Run the demo; returns the report's index.html. Raises DemoError (or KeyboardInterrupt on Ctrl-C)."""
    from fedinspect.demo_report import write_report
    from hub.service import import_model
    from schemas.config import HubConfig
    from schemas.signing import generate_key_pair

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
            size=settings.board_size,
            seed=settings.seed,
            train_boards=settings.train_boards,
            test_boards=settings.test_boards,
            reference=settings.reference,
        )
        for plant in data.plants:
            _write_images(plant, run_dir / "data", run_dir / "edges" / plant.name / "templates")
        echo("bootstrapping the initial models")
        classifier_bundle, detector_bundle = _bootstrap_models(settings, data, run_dir / "models", echo)

        broker = _start_broker(services, run_dir, echo)
        hub_dir = run_dir / "hub"
        generate_key_pair("hub", hub_dir / "keys")
        hub_port = free_port()
        hub_config = _hub_config(settings, run_dir, broker, hub_port)
        import_model(HubConfig.model_validate(hub_config), classifier_bundle)
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
        echo(f"hub running: rounds of {CLASSIFIER}, {settings.plants} updates each")
        _follow_rounds(settings, hub, edges, services, echo, run_dir / "edges")

        echo("scoring every global version and the local-only and centralized baselines")
        report = write_report(settings, data, run_dir, hub_dir, classifier_bundle, detector_bundle, echo)
        echo(f"done in {time.monotonic() - started:.0f} s. Report: {report}")
        return report
    finally:
        services.stop()
        signal.signal(signal.SIGTERM, previous)


def _installed_version(edge_data: Path) -> int:
    try:
        return int((edge_data / "models" / CLASSIFIER / "current").read_text().strip())
    except (OSError, ValueError):
        return 0


def _follow_rounds(
    settings: DemoSettings, hub: Child, edges: dict[str, Child], services: Services, echo: Echo, edges_dir: Path
) -> None:
    """Print round and edge progress until every planned round ended and each edge installed (and then served, or
    kept out for regressing on its holdout) the last version."""
    seen: dict[str, str] = {}
    serving: dict[str, int] = {}
    training: dict[str, str] = {}
    errors: dict[str, str] = {}
    settled_at = time.monotonic()
    deadline = time.monotonic() + settings.round_timeout_s * settings.rounds
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
                before = detail["metrics_before"].get("accuracy")
                after = detail["metrics_after"].get("accuracy")
                line += f" -> global v{summary['new_version']}"
                if before is not None and after is not None:
                    line += f" (edges' local holdout accuracy {before:.2f} -> {after:.2f} after local training)"
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
            version = int(httpx.get(f"{edge.url}/readyz", timeout=10).json()["models"][CLASSIFIER]["version"])
            if serving.get(name, 0) != version:
                echo(f"  {name}: now serving {CLASSIFIER} v{version}")
            serving[name] = version
        for view in httpx.get(f"{hub.url}/v1/edges", headers=hub.auth, timeout=10).json():
            error = view["status"].get("last_error") or ""
            if error and errors.get(view["edge_id"]) != error:
                echo(f"  {view['edge_id']}: {error}")
            errors[view["edge_id"]] = error
        ended = [r for r in rounds if r["state"] in ("published", "failed")]
        if len(ended) >= settings.rounds:
            latest = max((r["new_version"] or 0 for r in ended), default=0)
            installed = all(_installed_version(edges_dir / name / "data") >= latest for name in edges)
            decided = all(
                serving.get(name) == latest or f"v{latest} not used" in errors.get(name, "") for name in edges
            )
            if installed and (decided or time.monotonic() - settled_at > 30):
                return  # every edge served the last version or said why not (or 30 s passed after installing)
            if not installed:
                settled_at = time.monotonic()
        time.sleep(2)
    raise DemoError(f"the rounds did not finish within {settings.round_timeout_s * settings.rounds:.0f} s")
