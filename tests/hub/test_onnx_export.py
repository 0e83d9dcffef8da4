"""The hub exports ONNX for every new global version of a line imported with a model.onnx (in a child process)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from hub.db import open_hub_database
from hub.model_import import import_model
from hub.publication import export_version_onnx
from hub.registry import ModelRegistry
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE
from schemas.config import HubConfig, InferenceConfig
from tests.support.models import small_classifier_bundle

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torchvision_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_classifier_bundle(tmp_path_factory.mktemp("tv") / "bundle", seed=1)


def _hub(tmp_path: Path) -> tuple[HubConfig, ModelRegistry]:
    config = HubConfig(data_dir=tmp_path / "hub")
    config.data_dir.mkdir(parents=True)
    return config, ModelRegistry(open_hub_database(config), config.data_dir / "artifacts")


def _next_version(registry: ModelRegistry, name: str, scale: float) -> Any:
    weights = registry.weights(name, 0)
    changed = {k: (v * scale if v.dtype.kind == "f" and "running" not in k else v) for k, v in weights.items()}
    return registry.add_version(name, 0, changed, round_id="r1", strategy="fedavg", participants=["a"], num_examples=4)


def test_new_classifier_version_gets_an_onnx_that_matches_its_weights(torchvision_bundle: Path, tmp_path: Path) -> None:
    import safetensors.torch

    from exporters.torch_classifier import build_torchvision_classifier

    config, registry = _hub(tmp_path)
    assert import_model(config, torchvision_bundle) == 0
    assert registry.serves_onnx("pcb-classifier")
    version = _next_version(registry, "pcb-classifier", 0.9)
    assert MODEL_FILE not in version.manifest.files
    exported = export_version_onnx(registry, version, tmp_path / "work", timeout_s=300)
    assert exported is not None and MODEL_FILE in exported.manifest.files
    assert exported.manifest.export is not None and exported.manifest.export.parity_max_abs_diff < 1e-4
    assert exported.manifest.version == 1 and exported.manifest.parent == 0 and exported.manifest.round_id == "r1"

    files = registry.export_bundle_files("pcb-classifier", 1, tmp_path / "bundle-v1")
    assert set(files) == {MODEL_FILE, WEIGHTS_FILE}
    classifier = Classifier.load(files[MODEL_FILE], InferenceConfig(), cache_dir=tmp_path)
    assert (classifier.name, classifier.version) == ("pcb-classifier", 1)
    net = build_torchvision_classifier("mobilenet_v3_small", 2, 1)
    net.load_state_dict(safetensors.torch.load_file(str(files[WEIGHTS_FILE])))
    images = [np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8) for i in range(3)]
    tensor, _ = classifier.preprocess(images)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(tensor)).numpy()
    assert np.abs(classifier.run(tensor)[0] - expected).max() < 1e-4
    assert not list((tmp_path / "work").iterdir()), "export scratch space is cleaned up"


def test_new_detector_version_gets_an_onnx(detector_bundle: Path, tmp_path: Path) -> None:
    config, registry = _hub(tmp_path)
    import_model(config, detector_bundle)
    version = _next_version(registry, "pcb-detector", 1.01)
    exported = export_version_onnx(registry, version, tmp_path / "work", timeout_s=300)
    assert exported is not None
    files = registry.export_bundle_files("pcb-detector", 1, tmp_path / "b1")
    detector = Detector.load(files[MODEL_FILE], InferenceConfig(), cache_dir=tmp_path)
    assert detector.version == 1 and detector.metadata.classes == ["rect", "ellipse"]


def test_a_line_that_cannot_be_rebuilt_is_not_exported_and_says_why(
    classifier_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, registry = _hub(tmp_path)
    import_model(config, classifier_bundle)  # a plain nn.Module: its architecture spec names only the class
    version = _next_version(registry, "pcb-classifier", 0.5)
    with caplog.at_level(logging.ERROR, logger="hub.service"):
        assert export_version_onnx(registry, version, tmp_path / "work", timeout_s=300) is None
    record = next(r for r in caplog.records if r.message == "model version not exported; not published")
    assert "cannot be rebuilt from weights" in record.__dict__["error"]
    assert MODEL_FILE not in registry.get("pcb-classifier", 1).manifest.files


def test_import_checks_the_bundle_digests(torchvision_bundle: Path, tmp_path: Path) -> None:
    from fedinspect.cli import cli

    tampered = tmp_path / "tampered"
    shutil.copytree(torchvision_bundle, tampered)
    with (tampered / MODEL_FILE).open("ab") as handle:
        handle.write(b"\x00")
    config, registry = _hub(tmp_path)
    with pytest.raises(ValueError, match=r"model\.onnx: SHA-256 / size differ"):
        import_model(config, tampered)
    assert registry.latest_version("pcb-classifier") is None, "nothing half-imported"

    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(json.dumps({"data_dir": str(config.data_dir)}))
    result = CliRunner().invoke(cli, ["hub", "import-model", "--config", str(hub_yaml), str(torchvision_bundle)])
    assert result.exit_code == 0 and "registered version 0" in result.output, result.output
    legacy = CliRunner().invoke(
        cli,
        [
            "hub",
            "import-model",
            "--config",
            str(hub_yaml),
            str(torchvision_bundle / MANIFEST_FILE),
            str(torchvision_bundle / WEIGHTS_FILE),
        ],
    )
    assert legacy.exit_code == 2 and "already exists" in legacy.output
