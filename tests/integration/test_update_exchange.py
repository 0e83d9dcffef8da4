"""Signed updates from an edge to the hub over the real broker: accepted when genuine, refused with a reason."""

from __future__ import annotations

import json
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import zstandard

from edge.db import open_edge_database
from edge.updates import UpdateUploader, build_update_artifact
from hub.updates import ReceivedUpdate, UpdateInbox
from runtime.exchange import TransferOutbox
from runtime.mqtt import MqttLink
from runtime.signing import KeyRing, SigningKey
from schemas.bundle import MANIFEST_FILE, UPDATE_DELTA_FILE, file_digest, pack_bundle
from schemas.config import BrokerConfig
from schemas.manifests import TensorEncoding, UpdateManifest
from schemas.messages import Role, TransferState, TransferStatusMessage
from schemas.tensors import FORMAT, TensorSpec, tensor_specs

pytestmark = pytest.mark.broker
FP32 = TensorEncoding(dtype="fp32", compression="zstd")
INT8 = TensorEncoding(dtype="int8", quantization="per_channel", compression="zstd")


@pytest.fixture
def delta() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "conv.weight": rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.01,
        "bn.num_batches_tracked": np.array(3, np.int64),
    }


class HubSide:
    """Collects the updates the hub's inbox accepts."""

    inbox: UpdateInbox

    def __init__(self) -> None:
        self.updates: list[ReceivedUpdate] = []
        self.arrived = threading.Event()

    def __call__(self, update: ReceivedUpdate) -> None:
        self.updates.append(update)
        self.arrived.set()


@pytest.fixture
def hub(
    broker_config: Callable[..., BrokerConfig],
    links: Callable[..., MqttLink],
    ring: Callable[[], KeyRing],
    keys: Callable[..., SigningKey],
    tmp_path: Path,
    closers: list[Any],
    delta: dict[str, np.ndarray],
) -> HubSide:
    keys("edge-a")  # enrolled: its public key is in the hub's ring
    link = links(broker_config(), Role.HUB, "hub", start=False)
    side = HubSide()

    def base_specs(model_name: str, version: int) -> dict[str, TensorSpec]:
        """The hub's registry holds version 0 of 'det', shaped like the edges' deltas."""
        if (model_name, version) != ("det", 0):
            raise KeyError(f"model {model_name!r} has no version {version}")
        return tensor_specs(delta)

    side.inbox = UpdateInbox(link, tmp_path / "hub", ring(), side, base_specs=base_specs)
    side.inbox.start()
    closers.append(side.inbox)
    link.start()
    link.wait_connected(10)
    return side


@pytest.fixture
def edge_outbox(
    broker_config: Callable[..., BrokerConfig], links: Callable[..., MqttLink], tmp_path: Path, closers: list[Any]
) -> Callable[[str], TransferOutbox]:
    """A started transfer outbox of the edge with that id, on the test's broker (closed after the test)."""

    def start(edge_id: str) -> TransferOutbox:
        link = links(broker_config(), Role.EDGE, edge_id, start=False)
        outbox = TransferOutbox(
            link, open_edge_database(tmp_path / edge_id / "outbox.db"), tmp_path / edge_id / "spool"
        )
        link.subscribe(
            link.topics.edge_update_statuses(edge_id), outbox.handle_status, message_type=TransferStatusMessage
        )
        link.start()
        link.wait_connected(10)
        outbox.start()
        closers.append(outbox)
        return outbox

    return start


def test_signed_update_is_accepted_and_decoded(
    hub: HubSide,
    edge_outbox: Callable[[str], TransferOutbox],
    tmp_path: Path,
    delta: dict[str, np.ndarray],
) -> None:
    outbox = edge_outbox("edge-a")
    edge_key = SigningKey.load(tmp_path / "keys" / "edge-a.key")
    uploader = UpdateUploader(outbox, edge_key, tmp_path / "edge-a" / "work")
    tid = uploader.upload(
        delta,
        model_name="det",
        round_id="r1",
        base_version=0,
        num_examples=40,
        encoding=FP32,
        metrics_after={"mAP50": 0.5},
    )
    assert outbox.wait_finished(tid, 30).state == TransferState.COMPLETE
    assert hub.arrived.wait(10)
    [update] = hub.updates
    assert (update.manifest.edge_id, update.manifest.round_id, update.manifest.num_examples) == ("edge-a", "r1", 40)
    assert update.manifest.metrics_after == {"mAP50": 0.5}
    for name, array in delta.items():
        assert np.array_equal(update.delta[name], array)
    assert hub.inbox.rejections == {}


def send_artifact(outbox: TransferOutbox, artifact: Path, edge_id: str, tid: str) -> Any:
    outbox.submit(artifact, tid, outbox.link.topics.edge_update(edge_id, tid))
    return outbox.wait_finished(tid, 30)


def assert_rejected(record: Any, hub: HubSide, reason: str) -> None:
    """The sender learned the reason, the hub counted exactly that, and no update reached the round logic."""
    assert record.state == TransferState.REJECTED
    assert reason in (record.reason or "")
    assert hub.inbox.rejections == {reason: 1}
    assert hub.updates == []


def test_unknown_edge_key_is_rejected(
    hub: HubSide,
    edge_outbox: Callable[[str], TransferOutbox],
    keys: Callable[..., SigningKey],
    tmp_path: Path,
    delta: dict[str, np.ndarray],
) -> None:
    stranger = keys("edge-x", "stranger-keys")  # never enrolled with the hub
    outbox = edge_outbox("edge-x")
    record = send_artifact(outbox, signed_update(stranger, delta, tmp_path / "x.artifact", INT8), "edge-x", "u-x")
    assert_rejected(record, hub, "unknown_key")


def signed_update(
    key: SigningKey, delta: dict[str, np.ndarray], artifact: Path, encoding: TensorEncoding = FP32
) -> Path:
    build_update_artifact(
        delta,
        signing_key=key,
        model_name="det",
        round_id="r1",
        base_version=0,
        num_examples=5,
        encoding=encoding,
        artifact=artifact,
    )
    return artifact


def tampered_update(
    key: SigningKey, delta: dict[str, np.ndarray], tmp_path: Path, tamper: Callable[[Path], None]
) -> Path:
    """A genuine signed update, unpacked, changed by ``tamper(directory)`` after signing, and re-packed."""
    work = tmp_path / "tamper"
    with tarfile.open(signed_update(key, delta, tmp_path / "honest.artifact")) as tar:
        tar.extractall(work, filter="data")
    tamper(work)
    tampered = tmp_path / "tampered.artifact"
    pack_bundle({MANIFEST_FILE: work / MANIFEST_FILE, UPDATE_DELTA_FILE: work / UPDATE_DELTA_FILE}, tampered)
    return tampered


def inflate_num_examples(work: Path) -> None:
    """To weigh more in FedAvg than the edge's data justifies."""
    manifest = json.loads((work / MANIFEST_FILE).read_text())
    manifest["num_examples"] = 5000
    (work / MANIFEST_FILE).write_text(json.dumps(manifest))


def flip_a_delta_bit(work: Path) -> None:
    payload = bytearray((work / UPDATE_DELTA_FILE).read_bytes())
    payload[-1] ^= 0x01
    (work / UPDATE_DELTA_FILE).write_bytes(bytes(payload))


@pytest.mark.parametrize(
    ("tamper", "reason"), [(inflate_num_examples, "bad_signature"), (flip_a_delta_bit, "hash_mismatch")]
)
def test_update_changed_after_signing_is_rejected(
    hub: HubSide,
    edge_outbox: Callable[[str], TransferOutbox],
    tmp_path: Path,
    delta: dict[str, np.ndarray],
    tamper: Callable[[Path], None],
    reason: str,
) -> None:
    edge_key = SigningKey.load(tmp_path / "keys" / "edge-a.key")
    outbox = edge_outbox("edge-a")
    record = send_artifact(outbox, tampered_update(edge_key, delta, tmp_path, tamper), "edge-a", "u-t")
    assert_rejected(record, hub, reason)


def test_edge_cannot_submit_as_another_edge(
    hub: HubSide,
    edge_outbox: Callable[[str], TransferOutbox],
    keys: Callable[..., SigningKey],
    tmp_path: Path,
    delta: dict[str, np.ndarray],
) -> None:
    """edge-b (enrolled) signs a valid update with its own key but sends it on edge-a's topic."""
    edge_b = keys("edge-b")
    hub.inbox.enrolled_keys.add("edge-b", edge_b.public_key())
    outbox = edge_outbox("edge-a")
    record = send_artifact(outbox, signed_update(edge_b, delta, tmp_path / "b.artifact"), "edge-a", "u-b")
    assert_rejected(record, hub, "signer_mismatch")


def crafted_update(key: SigningKey, payload: bytes, tmp_path: Path, **manifest: Any) -> Path:
    """A properly signed update whose delta bytes (and, by keyword, manifest fields) a hostile edge chose."""
    work = tmp_path / "crafted"
    work.mkdir()
    (work / UPDATE_DELTA_FILE).write_bytes(payload)
    fields: dict[str, Any] = {
        "edge_id": key.key_id,
        "model_name": "det",
        "round_id": "r1",
        "base_version": 0,
        "num_examples": 5,
        "encoding": FP32,
        "payload": file_digest(work / UPDATE_DELTA_FILE),
        **manifest,
    }
    (work / MANIFEST_FILE).write_text(key.sign(UpdateManifest(**fields)).model_dump_json())
    artifact = tmp_path / "crafted.artifact"
    pack_bundle({MANIFEST_FILE: work / MANIFEST_FILE, UPDATE_DELTA_FILE: work / UPDATE_DELTA_FILE}, artifact)
    return artifact


def declaring(delta: dict[str, np.ndarray], dtypes: dict[str, str]) -> bytes:
    """The delta's tensors stored as they are, with whatever original dtypes the sender declares."""
    metadata = {"format": FORMAT, "encoding": FP32.model_dump_json(), "dtypes": json.dumps(dtypes)}
    raw = safetensors.numpy.save(delta, metadata=metadata)
    return zstandard.ZstdCompressor(write_content_size=True).compress(raw)


@pytest.mark.parametrize(
    ("dtypes", "base_version", "reason", "detail"),
    [
        # A few hundred signed bytes that declared '<U256' decoded to a 2 GB array.
        ({"conv.weight": "<U256", "bn.num_batches_tracked": "<i8"}, 0, "malformed", "not a numeric dtype"),
        ({"conv.weight": "<f8", "bn.num_batches_tracked": "<i8"}, 0, "shape_mismatch", "the base model has float32"),
        ({"conv.weight": "<f4", "bn.num_batches_tracked": "<i8"}, 7, "stale", "which the hub does not have"),
    ],
    ids=["string-dtype", "other-dtype-than-the-base", "unknown-base"],
)
def test_signed_update_that_decodes_beyond_its_base_is_rejected(
    hub: HubSide,
    edge_outbox: Callable[[str], TransferOutbox],
    tmp_path: Path,
    delta: dict[str, np.ndarray],
    dtypes: dict[str, str],
    base_version: int,
    reason: str,
    detail: str,
) -> None:
    edge_key = SigningKey.load(tmp_path / "keys" / "edge-a.key")
    outbox = edge_outbox("edge-a")
    artifact = crafted_update(edge_key, declaring(delta, dtypes), tmp_path, base_version=base_version)
    record = send_artifact(outbox, artifact, "edge-a", "u-c")
    assert_rejected(record, hub, reason)
    assert detail in (record.reason or "")


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["NaN", "Infinity"])
def test_signed_update_with_a_non_finite_metric_is_rejected(
    hub: HubSide,
    edge_outbox: Callable[[str], TransferOutbox],
    tmp_path: Path,
    delta: dict[str, np.ndarray],
    value: float,
) -> None:
    """Signed by the edge's own key, so only the contract can refuse it; one NaN blanked the round's metrics."""
    edge_key = SigningKey.load(tmp_path / "keys" / "edge-a.key")

    def non_finite_metric(work: Path) -> None:
        honest = UpdateManifest.model_validate_json((work / MANIFEST_FILE).read_bytes())
        hostile = honest.model_construct(**{**dict(honest), "metrics_after": {"mAP50": value}, "signature": None})
        signature = edge_key.sign(hostile).signature
        assert signature is not None
        data = {**json.loads(honest.model_dump_json()), "metrics_after": {"mAP50": value}}
        # Python's json writes the bare literal NaN / Infinity, as the measured attack did.
        (work / MANIFEST_FILE).write_text(json.dumps({**data, "signature": signature.model_dump()}))

    outbox = edge_outbox("edge-a")
    record = send_artifact(outbox, tampered_update(edge_key, delta, tmp_path, non_finite_metric), "edge-a", "u-n")
    assert_rejected(record, hub, "malformed")
    assert "metrics_after.mAP50: Input should be a finite number" in (record.reason or "")
