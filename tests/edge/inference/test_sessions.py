"""Session factory: the provider actually in use, logged fallbacks, clear errors for bad model files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from edge.inference.errors import ModelLoadError
from edge.inference.sessions import CPU, load_model
from schemas.config import CpuProviderConfig, CudaProviderConfig, InferenceConfig, TensorRtProviderConfig
from schemas.onnxmeta import METADATA_PREFIX

onnx = pytest.importorskip("onnx")


def _rewrite_metadata(source: Path, target: Path, keep: str) -> Path:
    model = onnx.load(str(source))
    kept = [(p.key, p.value) for p in model.metadata_props if (p.key.startswith(METADATA_PREFIX)) == (keep == "ours")]
    del model.metadata_props[:]
    for key, value in kept if keep != "none" else []:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


def test_cpu_session_reports_cpu(classifier_bundle: Path, tmp_path: Path) -> None:
    model = load_model(classifier_bundle / "model.onnx", InferenceConfig(), cache_dir=tmp_path)
    assert model.providers.active == CPU and not model.providers.fell_back
    assert model.metadata.name == "pcb-classifier" and model.static_batch is None


def test_gpu_providers_fall_back_to_cpu_with_a_logged_reason(
    classifier_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    config = InferenceConfig(
        providers=[TensorRtProviderConfig(kind="tensorrt"), CudaProviderConfig(kind="cuda", cuda_graph=True)]
    )
    with caplog.at_level(logging.WARNING, logger="edge.inference.sessions"):
        model = load_model(classifier_bundle / "model.onnx", config, cache_dir=tmp_path)
    if "CUDAExecutionProvider" in model.session.get_providers():
        pytest.skip("this machine really has CUDA")
    assert model.providers.requested[0] == "TensorrtExecutionProvider"
    assert model.providers.active == CPU and model.providers.fell_back
    assert model.providers.fallback_reasons, "a fallback must say why"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert any("not in this onnxruntime build" in r for r in model.providers.fallback_reasons)
    assert any(r.message == "execution provider fallback" for r in caplog.records)


def test_io_binding_gives_the_same_results_as_plain_runs(classifier_bundle: Path, tmp_path: Path) -> None:
    images = [np.random.default_rng(i).integers(0, 255, (80, 90), dtype=np.uint8) for i in range(3)]
    plain = Classifier.load(classifier_bundle / "model.onnx", InferenceConfig(), cache_dir=tmp_path)
    bound = Classifier.load(classifier_bundle / "model.onnx", InferenceConfig(), cache_dir=tmp_path, io_binding=True)
    assert not plain._runner.use_binding and bound._runner.use_binding
    expected = plain.predict_batch(images)
    assert bound.predict_batch(images) == expected
    assert bound.predict_batch(images) == expected  # second run reuses the binding path


def test_missing_and_corrupt_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nothere\.onnx: model file not found"):
        load_model(tmp_path / "nothere.onnx", InferenceConfig(), cache_dir=tmp_path)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(ModelLoadError, match=r"corrupt\.onnx: not a loadable ONNX model"):
        load_model(corrupt, InferenceConfig(), cache_dir=tmp_path)


def test_truncated_model_gives_a_clear_error(classifier_bundle: Path, tmp_path: Path) -> None:
    data = (classifier_bundle / "model.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"truncated\.onnx"):
        Classifier.load(truncated, InferenceConfig(), cache_dir=tmp_path)


def test_model_without_metadata_is_refused(classifier_bundle: Path, tmp_path: Path) -> None:
    bare = _rewrite_metadata(classifier_bundle / "model.onnx", tmp_path / "bare.onnx", keep="none")
    with pytest.raises(ModelLoadError, match=r"bare\.onnx: no fedinspect metadata"):
        Classifier.load(bare, InferenceConfig(), cache_dir=tmp_path)


def test_task_mismatch_is_refused(classifier_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a classify model, but was loaded as a detect model"):
        Detector.load(classifier_bundle / "model.onnx", InferenceConfig(), cache_dir=tmp_path)


@pytest.mark.slow
def test_ultralytics_only_metadata_is_adopted(detector_bundle: Path, tmp_path: Path) -> None:
    theirs = _rewrite_metadata(detector_bundle / "model.onnx", tmp_path / "best.onnx", keep="theirs")
    assert not any(p.key.startswith(METADATA_PREFIX) for p in onnx.load(str(theirs)).metadata_props)
    adopted = Detector.load(theirs, InferenceConfig(), cache_dir=tmp_path)
    ours = Detector.load(detector_bundle / "model.onnx", InferenceConfig(), cache_dir=tmp_path)
    assert adopted.metadata.classes == ours.metadata.classes
    assert adopted.metadata.input == ours.metadata.input
    assert adopted.name == "best"


def test_cpu_thread_settings_reach_the_session(classifier_bundle: Path, tmp_path: Path) -> None:
    config = InferenceConfig(providers=[CpuProviderConfig(kind="cpu", intra_op_threads=1)])
    model = load_model(classifier_bundle / "model.onnx", config, cache_dir=tmp_path)
    assert model.session.get_session_options().intra_op_num_threads == 1


def test_a_model_file_replaced_while_loaded_does_not_affect_the_session(
    classifier_bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model.onnx"
    shutil.copyfile(classifier_bundle / "model.onnx", copy)
    classifier = Classifier.load(copy, InferenceConfig(), cache_dir=tmp_path)
    image = np.zeros((64, 64), np.uint8)
    before = classifier.predict(image)
    copy.write_bytes(b"overwritten")
    assert classifier.predict(image) == before
