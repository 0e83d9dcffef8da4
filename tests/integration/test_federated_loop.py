"""The closed loop with real processes: a hub and two edge agents on a real broker, non-IID generated data
labeled through the import API, two federated rounds; each edge trains, uploads, installs and swaps in the new
global model (with BatchNorm statistics of its own images), which then beats the initial one on held-out images of
that plant; inspection keeps answering meanwhile.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge.model_records import served_model_file
from fedinspect.devbroker import free_port
from runtime.signing import generate_key_pair
from schemas.bundle import MODEL_FILE
from schemas.config import BrokerConfig
from tests.support.models import CLASSIFIER_SIZE, small_classifier_bundle
from tests.support.processes import Agent, png
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]
torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
MODEL = "pcb-classifier"
# Background grey level of each plant's boards: their lighting differs.
LIGHTING = {"plant-a": 35, "plant-b": 60}


@dataclass(frozen=True)
class PlantData:
    images: np.ndarray
    labels: np.ndarray
    boxes: list[tuple[int, int, int, int] | None]


def plant_samples(count: int, *, seed: int, defect_ratio: float, background: float) -> PlantData:
    """Grayscale fields with (defective) or without (good) a bright blob; plants differ in defect mix and lighting."""
    rng = np.random.default_rng(seed)
    size = CLASSIFIER_SIZE
    images = rng.normal(background, 12, (count, size, size)).clip(0, 255).astype(np.uint8)
    labels = (rng.random(count) < defect_ratio).astype(np.int64)
    boxes: list[tuple[int, int, int, int] | None] = []
    for image, label in zip(images, labels, strict=True):
        if not label:
            boxes.append(None)
            continue
        x, y = (int(v) for v in rng.integers(10, size - 10, 2))
        radius = int(rng.integers(3, 8))
        cv2.circle(image, (x, y), radius, int(rng.integers(170, 255)), -1)
        boxes.append((x - radius, y - radius, x + radius, y + radius))
    return PlantData(images, labels, boxes)


def import_labels(agent: Agent, data: PlantData) -> None:
    """Label every image through POST /v1/labels/import (YOLO txt; the blob is class 1 of the test detector)."""
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    for index, (image, box) in enumerate(zip(data.images, data.boxes, strict=True)):
        files.append(("images", (f"img{index:04d}.png", png(image), "image/png")))
        line = ""
        if box is not None:
            x1, y1, x2, y2 = box
            centre_x, centre_y = (x1 + x2) / 2 / CLASSIFIER_SIZE, (y1 + y2) / 2 / CLASSIFIER_SIZE
            width, height = (x2 - x1) / CLASSIFIER_SIZE, (y2 - y1) / CLASSIFIER_SIZE
            line = f"1 {centre_x:.5f} {centre_y:.5f} {width:.5f} {height:.5f}\n"
        files.append(("labels", (f"img{index:04d}.txt", line.encode(), "text/plain")))
    answer = httpx.post(
        f"{agent.url}/v1/labels/import",
        data={"format": "yolo", "author": "qa"},
        files=files,
        headers=agent.auth,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["imported"] == len(data.images), answer.json()["refused"][:3]


def accuracy(model_file: Path, data: PlantData, cache: Path) -> float:
    from edge.inference.classifier import Classifier
    from schemas.config import InferenceConfig

    classifier = Classifier.load(model_file, InferenceConfig(), cache_dir=cache)
    results = classifier.predict_batch(list(data.images))
    defect = classifier.metadata.classes.index("defective")
    return float(
        np.mean([(r.class_id == defect) == bool(label) for r, label in zip(results, data.labels, strict=True)])
    )


def p95(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 95))


@dataclass
class Loop:
    hub: Agent
    edges: dict[str, Agent]
    hub_dir: Path
    bundle: Path


@pytest.fixture
def loop(
    broker_config: Callable[..., BrokerConfig], detector_bundle: Path, tmp_path: Path
) -> Iterator[Callable[..., Loop]]:
    from hub.model_import import import_model
    from schemas.config import HubConfig

    started: list[Agent] = []

    def make(edge_ids: list[str], *, rounds: int, min_updates: int, round_duration_s: float = 600) -> Loop:
        bundle = small_classifier_bundle(tmp_path / "bundle-v0", MODEL, size=CLASSIFIER_SIZE, seed=5)
        hub_dir = tmp_path / "hub"
        generate_key_pair("hub", hub_dir / "keys")
        broker = json.loads(broker_config().model_dump_json())
        hub_config = {
            "data_dir": str(hub_dir),
            "broker": broker,
            "http": {"port": free_port()},
            "tick_interval_s": 0.5,
            "rounds": [
                {
                    "model_name": MODEL,
                    "min_updates": min_updates,
                    "round_duration_s": round_duration_s,
                    "max_rounds": rounds,
                    "training": {"local_epochs": 5, "batch_size": 16, "learning_rate": 0.002},
                }
            ],
        }
        assert import_model(HubConfig.model_validate(hub_config), bundle) == 0
        (tmp_path / "hub.yaml").write_text(json.dumps(hub_config))
        hub = Agent(tmp_path / "hub.yaml", hub_config["http"]["port"], tmp_path / "hub.log", role="hub")
        edges = {}
        for edge_id in edge_ids:
            edge_dir = tmp_path / edge_id
            private_key, public_key = generate_key_pair(edge_id, edge_dir / "keys")
            (hub_dir / "keys" / "edges").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(public_key, hub_dir / "keys" / "edges" / public_key.name)
            port = free_port()
            config = {
                "edge_id": edge_id,
                "data_dir": str(edge_dir / "data"),
                "broker": broker,
                "http": {"port": port},
                "models": {
                    "classifier": str(bundle / MODEL_FILE),
                    "detector": str(detector_bundle / MODEL_FILE),
                    "hub_keys_dir": str(hub_dir / "keys"),
                    # The local holdout here is 20 images (one image = 0.05); runs of the same loop scored the
                    # round-1 model anywhere from 0.70 to 0.95 on it. A tolerance tight enough to mean something
                    # lets that noise keep a version out now and then, and the loop then waits for a swap that never
                    # comes. These tests are about the loop, so every new version is taken (tolerance 1); the guard's
                    # own decisions are tested in tests/edge/test_swap.py and tests/integration/test_edge_agent.py.
                    "regression_tolerance": 1.0,
                },
                "status_interval_s": 1,
                "training": {
                    "signing_key_file": str(private_key),
                    "min_examples": 8,
                    "idle_max_images_per_s": 20,
                    "threads": 1,
                },
            }
            (edge_dir / "edge.yaml").write_text(json.dumps(config))
            edges[edge_id] = Agent(edge_dir / "edge.yaml", port, edge_dir / "agent.log")
        started.extend([hub, *edges.values()])
        return Loop(hub, edges, hub_dir, bundle)

    yield make
    for agent in started:
        agent.kill()


def classifier_version(agent: Agent) -> int:
    return int(httpx.get(f"{agent.url}/readyz", timeout=5).json()["models"][MODEL]["version"])


def training_runs(agent: Agent) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = httpx.get(f"{agent.url}/v1/training/runs", headers=agent.auth, timeout=5).json()
    return runs


# Log lines that say nothing about the loop's progress; everything else is shown when a wait fails.
ROUTINE_LOG_LINES = ('"image inspected"', '"training progress"', '"level": "DEBUG"')


def loop_state(setup: Loop, lines_per_process: int = 30) -> str:
    """What each process last did and says of itself: for the failure message of a wait on the loop."""
    parts = []
    for name, agent in [("hub", setup.hub), *setup.edges.items()]:
        alive = agent.process is not None and agent.process.poll() is None
        try:
            path = "/v1/rounds" if agent is setup.hub else "/readyz"
            said = httpx.get(f"{agent.url}{path}", headers=agent.auth, timeout=5).text[:2000]
        except httpx.HTTPError as exc:
            said = f"unreachable: {exc!r}"
        lines = agent.log_file.read_text(errors="replace").splitlines() if agent.log_file.exists() else []
        story = [line[:600] for line in lines if not any(marker in line for marker in ROUTINE_LOG_LINES)]
        parts.append(
            f"--- {name} (running: {alive}) says: {said}\n--- {name} log, last {lines_per_process} lifecycle lines:\n"
            + "\n".join(story[-lines_per_process:])
        )
    return "\n".join(parts)


def slow_poll(condition: Callable[[], bool], timeout: float, what: str, setup: Loop) -> None:
    def paced() -> bool:
        if condition():
            return True
        time.sleep(0.5)
        return False

    wait_until(paced, timeout, what, explain=lambda: loop_state(setup))


def test_two_edges_two_rounds_improve_the_global_model(loop: Callable[..., Loop], tmp_path: Path) -> None:
    setup = loop(["plant-a", "plant-b"], rounds=2, min_updates=2)
    plant_a = plant_samples(90, seed=1, defect_ratio=0.75, background=LIGHTING["plant-a"])
    plant_b = plant_samples(90, seed=2, defect_ratio=0.25, background=LIGHTING["plant-b"])
    for agent in setup.edges.values():
        agent.start()
    edge_a, edge_b = setup.edges["plant-a"], setup.edges["plant-b"]
    # What plant-a's camera sends meanwhile: unlabeled images of its own line, which also become the BatchNorm
    # statistics its edge gives each new global model.
    line_a = plant_samples(10, seed=11, defect_ratio=0.75, background=LIGHTING["plant-a"])
    probe = [png(image) for image in line_a.images]

    def inspect(client: httpx.Client, index: int) -> float:
        started = time.perf_counter()
        answer = client.post("/v1/inspect", content=probe[index % len(probe)], headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        return (time.perf_counter() - started) * 1000

    with httpx.Client(base_url=edge_a.url, timeout=10, headers=edge_a.auth) as client:
        idle = [inspect(client, i) for i in range(60)]
        import_labels(edge_a, plant_a)
        import_labels(edge_b, plant_b)
        setup.hub.start()  # opens round 1; both edges have labels and the initial bundle, so they train

        slow_poll(lambda: any(r["state"] == "running" for r in training_runs(edge_a)), 60, "plant-a training", setup)
        [first_run] = [r["run_id"] for r in training_runs(edge_a) if r["state"] == "running"]
        during: list[float] = []

        def still_training() -> bool:
            return any(r["run_id"] == first_run and r["state"] == "running" for r in training_runs(edge_a))

        while still_training():  # every request must succeed
            during.append(inspect(client, len(during)))
            time.sleep(0.05)
    print(f"\ninspection p95 idle {p95(idle):.1f} ms, during training {p95(during):.1f} ms ({len(during)} requests)")
    assert len(during) >= 5

    slow_poll(
        lambda: all(classifier_version(a) == 2 for a in setup.edges.values()), 240, "both edges on version 2", setup
    )
    for agent in setup.edges.values():  # each edge swapped in each new version, in turn
        swaps = [
            json.loads(line)["to_version"]
            for line in agent.log_file.read_text().splitlines()
            if '"model swapped in"' in line
        ]
        assert swaps == [1, 2], swaps

    rounds = httpx.get(f"{setup.hub.url}/v1/rounds", headers=setup.hub.auth, timeout=5).json()
    assert [(r["state"], r["new_version"]) for r in rounds] == [("published", 1), ("published", 2)]
    for summary in rounds:
        detail = httpx.get(f"{setup.hub.url}/v1/rounds/{summary['round_id']}", headers=setup.hub.auth, timeout=5).json()
        assert sorted(u["edge_id"] for u in detail["updates"]) == ["plant-a", "plant-b"]
        for update in detail["updates"]:
            assert update["status"] == "accepted"
            assert set(update["metrics_before"]) >= {"accuracy", "loss"}
            assert set(update["metrics_after"]) >= {"accuracy", "loss"}
        assert "accuracy" in detail["metrics_after"]
    for agent in setup.edges.values():
        runs = training_runs(agent)
        assert [r["state"] for r in runs] == ["uploaded", "uploaded"], runs
        assert {r["round_id"] for r in runs} == {r["round_id"] for r in rounds}

    # What each plant gets out of it: the model its edge now serves, on new balanced images of that plant's line.
    for seed, (edge_id, lighting) in enumerate(LIGHTING.items(), 21):
        served = served_model_file(tmp_path / edge_id / "data" / "models", MODEL, 0)
        assert served == tmp_path / edge_id / "data" / "models-local" / MODEL / "2" / MODEL_FILE, served
        held_out = plant_samples(100, seed=seed, defect_ratio=0.5, background=lighting)
        initial = accuracy(setup.bundle / MODEL_FILE, held_out, tmp_path / "cache")
        final = accuracy(served, held_out, tmp_path / "cache")
        print(f"{edge_id} held-out accuracy: initial {initial:.2f}, served after round 2 {final:.2f}")
        assert final > initial + 0.25, (edge_id, initial, final)


def trainer_processes(marker: Path) -> list[int]:
    """Pids of training workers whose job lives under ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "edge.training.worker" in command and str(marker) in command:
            pids.append(int(entry.name))
    return pids


def test_sigkill_during_training_retrains_after_restart_and_the_round_gets_the_update(
    loop: Callable[..., Loop], tmp_path: Path
) -> None:
    import signal

    setup = loop(["plant-a"], rounds=1, min_updates=1)
    agent = setup.edges["plant-a"]
    agent.start()
    import_labels(agent, plant_samples(60, seed=4, defect_ratio=0.5, background=40))
    setup.hub.start()
    slow_poll(lambda: bool(trainer_processes(tmp_path / "plant-a")), 60, "a training worker running", setup)
    killed_run = training_runs(agent)[0]
    assert killed_run["state"] == "running"
    assert agent.signal(signal.SIGKILL) == -signal.SIGKILL
    slow_poll(lambda: not trainer_processes(tmp_path / "plant-a"), 10, "the orphaned trainer gone", setup)

    agent.start()
    slow_poll(lambda: classifier_version(agent) == 1, 240, "the round published with the retrained update", setup)
    runs = training_runs(agent)
    assert [(r["run_id"], r["state"]) for r in runs][-1] == (killed_run["run_id"], "interrupted")
    assert runs[-1]["detail"] == "the agent stopped during training"
    assert runs[0]["state"] == "uploaded" and runs[0]["round_id"] == killed_run["round_id"]
    [summary] = httpx.get(f"{setup.hub.url}/v1/rounds", headers=setup.hub.auth, timeout=5).json()
    assert (summary["state"], summary["new_version"], summary["updates_accepted"]) == ("published", 1, 1)
