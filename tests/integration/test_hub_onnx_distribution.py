"""A new global version of an ONNX-serving line reaches an edge as a bundle whose model.onnx the edge can serve."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge.inference.classifier import Classifier
from edge.models import InstalledModel, ModelUpdater
from fedinspect.devbroker import free_port
from hub.model_import import import_model
from hub.service import HubService
from runtime.mqtt import MqttLink
from runtime.signing import KeyRing, generate_key_pair
from schemas.bundle import MODEL_FILE
from schemas.config import BrokerConfig, HubConfig, InferenceConfig
from schemas.messages import Role
from tests.support.models import small_classifier_bundle

pytestmark = [pytest.mark.broker, pytest.mark.slow]
torch = pytest.importorskip("torch")


def test_rolled_back_version_is_exported_signed_and_served_by_the_edge(
    broker_config: Callable[..., BrokerConfig], links: Callable[..., MqttLink], tmp_path: Path
) -> None:
    bundle = small_classifier_bundle(tmp_path / "bundle")
    hub_dir = tmp_path / "hub"
    generate_key_pair("hub", hub_dir / "keys")
    config = HubConfig(
        data_dir=hub_dir, broker=broker_config().model_dump(), http={"port": free_port()}, tick_interval_s=0.2
    )
    assert import_model(config, bundle) == 0

    installed: list[InstalledModel] = []
    arrived = threading.Event()

    def on_installed(model: InstalledModel) -> None:
        installed.append(model)
        if model.manifest.version == 1:
            arrived.set()

    edge_link = links(broker_config(), Role.EDGE, "edge-1", start=False)
    updater = ModelUpdater(
        edge_link,
        tmp_path / "edge",
        KeyRing.from_directory(hub_dir / "keys"),
        on_installed=on_installed,
        fetch_grace_s=0.5,
    )
    updater.start()
    edge_link.start()
    edge_link.wait_connected(10)
    service = HubService(config)
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        service.link.wait_connected(10)
        version = service.rollback("pcb-classifier", 0)  # a new version (1) with version 0's weights
        assert version.manifest.version == 1
        assert arrived.wait(60), "the edge never installed version 1"
        model = next(m for m in installed if m.manifest.version == 1)
        assert MODEL_FILE in model.manifest.files and model.manifest.signature is not None
        assert model.manifest.export is not None and model.manifest.export.parity_max_abs_diff < 1e-4
        classifier = Classifier.load(model.directory / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
        assert (classifier.name, classifier.version) == ("pcb-classifier", 1)
        original = Classifier.load(bundle / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
        image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
        assert np.allclose(classifier.predict(image).probabilities, original.predict(image).probabilities, atol=1e-5)
    finally:
        service.stop()
        runner.join(10)
        updater.close()
