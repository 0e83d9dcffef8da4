"""Template-crops detectors: export with parity, self-describing ONNX, rebuild from weights, served by the edge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.inference.detector import CropDetector, Detector
from edge.inference.errors import ModelLoadError
from edge.inference.images import reference_composite
from schemas.config import InferenceConfig
from schemas.manifests import TEMPLATE_CROPS_ARCHITECTURE, ProposalSpec, TemplateInput
from tests.conftest import require_module
from tests.support.models import CROP_CLASSES, assert_same_onnx_outputs, board_pairs, crop_model_bundle


@pytest.fixture(scope="module")
def crop_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("torch")
    return crop_model_bundle(tmp_path_factory.mktemp("crops") / "detector", task="detect", crop_px=32)


def test_the_bundle_describes_its_proposals_and_template_input(crop_bundle: Path) -> None:
    manifest = json.loads((crop_bundle / "manifest.json").read_text())
    assert manifest["task"] == "detect"
    assert manifest["architecture"]["name"] == TEMPLATE_CROPS_ARCHITECTURE
    assert ProposalSpec.from_params(manifest["architecture"]["params"]) == ProposalSpec(crop_px=32)
    assert manifest["architecture"]["params"]["num_classes"] == len(CROP_CLASSES)
    assert manifest["input"]["template"] == TemplateInput.COMPOSITE.value
    assert manifest["input"]["width"] == 32
    assert manifest["export"]["parity_max_abs_diff"] < 1e-4


def test_the_edge_serves_it_as_a_crop_detector(crop_bundle: Path, tmp_path: Path) -> None:
    detector = Detector.load(crop_bundle / "model.onnx", InferenceConfig(), cache_dir=tmp_path, confidence_threshold=0)
    assert isinstance(detector, CropDetector)
    boards = [(image, template) for image, template, boxes in board_pairs(6, seed=2) if boxes]
    results = detector.predict_batch([reference_composite(image, template) for image, template in boards])
    assert len(results) == len(boards)
    for result, (image, _) in zip(results, boards, strict=True):
        assert len(result) > 0  # every candidate scores above 0, untrained or not
        assert set(result.class_names) <= set(CROP_CLASSES)
        assert np.all(result.boxes >= 0) and np.all(result.boxes[:, 2] <= image.shape[1])
        assert np.all(np.diff(result.scores) <= 0)  # best first
    blank = np.full((64, 64), 255, np.uint8)
    assert len(detector.predict(reference_composite(blank, blank))) == 0  # no difference, no candidate
    with pytest.raises(ValueError, match="compared with its template"):
        detector.predict(blank)


def test_a_crop_detector_file_cannot_pass_for_a_yolo_one(crop_bundle: Path, tmp_path: Path) -> None:
    from edge.inference.sessions import load_model

    with pytest.raises(ModelLoadError, match=r"is not \[batch, 4 \+ 2 classes, anchors\]"):
        Detector(load_model(crop_bundle / "model.onnx", InferenceConfig(), cache_dir=tmp_path))


def test_rebuilt_from_weights_it_exports_the_same_model(crop_bundle: Path, tmp_path: Path) -> None:
    from exporters.rebuild import rebuild_and_export
    from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest

    manifest = read_model_manifest({MANIFEST_FILE: crop_bundle / MANIFEST_FILE})
    rebuilt = rebuild_and_export(
        manifest.model_copy(update={"version": 3, "parent": 2}), crop_bundle / WEIGHTS_FILE, tmp_path / "v3"
    )
    assert rebuilt.version == 3 and rebuilt.architecture == manifest.architecture
    crops = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    outputs = assert_same_onnx_outputs(crop_bundle, tmp_path / "v3", crops, tmp_path)
    np.testing.assert_allclose(outputs[0].sum(axis=1), 1.0, atol=1e-5)  # probabilities, background first


def test_a_narrower_network_says_its_width_and_a_bundle_without_one_rebuilds_at_the_default(tmp_path: Path) -> None:
    require_module("torch")
    from exporters.crop_detector import BASE_WIDTH, build_crop_net, crop_base_width, export_crop_detector
    from exporters.rebuild import rebuild_module
    from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest
    from schemas.manifests import CROP_BASE_WIDTH_PARAM

    narrow = build_crop_net(len(CROP_CLASSES), 16)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in build_crop_net(6).parameters()) / 3
    export_crop_detector(narrow, tmp_path / "narrow", name="d", classes=CROP_CLASSES, spec=ProposalSpec(crop_px=32))
    manifest = read_model_manifest({MANIFEST_FILE: tmp_path / "narrow" / MANIFEST_FILE})
    assert manifest.architecture.params[CROP_BASE_WIDTH_PARAM] == 16
    assert crop_base_width(rebuild_module(manifest, tmp_path / "narrow" / WEIGHTS_FILE)) == 16
    # bundles exported before the parameter existed were all 32 wide
    params = {k: v for k, v in manifest.architecture.params.items() if k != CROP_BASE_WIDTH_PARAM}
    older = manifest.model_copy(update={"architecture": manifest.architecture.model_copy(update={"params": params})})
    wide = tmp_path / "wide.safetensors"
    import safetensors.torch

    safetensors.torch.save_file(build_crop_net(len(CROP_CLASSES)).state_dict(), str(wide))
    assert crop_base_width(rebuild_module(older, wide)) == BASE_WIDTH == 32
    huge = {**params, CROP_BASE_WIDTH_PARAM: 1_000_000}  # bounded before a single tensor is allocated
    absurd = manifest.model_copy(update={"architecture": manifest.architecture.model_copy(update={"params": huge})})
    from exporters.errors import ExportError

    with pytest.raises(ExportError, match="base_width 1000000 is outside 4-256"):
        rebuild_module(absurd, wide)
