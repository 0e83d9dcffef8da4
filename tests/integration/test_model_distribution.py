"""Signed models from the hub to edges over the real broker: online install, fetch after reconnect, refusals."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from edge.models import InstalledModel, ModelUpdater
from hub.models import ModelPublisher, model_transfer_id
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, file_digest, pack_bundle
from schemas.config import BrokerConfig
from schemas.exchange import send_frames
from schemas.manifests import ModelManifest
from schemas.messages import Role
from schemas.mqtt import MqttLink
from schemas.signing import KeyRing, SigningKey
from schemas.transfer import TransferPlan
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
        publisher = ModelPublisher(link, key, tmp_path / f"hub-artifacts-{id(key)}")
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
