"""PyTorch classifier export: parity with torch, self-describing metadata, rebuildable weights, clean failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edge.inference.classifier import Classifier, softmax
from exporters.common import ExportOptions
from exporters.errors import ExportError, ParityError
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, file_digest
from schemas.config import InferenceConfig
from schemas.manifests import ModelManifest, Task

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")


def _manifest(bundle: Path) -> ModelManifest:
    return ModelManifest.model_validate_json((bundle / MANIFEST_FILE).read_bytes())


def test_trained_classifier_logits_agree_with_torch_within_1e_4(
    trained_classifier: Any, classifier_bundle: Path, tmp_path: Path
) -> None:
    assert trained_classifier.accuracy >= 0.75, "the fixture model should have learned something"
    manifest = _manifest(classifier_bundle)
    assert manifest.export is not None and manifest.export.parity_max_abs_diff < 1e-4
    classifier = Classifier.load(classifier_bundle / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
    images = list(trained_classifier.images)
    tensor, _ = classifier.preprocess(images)
    onnx_logits = classifier.run(tensor)[0]
    with torch.no_grad():
        torch_logits = trained_classifier.module(torch.from_numpy(tensor)).numpy()
    assert onnx_logits.shape == (len(images), 2)
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4
    probabilities = np.array([r.probabilities for r in classifier.predict_batch(images)])
    assert np.allclose(probabilities, softmax(torch_logits), atol=1e-5)


def test_bundle_files_and_metadata_describe_the_model(classifier_bundle: Path) -> None:
    onnx = pytest.importorskip("onnx")
    manifest = _manifest(classifier_bundle)
    assert manifest.task == Task.CLASSIFY and manifest.classes == ["good", "defective"]
    assert set(manifest.files) == {MODEL_FILE, WEIGHTS_FILE}
    for name, digest in manifest.files.items():
        assert file_digest(classifier_bundle / name) == digest
    model = onnx.load(str(classifier_bundle / MODEL_FILE))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["fedinspect.classes"]) == ["good", "defective"]
    assert json.loads(props["fedinspect.input"])["channels"] == 1
    assert props["fedinspect.task"] == "classify" and props["fedinspect.version"] == "0"
    assert not list(classifier_bundle.glob("*.data")), "the .onnx file must be self-contained"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value, "batch axis must be dynamic"


def test_dynamic_batch_runs_batches_of_any_size(classifier_bundle: Path, tmp_path: Path) -> None:
    classifier = Classifier.load(classifier_bundle / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
    images = [np.full((64, 64), value, np.uint8) for value in (0, 60, 120, 180, 240)]
    one_by_one = [classifier.predict(image) for image in images]
    assert classifier.predict_batch(images) == one_by_one or np.allclose(
        [r.probabilities for r in classifier.predict_batch(images)], [r.probabilities for r in one_by_one], atol=1e-6
    )


@pytest.mark.parametrize(("architecture", "channels"), [("mobilenet_v3_small", 1), ("resnet18", 3)])
def test_torchvision_constructors_export_and_rebuild_from_weights(
    architecture: str, channels: int, tmp_path: Path
) -> None:
    import safetensors.torch

    from exporters.torch_classifier import (
        build_torchvision_classifier,
        classifier_input_spec,
        export_torch_classifier,
        torchvision_architecture,
    )

    torch.manual_seed(0)
    module = build_torchvision_classifier(architecture, 3, channels)
    manifest = export_torch_classifier(
        module,
        tmp_path / "bundle",
        name="cls",
        classes=["good", "scratch", "dent"],
        input_spec=classifier_input_spec(64, channels),
        architecture=torchvision_architecture(architecture, 3, channels),
    )
    assert manifest.architecture.params == {"num_classes": 3, "in_channels": channels}
    rebuilt = build_torchvision_classifier(
        manifest.architecture.name.split(".")[-1],
        int(manifest.architecture.params["num_classes"] or 0),
        int(manifest.architecture.params["in_channels"] or 0),
    )
    rebuilt.load_state_dict(safetensors.torch.load_file(str(tmp_path / "bundle" / WEIGHTS_FILE)), strict=True)
    rebuilt.eval()
    module.eval()
    x = torch.randn(2, channels, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), module(x))


def test_fp16_export_keeps_float32_io_and_a_looser_parity(trained_classifier: Any, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from exporters.torch_classifier import classifier_input_spec, export_torch_classifier

    manifest = export_torch_classifier(
        trained_classifier.module,
        tmp_path / "fp16",
        name="cls16",
        classes=["good", "defective"],
        input_spec=classifier_input_spec(64, 1),
        options=ExportOptions(fp16=True),
    )
    assert manifest.export is not None and manifest.export.fp16
    assert 0 < manifest.export.parity_max_abs_diff < 0.05
    model = onnx.load(str(tmp_path / "fp16" / MODEL_FILE))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


def test_parity_beyond_tolerance_fails_and_writes_nothing(trained_classifier: Any, tmp_path: Path) -> None:
    from exporters.torch_classifier import classifier_input_spec, export_torch_classifier

    with pytest.raises(ParityError, match="parity check failed"):
        export_torch_classifier(
            trained_classifier.module,
            tmp_path / "strict",
            name="cls",
            classes=["good", "defective"],
            input_spec=classifier_input_spec(64, 1),
            options=ExportOptions(fp16=True, atol=0.0, rtol=0.0),
        )
    assert not (tmp_path / "strict").exists()
    assert not list(tmp_path.iterdir()), "no staging leftovers"


def test_wrong_class_count_and_non_empty_output_are_refused(trained_classifier: Any, tmp_path: Path) -> None:
    from exporters.torch_classifier import classifier_input_spec, export_torch_classifier

    with pytest.raises(ExportError, match=r"\[batch, 3\] logits for 3 classes, got \(2, 2\)"):
        export_torch_classifier(
            trained_classifier.module,
            tmp_path / "a",
            name="cls",
            classes=["a", "b", "c"],
            input_spec=classifier_input_spec(64, 1),
        )
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("operator's file")
    with pytest.raises(ExportError, match="not empty"):
        export_torch_classifier(
            trained_classifier.module,
            occupied,
            name="cls",
            classes=["good", "defective"],
            input_spec=classifier_input_spec(64, 1),
        )
    assert (occupied / "keep.txt").read_text() == "operator's file"


def test_cli_exports_a_torchvision_classifier_from_a_state_dict(tmp_path: Path) -> None:
    import safetensors.torch

    from exporters.torch_classifier import build_torchvision_classifier
    from fedinspect.cli import cli

    module = build_torchvision_classifier("mobilenet_v3_small", 2, 1)
    safetensors.torch.save_file(module.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(module.state_dict(), str(tmp_path / "w.pt"))
    runner = CliRunner()
    for weights in ("w.safetensors", "w.pt"):
        result = runner.invoke(
            cli,
            [
                "export",
                "torch",
                "--arch",
                "mobilenet_v3_small",
                "--weights",
                str(tmp_path / weights),
                "--classes",
                "good,defective",
                "--channels",
                "1",
                "--size",
                "96",
                "--name",
                "pcb-cls",
                str(tmp_path / f"out-{weights}"),
            ],
        )
        assert result.exit_code == 0, result.output
        assert "exported pcb-cls v0 (classify, 2 classes, input 96x96x1)" in result.output
    bad = runner.invoke(
        cli,
        [
            "export",
            "torch",
            "--arch",
            "resnet18",
            "--weights",
            str(tmp_path / "w.pt"),
            "--classes",
            "good,defective",
            "--name",
            "x",
            str(tmp_path / "bad"),
        ],
    )
    assert bad.exit_code == 2 and "does not fit the model" in bad.output
    alone = runner.invoke(
        cli,
        [
            "export",
            "torch",
            "--arch",
            "mobilenet_v3_small",
            "--classes",
            "good,defective",
            "--channels",
            "1",
            "--template",
            "composite",
            "--name",
            "pcb-cls",
            str(tmp_path / "composite"),
        ],
    )
    assert alone.exit_code == 2 and "pcb-cls: input template 'composite': " in alone.output
    assert "needs 3 input channels, got 1" in alone.output
