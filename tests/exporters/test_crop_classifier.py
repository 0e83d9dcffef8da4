"""Template-crops classifiers: export with parity, self-describing ONNX, rebuild from weights, served by the edge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.inference.classifier import Classifier, CropClassifier
from edge.inference.errors import ModelLoadError
from edge.inference.images import reference_composite
from schemas.config import InferenceConfig
from schemas.manifests import CROP_DEFECT_CLASS_PARAM, TEMPLATE_CROPS_ARCHITECTURE, ProposalSpec, TemplateInput
from tests.conftest import require_module
from tests.support.models import assert_same_onnx_outputs, board_pairs, crop_model_bundle

CLASSES = ("good", "defective")


@pytest.fixture(scope="module")
def crop_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("torch")
    return crop_model_bundle(tmp_path_factory.mktemp("crops") / "classifier", task="classify")


def test_the_bundle_is_a_classifier_that_names_its_defect_class(crop_classifier: Path) -> None:
    manifest = json.loads((crop_classifier / "manifest.json").read_text())
    assert manifest["task"] == "classify" and manifest["classes"] == list(CLASSES)
    assert manifest["architecture"]["name"] == TEMPLATE_CROPS_ARCHITECTURE
    params = manifest["architecture"]["params"]
    assert params["num_classes"] == 1 and params[CROP_DEFECT_CLASS_PARAM] == "defective"
    assert ProposalSpec.from_params(params) == ProposalSpec()
    assert manifest["input"]["template"] == TemplateInput.COMPOSITE.value
    assert manifest["export"]["parity_max_abs_diff"] < 1e-4


def test_the_edge_serves_a_board_as_its_most_defect_like_candidate(crop_classifier: Path, tmp_path: Path) -> None:
    from edge.inference.sessions import load_model

    classifier = Classifier.load(crop_classifier / "model.onnx", InferenceConfig(), cache_dir=tmp_path)
    assert isinstance(classifier, CropClassifier)
    loaded = load_model(crop_classifier / "model.onnx", InferenceConfig(), cache_dir=tmp_path)
    boards = [reference_composite(image, template) for image, template, _ in board_pairs(4, seed=2, specks=3)]
    results = classifier.predict_batch(boards)
    for composite, result in zip(boards, results, strict=True):
        # the board's score by hand: every candidate's crop through the raw ONNX session, the largest defect score
        from edge.inference.images import to_tensor
        from edge.inference.proposals import crop_windows, cut_crops, difference_proposals

        windows = crop_windows(difference_proposals(composite, classifier.proposals), classifier.proposals)
        crops, _ = to_tensor(
            cut_crops(composite, windows, classifier.proposals), loaded.metadata.input, np.dtype(np.float32)
        )
        expected = float(loaded.session.run(None, {"crops": crops})[0][:, 1].max())
        assert result.probability(1) == pytest.approx(expected, abs=1e-5)
        assert result.probability(0) == pytest.approx(1 - expected, abs=1e-5)
        assert result.class_name == ("defective" if expected > 0.5 else "good")
    blank = np.full((64, 64), 255, np.uint8)
    assert classifier.predict(reference_composite(blank, blank)).probabilities == (1.0, 0.0)  # nothing differs: good
    with pytest.raises(ValueError, match="compared with its template"):
        classifier.predict(blank)


def test_a_crop_detector_cannot_pass_for_a_crop_classifier(crop_classifier: Path, tmp_path: Path) -> None:
    import torch

    from edge.inference.sessions import load_model
    from exporters.common import ExportOptions, ModelDescription
    from exporters.crop_detector import (
        _export,
        build_crop_net,
        crop_architecture,
        crop_input_spec,
        export_crop_classifier,
        export_crop_detector,
    )
    from exporters.errors import ExportError
    from schemas.manifests import Task
    from schemas.onnxmeta import ScoreKind

    detector = tmp_path / "detector"
    export_crop_detector(build_crop_net(2), detector, name="d", classes=("copper", "pin-hole"), spec=ProposalSpec())
    with pytest.raises(ModelLoadError, match="is a detect model, but was loaded as a classify model"):
        Classifier.load(detector / "model.onnx", InferenceConfig(), cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="is a detect model, but was loaded as a classify model"):
        CropClassifier(load_model(detector / "model.onnx", InferenceConfig(), cache_dir=tmp_path))
    # a classifier file whose architecture does not say which class a defect candidate makes the board
    unnamed = tmp_path / "unnamed"
    description = ModelDescription(
        name="c",
        task=Task.CLASSIFY,
        classes=list(CLASSES),
        input=crop_input_spec(ProposalSpec()),
        architecture=crop_architecture(1, ProposalSpec()),
        scores=ScoreKind.PROBABILITIES,
    )
    _export(build_crop_net(1), unnamed, description, ProposalSpec(), 1, ExportOptions())
    with pytest.raises(ModelLoadError, match="names one of them its 'defect_class'; this one has"):
        Classifier.load(unnamed / "model.onnx", InferenceConfig(), cache_dir=tmp_path)
    with pytest.raises(ExportError, match="two classes, a good one and its defect class 'scrap'"):
        export_crop_classifier(
            torch.nn.Identity(), tmp_path / "x", name="c", classes=CLASSES, defect_class="scrap", spec=ProposalSpec()
        )


def test_rebuilt_from_weights_it_exports_the_same_classifier(crop_classifier: Path, tmp_path: Path) -> None:
    from exporters.rebuild import rebuild_and_export
    from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest

    manifest = read_model_manifest({MANIFEST_FILE: crop_classifier / MANIFEST_FILE})
    rebuilt = rebuild_and_export(
        manifest.model_copy(update={"version": 2, "parent": 1}), crop_classifier / WEIGHTS_FILE, tmp_path / "v2"
    )
    assert rebuilt.version == 2 and rebuilt.architecture == manifest.architecture and rebuilt.task == manifest.task
    crops = np.random.default_rng(0).random((5, 3, 48, 48), dtype=np.float32)
    assert_same_onnx_outputs(crop_classifier, tmp_path / "v2", crops, tmp_path)
