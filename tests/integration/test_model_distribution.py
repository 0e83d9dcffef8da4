"""Signed models from the hub to edges over the real broker: online install, fetch after reconnect, refusals."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from edge.models import InstalledModel, ModelUpdater
from hub.db import open_hub_database
from hub.models import ModelPublisher, model_transfer_id
from runtime.assembler import TransferPlan
from runtime.exchange import send_frames
from runtime.mqtt import MqttLink
from runtime.signing import KeyRing, SigningKey
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, file_digest, pack_bundle
from schemas.config import BrokerConfig, HubConfig
from schemas.manifests import ModelManifest
from schemas.messages import Role
from tests.schemas import samples
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker


def bundle_files(directory: Path, version: int, size: int = 300_000) -> tuple[ModelManifest, dict[str, Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {MODEL_FILE: directory / MODEL_FILE, WEIGHTS_FILE: directory / WEIGHTS_FILE}
    files[MODEL_FILE].write_bytes(hashlib.sha256(f"onnx{version}".encode()).digest() * (size // 32))
    # Real safetensors weights: the edge checks their header before installing them.
    rng = np.random.default_rng(version)
    safetensors.numpy.save_file({"w": rng.standard_normal(size // 4).astype(np.float32)}, str(files[WEIGHTS_FILE]))
    manifest = samples.model_manifest().model_copy(
        update={
            "version": version,
            "parent": None if version == 0 else version - 1,
            "signature": None,
            "files": {name: file_digest(path) for name, path in files.items()},
        }
    )
    return manifest, files


class EdgeSide:
    def __init__(self) -> None:
        self.installed: list[InstalledModel] = []
        self.event = threading.Event()

    def __call__(self, model: InstalledModel) -> None:
        self.installed.append(model)
        self.event.set()


@pytest.fixture
def setup(
    broker_config: Callable[..., BrokerConfig],
    links: Callable[..., MqttLink],
    keys: Callable[..., SigningKey],
    ring: Callable[[], KeyRing],
    tmp_path: Path,
    closers: list[Any],
) -> Callable[..., Any]:
    hub_key = keys("hub")
    config = broker_config(chunk_size_bytes=65536)

    def make_edge(edge_id: str, *, start: bool = True) -> tuple[MqttLink, ModelUpdater, EdgeSide]:
        link = links(config, Role.EDGE, edge_id, start=False)
        side = EdgeSide()
        updater = ModelUpdater(link, tmp_path / edge_id, ring(), on_installed=side, fetch_grace_s=0.5)
        updater.start()
        closers.append(updater)
        if start:
            link.start()
            link.wait_connected(10)
        return link, updater, side

    def make_hub(key: SigningKey = hub_key) -> ModelPublisher:
        link = links(config, Role.HUB, "hub")
        hub_dir = tmp_path / f"hub-{id(key)}"
        publisher = ModelPublisher(link, key, hub_dir / "published", open_hub_database(HubConfig(data_dir=hub_dir)))
        closers.append(publisher)
        return publisher

    return lambda: (make_hub, make_edge)


def test_online_edge_installs_the_signed_model(setup: Callable[..., Any], tmp_path: Path) -> None:
    make_hub, make_edge = setup()
    _, updater, side = make_edge("edge-1")
    publisher = make_hub()
    manifest, files = bundle_files(tmp_path / "v0", 0)
    announcement = publisher.publish(manifest, files)
    assert announcement.body.artifact.chunk_count > 1
    assert side.event.wait(15)
    [installed] = side.installed
    assert installed.manifest.version == 0 and installed.manifest.signature is not None
    assert (installed.directory / MODEL_FILE).read_bytes() == files[MODEL_FILE].read_bytes()
    assert updater.installed_version(manifest.name) == 0
    assert updater.installed(manifest.name) == installed
    assert updater.rejections.snapshot() == {}


def test_offline_edge_fetches_the_announced_model_on_reconnect(setup: Callable[..., Any], tmp_path: Path) -> None:
    make_hub, make_edge = setup()
    link, updater, side = make_edge("edge-2", start=False)  # offline while the hub publishes
    publisher = make_hub()
    manifest, files = bundle_files(tmp_path / "v1", 1)
    publisher.publish(manifest, files)
    link.start()  # retained announcement -> no chunks come -> fetch -> hub re-sends
    assert side.event.wait(20)
    assert updater.installed_version(manifest.name) == 1
    assert (side.installed[0].directory / WEIGHTS_FILE).read_bytes() == files[WEIGHTS_FILE].read_bytes()


def test_a_restarted_hub_answers_fetches_for_what_it_published_before(
    setup: Callable[..., Any], tmp_path: Path
) -> None:
    """What was broadcast is in the hub's database (published_models), not guessed from file names."""
    make_hub, make_edge = setup()
    link, updater, side = make_edge("edge-3", start=False)
    first = make_hub()
    manifest, files = bundle_files(tmp_path / "v1", 1)
    first.publish(manifest, files)
    first.link.stop()  # the hub goes away; its database and bundles stay
    restarted = make_hub()
    assert restarted.has_published(model_transfer_id(manifest.name, 1))
    link.start()  # retained announcement -> fetch -> the restarted hub re-sends
    assert side.event.wait(20)
    assert updater.installed_version(manifest.name) == 1
    restarted.link.stop()
    bundle = restarted.artifacts_dir / f"{model_transfer_id(manifest.name, 1)}.tar"
    bundle.write_bytes(bundle.read_bytes()[:-1] + b"x")  # not the bundle that was announced any more
    assert not make_hub().has_published(model_transfer_id(manifest.name, 1)), "so the hub publishes it again"


def test_model_signed_by_another_key_is_not_installed(
    setup: Callable[..., Any], keys: Callable[..., SigningKey], tmp_path: Path
) -> None:
    make_hub, make_edge = setup()
    _, updater, side = make_edge("edge-3")
    impostor = keys("hub", "impostor-keys")  # same id, different key: not the pinned hub key
    manifest, files = bundle_files(tmp_path / "v0", 0)
    make_hub(impostor).publish(manifest, files)
    # Refused twice: the announcement, and the broadcast artifact once assembled.
    wait_until(lambda: updater.rejections["bad_signature"] == 2, what="two bad_signature rejections")
    assert side.installed == []
    assert updater.installed_version(manifest.name) is None
    assert not (updater.models_dir / manifest.name / "0").exists()


def test_artifact_whose_file_differs_from_the_signed_manifest_is_not_installed(
    setup: Callable[..., Any],
    links: Callable[..., MqttLink],
    broker_config: Callable[..., BrokerConfig],
    tmp_path: Path,
) -> None:
    _, make_edge = setup()
    _, updater, side = make_edge("edge-4")
    hub_key = SigningKey.load(tmp_path / "keys" / "hub.key")
    manifest, files = bundle_files(tmp_path / "v0", 0)
    signed = hub_key.sign(manifest)
    (tmp_path / "signed.json").write_text(signed.model_dump_json())
    files[MODEL_FILE].write_bytes(b"swapped model" * 1000)  # after signing
    artifact = tmp_path / "bad.tar"
    pack_bundle({MANIFEST_FILE: tmp_path / "signed.json", **files}, artifact)
    link = links(broker_config(chunk_size_bytes=65536), Role.HUB, "hub")
    plan = TransferPlan.for_file(artifact, model_transfer_id(manifest.name, 0), 65536)
    send_frames(link, link.topics.model_chunk(manifest.name, 0), plan, range(plan.count), window=10)
    wait_until(lambda: updater.rejections["hash_mismatch"] == 1, what="a hash_mismatch rejection")
    assert side.installed == []
    assert updater.installed_version(manifest.name) is None
    assert updater.rejections.snapshot() == {"hash_mismatch": 1}
    assert not (updater.models_dir / manifest.name / "0").exists()


def test_signed_model_whose_weights_header_is_oversized_is_not_installed(
    setup: Callable[..., Any], tmp_path: Path
) -> None:
    """The signature holds, but the weights would make the edge's trainer parse a 2 MB JSON header."""
    make_hub, make_edge = setup()
    _, updater, side = make_edge("edge-5")
    manifest, files = bundle_files(tmp_path / "v0", 0)
    header = json.dumps({"__metadata__": {"pad": "x" * 2 * 1024**2}}).encode()
    files[WEIGHTS_FILE].write_bytes(len(header).to_bytes(8, "little") + header)
    manifest = manifest.model_copy(update={"files": {name: file_digest(path) for name, path in files.items()}})
    make_hub().publish(manifest, files)
    wait_until(lambda: updater.rejections["too_large"] == 1, what="a too_large rejection")
    assert side.installed == []
    assert updater.installed_version(manifest.name) is None
    assert not (updater.models_dir / manifest.name / "0").exists()
    assert not list(updater.models_dir.glob(".incoming-*"))  # the staging directory is gone too


def test_versions_only_go_forward_even_for_validly_signed_older_ones(setup: Callable[..., Any], tmp_path: Path) -> None:
    """Rollback by replay: a hub (or anything holding its old artifacts) re-sending v1 after v2 must not take an
    edge back to v1, however valid v1's signature is; the high-water mark survives a restart."""
    make_hub, make_edge = setup()
    _, updater, side = make_edge("line-1")
    publisher = make_hub()
    v2, v2_files = bundle_files(tmp_path / "v2", 2)
    publisher.publish(v2, v2_files)
    assert side.event.wait(15) and updater.installed_version(v2.name) == 2
    side.event.clear()
    v1, v1_files = bundle_files(tmp_path / "v1", 1)
    publisher.publish(v1, v1_files)  # announcement and broadcast of a signed older version
    wait_until(lambda: updater.rejections.snapshot().get("stale", 0) >= 2, 15, "announcement and artifact refused")
    assert [m.manifest.version for m in side.installed] == [2], "v1 never reached the swapper"
    assert updater.installed_version(v2.name) == 2 and updater.newest_seen(v2.name) == 2
    assert not (tmp_path / "line-1" / "models" / v2.name / "1").exists()
    # the mark is on disk: an updater restarted on the same folder knows it too
    assert (tmp_path / "line-1" / "models" / v2.name / "newest-seen").read_text() == "2"
    _, restarted, _ = make_edge("line-1", start=False)
    assert restarted.newest_seen(v2.name) == 2


def test_a_fetch_is_answered_to_the_asking_edge_alone_and_only_for_the_newest_version(
    setup: Callable[..., Any], tmp_path: Path, recorder: Any
) -> None:
    from schemas.messages import TransferState, TransferStatusBody, TransferStatusMessage

    make_hub, make_edge = setup()
    publisher = make_hub()
    versions = {}
    for number in (1, 2):
        manifest, files = bundle_files(tmp_path / f"v{number}", number, size=150_000)
        versions[number] = publisher.publish(manifest, files)
    name = versions[2].body.manifest.name
    link, updater, side = make_edge("late-edge", start=False)
    shared = {n: link.topics.model_chunk(name, n) for n in (1, 2)}
    count = versions[2].body.artifact.chunk_count
    wait_until(lambda: len(recorder.on_topic(shared[2])) >= count, 10, "the broadcast recorded")
    broadcast = {n: len(recorder.on_topic(topic)) for n, topic in shared.items()}
    link.start()  # the retained v2 announcement, no chunks -> fetch -> re-sent to late-edge alone
    assert side.event.wait(20) and updater.installed_version(name) == 2
    own = link.topics.edge_model_chunk("late-edge", name, 2)
    wait_until(lambda: len(recorder.on_topic(own)) >= count, 10, "the chunks on the edge's own topic")
    assert len(recorder.on_topic(shared[2])) == broadcast[2], "a fetch is not broadcast to the fleet again"
    # asking for the older v1 (to roll itself, or everyone, back) gets nothing on any topic
    request = TransferStatusBody(transfer_id=model_transfer_id(name, 1), state=TransferState.RECEIVING, request=True)
    link.publish(link.topics.edge_fetch("late-edge"), TransferStatusMessage(sender="late-edge", body=request)).wait()
    # and asking again for v2 at once is ignored (rate limit): no second copy of its chunks
    again = TransferStatusBody(transfer_id=model_transfer_id(name, 2), state=TransferState.RECEIVING, request=True)
    link.publish(link.topics.edge_fetch("late-edge"), TransferStatusMessage(sender="late-edge", body=again)).wait()
    time.sleep(2)
    assert recorder.on_topic(link.topics.edge_model_chunk("late-edge", name, 1)) == []
    assert len(recorder.on_topic(shared[1])) == broadcast[1]
    assert len(recorder.on_topic(own)) == count
