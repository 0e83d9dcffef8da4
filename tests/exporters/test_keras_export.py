"""Keras export in its own TensorFlow process: .keras, .h5 and SavedModel agree with Keras; bad files are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.inference.classifier import Classifier
from exporters.errors import ExportError
from exporters.keras import export_keras
from schemas.bundle import MODEL_FILE, WEIGHTS_FILE
from schemas.config import InferenceConfig
from schemas.onnxmeta import ScoreKind

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("source", ["classifier.keras", "classifier.h5", "classifier_savedmodel"])
def test_keras_formats_export_with_parity(keras_models: Path, source: str, tmp_path: Path) -> None:
    manifest = export_keras(keras_models / source, tmp_path / "bundle", name="keras-cls", classes=["good", "defective"])
    assert manifest.export is not None and manifest.export.parity_max_abs_diff < 1e-4
    assert manifest.input.layout == "NHWC" and manifest.input.channels == 1
    assert (tmp_path / "bundle" / WEIGHTS_FILE).stat().st_size > 0
    classifier = Classifier.load(tmp_path / "bundle" / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
    assert classifier.metadata.scores == ScoreKind.PROBABILITIES, "a softmax head must not be soft-maxed again"
    probe = np.load(keras_models / "probe.npy")
    images = [np.rint(image[..., 0] * 255).astype(np.uint8) for image in probe]
    ours = np.array([r.probabilities for r in classifier.predict_batch(images)])
    assert np.abs(ours - np.load(keras_models / "probe_outputs.npy")).max() < 1e-4


def test_sequential_logits_model_exports_as_logits(keras_models: Path, tmp_path: Path) -> None:
    manifest = export_keras(
        keras_models / "sequential.keras", tmp_path / "seq", name="seq", classes=["a", "b", "c"], color="bgr"
    )
    assert manifest.input.channels == 3 and manifest.input.color.value == "bgr"
    classifier = Classifier.load(tmp_path / "seq" / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
    assert classifier.metadata.scores == ScoreKind.LOGITS


def test_bad_keras_inputs_fail_cleanly(keras_models: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="model outputs 2 classes, but 3 were named"):
        export_keras(keras_models / "classifier.keras", tmp_path / "a", name="k", classes=["a", "b", "c"])
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip file at all")
    with pytest.raises(ExportError, match=r"broken\.keras: Keras conversion failed: .*cannot load Keras model"):
        export_keras(broken, tmp_path / "b", name="k", classes=["good", "defective"])
    with pytest.raises(ExportError, match=r"expected a \.keras or \.h5 file or a SavedModel directory"):
        export_keras(keras_models / "probe.npy", tmp_path / "c", name="k", classes=["good", "defective"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
