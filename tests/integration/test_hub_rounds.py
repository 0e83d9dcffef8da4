"""Federated rounds end to end over the real broker: a hub and three simulated edges, one of which never reports."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge.commands import CommandExecutor
from edge.db import open_edge_database
from edge.updates import UpdateUploader
from fedinspect.devbroker import MosquittoBroker, free_port
from hub.db import open_hub_database
from hub.registry import ModelRegistry
from hub.service import HubService
from runtime.access import ApiRole
from runtime.exchange import TransferOutbox
from runtime.mqtt import MqttLink, ReceivedMessage
from runtime.signing import KeyRing, SigningKey, generate_key_pair
from schemas.config import BrokerConfig, HubConfig
from schemas.manifests import TensorEncoding
from schemas.messages import Role, RoundAnnouncementMessage, RoundState, TransferState, TransferStatusMessage
from tests.schemas import samples
from tests.support.access import bearer, token_for
from tests.support.recorder import MessageRecorder
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker
MODEL = "pcb-detector"
BASE: dict[str, np.ndarray] = {"w": np.zeros(1000, np.float32), "steps": np.array(0, np.int64)}
REPO_ROOT = Path(__file__).resolve().parents[2]


class SimulatedEdge:
    """Answers each open round once with a fixed delta, when it participates."""

    def __init__(self, config: BrokerConfig, edge_id: str, value: float, examples: int, root: Path) -> None:
        self.edge_id, self.value, self.examples = edge_id, value, examples
        self.participate = True
        self.answered: dict[str, str] = {}  # round id -> transfer id
        self.last_open: RoundAnnouncementMessage | None = None
        private, _ = generate_key_pair(edge_id, root / "edge-keys")
        shutil.copy(root / "edge-keys" / f"{edge_id}.pub", root / "hub" / "keys" / "edges" / f"{edge_id}.pub")
        self.link = MqttLink(config, role=Role.EDGE, node_id=edge_id)
        self.outbox = TransferOutbox(
            self.link, open_edge_database(root / edge_id / "db.sqlite"), root / edge_id / "spool"
        )
        self.uploader = UpdateUploader(self.outbox, SigningKey.load(private), root / edge_id / "work")
        self.link.subscribe(
            self.link.topics.edge_update_statuses(edge_id),
            self.outbox.handle_status,
            message_type=TransferStatusMessage,
        )
        self.link.subscribe(self.link.topics.round(MODEL), self._on_round, message_type=RoundAnnouncementMessage)
        self._lock = threading.Lock()
        self.link.start()
        self.link.wait_connected(10)
        self.outbox.start()

    def _on_round(self, message: ReceivedMessage[RoundAnnouncementMessage]) -> None:
        if message.payload.body.state == RoundState.OPEN:
            self.last_open = message.payload
            self.answer()

    def answer(self) -> None:
        with self._lock:
            announcement = self.last_open
            if not self.participate or announcement is None or announcement.body.round_id in self.answered:
                return
            body = announcement.body
            self.answered[body.round_id] = self.uploader.upload(
                {"w": np.full(1000, self.value, np.float32), "steps": np.array(1, np.int64)},
                model_name=MODEL,
                round_id=body.round_id,
                base_version=body.base_version,
                num_examples=self.examples,
                encoding=TensorEncoding(dtype="fp32", compression="zstd"),
                metrics_before={"accuracy": self.value / 10},  # the base version on this edge's holdout
            )

    def close(self) -> None:
        self.outbox.stop()
        self.link.stop(timeout=2)


@pytest.fixture
def plant(
    broker: MosquittoBroker, broker_config: Callable[..., BrokerConfig], topic_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., tuple[HubConfig, list[SimulatedEdge]]]]:
    edges: list[SimulatedEdge] = []

    def make(k: int, duration_s: float, max_rounds: int) -> tuple[HubConfig, list[SimulatedEdge]]:
        http_port = free_port()
        hub_dir = tmp_path / "hub"
        (hub_dir / "keys" / "edges").mkdir(parents=True)
        generate_key_pair("hub", hub_dir / "keys")
        config = HubConfig(
            data_dir=hub_dir,
            broker=broker_config(keepalive_s=5).model_dump(),
            rounds=[{"model_name": MODEL, "min_updates": k, "round_duration_s": duration_s, "max_rounds": max_rounds}],
            tick_interval_s=0.2,
            http={"port": http_port},
        )
        manifest = samples.model_manifest().model_copy(update={"version": 0, "parent": None, "signature": None})
        ModelRegistry(open_hub_database(config), hub_dir / "artifacts").import_root(manifest, BASE)
        for edge_id, value, examples in (("edge-a", 1.0, 10), ("edge-b", 4.0, 30), ("edge-c", 2.0, 10)):
            edges.append(SimulatedEdge(broker_config(), edge_id, value, examples, tmp_path))
        edges[2].participate = False  # edge-c never reports
        return config, edges

    yield make
    for edge in edges:
        edge.close()


@pytest.fixture
def running_hub() -> Iterator[Callable[[HubConfig], HubService]]:
    started: list[tuple[HubService, threading.Thread]] = []

    def start(config: HubConfig) -> HubService:
        service = HubService(config)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        started.append((service, thread))
        return service

    yield start
    for service, thread in started:
        service.stop()
        thread.join(10)


def round_state(service: HubService, round_id: str) -> RoundState | None:
    try:
        return service.rounds.round(round_id)[0].state
    except KeyError:
        return None


@pytest.mark.slow
def test_k2_round_closes_on_the_second_update_and_publishes(
    plant: Callable[..., Any],
    running_hub: Callable[[HubConfig], HubService],
    broker: MosquittoBroker,
    topic_prefix: str,
) -> None:
    config, edges = plant(k=2, duration_s=60, max_rounds=1)
    announcements = MessageRecorder(broker.host, broker.port, f"{topic_prefix}/model/{MODEL}/announce")
    try:
        service = running_hub(config)
        round_id = f"{MODEL}-r0001"
        wait_until(lambda: round_state(service, round_id) == RoundState.PUBLISHED, 30, "round published")
        _, reason, version = service.rounds.round(round_id)
        assert (reason, version) == (None, 1)
        published = service.registry.get(MODEL, 1)
        assert sorted(published.participants) == ["edge-a", "edge-b"]
        # FedAvg weighted by examples: (10 * 1 + 30 * 4) / 40 = 3.25; edge-c never reported
        np.testing.assert_allclose(service.registry.weights(MODEL, 1)["w"], np.full(1000, 3.25))
        message = announcements.wait_for(f"{topic_prefix}/model/{MODEL}/announce", timeout=10)[-1]
        announced = samples.documents()["model_announcement"].model_validate_json(message.payload)
        assert announced.body.manifest.version == 1  # type: ignore[attr-defined]
        assert announced.body.manifest.signature is not None  # type: ignore[attr-defined]
        assert edges[2].answered == {}
    finally:
        announcements.close()


@pytest.mark.slow
def test_k3_round_fails_at_the_deadline_and_the_next_opens(
    plant: Callable[..., Any], running_hub: Callable[[HubConfig], HubService]
) -> None:
    config, edges = plant(k=3, duration_s=3, max_rounds=2)
    service = running_hub(config)
    first, second = f"{MODEL}-r0001", f"{MODEL}-r0002"
    wait_until(lambda: round_state(service, first) == RoundState.FAILED, 30, "first round failed")
    assert service.rounds.round(first)[1] == "deadline passed with 2 of 3 required updates"
    wait_until(lambda: round_state(service, second) is not None, 10, "second round opened")
    assert service.registry.latest_version(MODEL) == 0
    wait_until(lambda: second in edges[0].answered, 10, "edges answer the new round")


def start_hub_process(config_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedinspect.cli", "hub", "run", "--config", str(config_file)],
        cwd=REPO_ROOT,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_hub_killed_mid_round_completes_it_without_resends(plant: Callable[..., Any], tmp_path: Path) -> None:
    config, edges = plant(k=3, duration_s=120, max_rounds=1)
    config_file = tmp_path / "hub.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude={"broker": {"password"}})))
    edge_a, edge_b, edge_c = edges
    edge_b.participate = False
    edge_c.participate = False
    hub = start_hub_process(config_file)
    try:
        wait_until(lambda: "pcb-detector-r0001" in edge_a.answered, 30, "edge-a answered")
        transfer = edge_a.answered["pcb-detector-r0001"]
        wait_until(
            lambda: (r := edge_a.outbox.record(transfer)) is not None and r.state == TransferState.COMPLETE,
            30,
            "edge-a's update accepted",
        )
        sent_before = edge_a.outbox.chunks_sent
        hub.send_signal(signal.SIGKILL)
        hub.wait()
        hub = start_hub_process(config_file)
        for edge in (edge_b, edge_c):
            edge.participate = True
            edge.answer()
        registry = ModelRegistry(open_hub_database(config), config.data_dir / "artifacts")
        wait_until(lambda: registry.latest_version(MODEL) == 1, 60, "version 1 published after the restart")
        assert sorted(registry.get(MODEL, 1).participants) == ["edge-a", "edge-b", "edge-c"]
        assert edge_a.outbox.chunks_sent == sent_before  # edge-a never sent again
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(15)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()


@pytest.mark.slow
def test_hub_api_shows_edges_rounds_models_and_takes_commands_and_rollbacks(
    plant: Callable[..., Any], running_hub: Callable[[HubConfig], HubService], tmp_path: Path
) -> None:
    config, edges = plant(k=2, duration_s=60, max_rounds=1)
    executor = CommandExecutor(
        edges[0].link,
        open_edge_database(tmp_path / "edge-a-commands.db"),
        {"report_status": lambda body: {"reported": True}},
        hub_keys=KeyRing.from_directory(config.data_dir / "keys"),
    )
    _, admin_token = token_for(config.data_dir / "api-tokens.json", ApiRole.ADMIN, name="plant-admin")
    _, operator_token = token_for(config.data_dir / "api-tokens.json", ApiRole.OPERATOR, name="line-lead")
    _, viewer_token = token_for(config.data_dir / "api-tokens.json", ApiRole.VIEWER, name="dashboard")
    service = running_hub(config)
    base_url = f"http://127.0.0.1:{config.http.port}"
    api = httpx.Client(base_url=base_url, timeout=10, headers=bearer(admin_token))
    try:
        wait_until(lambda: _get(api, "/healthz") is not None, 10, "API up")
        wait_until(lambda: round_state(service, f"{MODEL}-r0001") == RoundState.PUBLISHED, 30, "round published")
        assert api.get("/healthz").json() == {"status": "ok", "broker_connected": True}

        edges_view = api.get("/v1/edges").json()
        assert {e["edge_id"]: e["status"]["state"] for e in edges_view} == {
            "edge-a": "online",
            "edge-b": "online",
            "edge-c": "online",
        }
        [round_view] = api.get("/v1/rounds").json()
        assert (round_view["state"], round_view["updates_accepted"], round_view["new_version"]) == ("published", 2, 1)
        versions = api.get("/v1/models").json()[MODEL]
        assert [(v["version"], v["parent"]) for v in versions] == [(0, None), (1, 0)]

        sent = api.post("/v1/edges/edge-a/commands", json={"command": {"action": "report_status"}, "ttl_s": 60})
        assert sent.status_code == 202
        command_id = sent.json()["command_id"]
        wait_until(lambda: api.get(f"/v1/commands/{command_id}").json()["outcome"] == "succeeded", 10, "command done")
        bad = api.post("/v1/edges/edge-a/commands", json={"command": {"action": "self_destruct"}})
        assert bad.status_code == 422
        # roles: an operator may ask an edge to train or report, not pin or roll back; a viewer only reads
        with httpx.Client(base_url=base_url, timeout=10, headers=bearer(operator_token)) as operator:
            train = {"command": {"action": "train_now", "model_name": MODEL}, "ttl_s": 60}
            assert operator.post("/v1/edges/edge-a/commands", json=train).status_code == 202
            pin = {"command": {"action": "pin_model", "model_name": MODEL, "version": 0}, "ttl_s": 60}
            refused = operator.post("/v1/edges/edge-a/commands", json=pin)
            assert refused.status_code == 403 and "needs the admin role; line-lead is a operator" in refused.text
            assert operator.post(f"/v1/models/{MODEL}/rollback", json={"to_version": 0}).status_code == 403
        with httpx.Client(base_url=base_url, timeout=10, headers=bearer(viewer_token)) as viewer:
            assert viewer.get("/v1/rounds").status_code == 200
            assert viewer.post("/v1/edges/edge-a/commands", json=train).status_code == 403
        assert httpx.get(f"{base_url}/v1/rounds", timeout=10).status_code == 401  # no token
        rebound = httpx.get(
            f"{base_url}/v1/rounds", timeout=10, headers={**bearer(admin_token), "host": "evil.example"}
        )
        assert rebound.status_code == 400

        rolled = api.post(f"/v1/models/{MODEL}/rollback", json={"to_version": 0})
        assert rolled.status_code == 200
        assert (rolled.json()["version"], rolled.json()["parent"], rolled.json()["strategy"]) == (2, 0, "rollback")
        np.testing.assert_array_equal(service.registry.weights(MODEL, 2)["w"], BASE["w"])
        assert api.post(f"/v1/models/{MODEL}/rollback", json={"to_version": 9}).status_code == 404

        families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
        assert families["fedinspect_hub_model_version"].samples[0].value == 2
        assert families["fedinspect_hub_edges_online"].samples[0].value == 3
        published = [s for s in families["fedinspect_hub_rounds"].samples if s.labels["state"] == "published"]
        assert published[0].value == 1
        assert api.get("/v1/rejections").json() == []
    finally:
        api.close()
        executor.close()


def _get(api: httpx.Client, path: str) -> httpx.Response | None:
    try:
        return api.get(path)
    except httpx.TransportError:
        return None


@pytest.mark.slow
def test_hub_pages_show_the_fleet_online_and_offline_and_a_refused_update_in_a_real_browser(
    plant: Callable[..., Any], running_hub: Callable[[HubConfig], HubService], browser: Any, tmp_path: Path
) -> None:
    """Three simulated edges: edge-a and edge-b answer the round, edge-c sends a delta that is not finite (refused,
    with its reason) and then stops (offline). The pages, logged in as a viewer, show all of it; an operator's
    command and an admin's pin reach edge-a and their acks show on the page; the operator may not pin or roll
    back."""
    from tests.conftest import ARTEFACTS_DIR

    config, edges = plant(k=2, duration_s=60, max_rounds=1)
    edges[2].value, edges[2].participate = float("nan"), True
    _, viewer_token = token_for(config.data_dir / "api-tokens.json", ApiRole.VIEWER, name="dashboard")
    service = running_hub(config)
    base_url = f"http://127.0.0.1:{config.http.port}"
    wait_until(lambda: round_state(service, f"{MODEL}-r0001") == RoundState.PUBLISHED, 30, "round published")
    wait_until(
        lambda: (
            any(u.edge_id == "edge-c" for u in service.rounds.round_updates(f"{MODEL}-r0001"))
            or any(edge_id == "edge-c" for edge_id, *_ in service.rounds.rejections())
        ),
        30,
        "edge-c's update refused",
    )
    edges[2].close()
    wait_until(lambda: {e.edge_id: e.status.state for e in service.edges.all()}.get("edge-c") == "offline", 10, "off")

    page = browser.new_page(viewport={"width": 1300, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    log_in_page(page, base_url, viewer_token)
    states = {
        edge: page.locator(f'tr[data-edge="{edge}"] .state').inner_text() for edge in ("edge-a", "edge-b", "edge-c")
    }
    assert states == {"edge-a": "online", "edge-b": "online", "edge-c": "offline"}
    assert page.locator("button.command").count() == 0, "a viewer is offered no command"
    ARTEFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTEFACTS_DIR / "hub-fleet.png"), full_page=True)
    page.click("text=Rounds")
    page.wait_for_url(f"{base_url}/ui/rounds")
    # edge-c's update is refused as not finite, or as stale when it lands after the round closed on the other two
    recorded = [u.reason for u in service.rounds.round_updates(f"{MODEL}-r0001") if u.edge_id == "edge-c"] + [
        reason for edge_id, _, reason, _ in service.rounds.rejections() if edge_id == "edge-c"
    ]
    refused = page.locator('tr[data-edge="edge-c"] .reason').first.inner_text()
    assert refused and refused == recorded[0], (refused, recorded)
    page.screenshot(path=str(ARTEFACTS_DIR / "hub-rounds.png"), full_page=True)
    page.click("text=Models")
    assert page.locator(f'table[data-model="{MODEL}"] tr[data-version="1"]').count() == 1
    assert page.locator("button.rollback").count() == 0, "rollback is the admin's"
    # the plot: v0's accuracy at each edge that answered round 1, as the edge measured it before training from v0
    plotted = page.locator(f'svg.scores[data-model="{MODEL}"] circle[data-version="0"]')
    values = {
        plotted.nth(i).locator("xpath=..").get_attribute("data-edge"): plotted.nth(i).get_attribute("data-value")
        for i in range(plotted.count())
    }
    assert {edge: values.get(edge) for edge in ("edge-a", "edge-b")} == {"edge-a": "0.1000", "edge-b": "0.4000"}
    measured = page.locator(f'table[data-model="{MODEL}"] tr[data-version="0"] .measured').inner_text()
    assert measured == "accuracy 0.250 at 2 edges", "the mean of those two points"
    assert "not yet" in page.locator(f'table[data-model="{MODEL}"] tr[data-version="1"] .measured').inner_text()
    page.screenshot(path=str(ARTEFACTS_DIR / "hub-models.png"), full_page=True)
    assert requests and all(url.startswith(base_url) for url in requests), "no request leaves the machine"

    # an operator asks edge-a for a report and sees its ack; may neither pin nor roll back, on the page or the API
    pinned: list[Any] = []

    def pin(body: Any) -> dict[str, Any]:
        pinned.append(body)
        return {"pinned": body.version}

    executor = CommandExecutor(
        edges[0].link,
        open_edge_database(tmp_path / "edge-a-commands.db"),
        {"report_status": lambda body: {"reported": True}, "pin_model": pin},
        hub_keys=KeyRing.from_directory(config.data_dir / "keys"),
    )
    try:
        _, operator_token = token_for(config.data_dir / "api-tokens.json", ApiRole.OPERATOR, name="line-lead")
        operator = browser.new_context().new_page()
        log_in_page(operator, base_url, operator_token)
        assert operator.locator('button.command[data-action="train_now"]').count() >= 1
        assert operator.locator('button[data-action="pin_model"], select.pin-version').count() == 0
        operator.click('button.command[data-edge="edge-a"][data-action="report_status"]')
        operator.wait_for_selector('.ack[data-edge="edge-a"][data-outcome="succeeded"]', timeout=20000)
        assert operator.locator('.ack[data-edge="edge-a"]').inner_text() == "report_status: succeeded"
        refused = operator.evaluate(
            """async ([model]) => {
              const csrf = document.querySelector('meta[name=csrf-token]').content;
              const ask = (path, body) => fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json',
                'X-CSRF-Token': csrf}, body: JSON.stringify(body)}).then((r) => r.status);
              return [await ask('/v1/edges/edge-a/commands', {command: {action: 'pin_model', model_name: model,
                version: 0}}), await ask(`/v1/models/${model}/rollback`, {to_version: 0})];
            }""",
            [MODEL],
        )
        assert refused == [403, 403]
        operator.click("text=Models")
        operator.wait_for_url(f"{base_url}/ui/models")
        assert operator.locator(f'table[data-model="{MODEL}"] tr[data-version="1"]').count() == 1
        assert operator.locator("button.rollback").count() == 0
        # an admin pins edge-a to v0 from the fleet page; the edge gets exactly that and the page shows its ack
        _, admin_token = token_for(config.data_dir / "api-tokens.json", ApiRole.ADMIN, name="plant-admin")
        admin = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
        log_in_page(admin, base_url, admin_token)
        choice = f'select.pin-version[data-edge="edge-a"][data-model="{MODEL}"]'
        assert admin.locator(f"{choice} option").all_inner_texts() == ["follow the hub", "v1", "v0"]
        admin.select_option(choice, "0")
        admin.click(f'button[data-edge="edge-a"][data-action="pin_model"][data-model="{MODEL}"]')
        admin.wait_for_selector('.ack[data-edge="edge-a"][data-outcome="succeeded"]', timeout=20000)
        assert [(body.model_name, body.version) for body in pinned] == [(MODEL, 0)]
        admin.screenshot(path=str(ARTEFACTS_DIR / "hub-fleet-admin.png"), full_page=True)
    finally:
        executor.close()


def log_in_page(page: Any, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/ui/fleet")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(f"{base_url}/ui/fleet")
