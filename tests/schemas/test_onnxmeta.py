"""The ONNX metadata contract: our keys round-trip, Ultralytics' metadata is adopted only when complete."""

from __future__ import annotations

import pytest

from schemas.errors import ModelMetadataError
from schemas.manifests import ColorMode, InputSpec, ResizeMode, Task, TemplateInput
from schemas.onnxmeta import KEY_CLASSES, KEY_FORMAT, KEY_INPUT, OnnxModelMetadata, ScoreKind, read_metadata


def _metadata() -> OnnxModelMetadata:
    spec = InputSpec(
        width=64, height=48, channels=1, color=ColorMode.GRAY, resize=ResizeMode.RESIZE, mean=(0.5,), std=(0.25,)
    )
    return OnnxModelMetadata(
        name="pcb-classifier",
        version=3,
        task=Task.CLASSIFY,
        classes=["good", "defective"],
        input=spec,
        scores=ScoreKind.PROBABILITIES,
    )


def test_our_metadata_round_trips_through_string_props() -> None:
    props = _metadata().to_props()
    assert all(isinstance(value, str) for value in props.values())
    assert read_metadata(props, source="m.onnx") == _metadata()


@pytest.mark.parametrize("missing", [KEY_CLASSES, KEY_INPUT])
def test_incomplete_metadata_names_the_missing_key(missing: str) -> None:
    props = _metadata().to_props()
    del props[missing]
    with pytest.raises(ModelMetadataError, match=rf"m\.onnx: incomplete fedinspect metadata, missing {missing}"):
        read_metadata(props, source="m.onnx")


def test_invalid_values_are_refused_with_the_field() -> None:
    props = {**_metadata().to_props(), KEY_CLASSES: '["good", "good"]'}
    with pytest.raises(ModelMetadataError, match="unique"):
        read_metadata(props, source="m.onnx")
    props = {**_metadata().to_props(), KEY_INPUT: "{not json"}
    with pytest.raises(ModelMetadataError, match="not valid JSON"):
        read_metadata(props, source="m.onnx")
    props = {**_metadata().to_props(), KEY_FORMAT: "9"}
    with pytest.raises(ModelMetadataError, match="format '9' is not supported"):
        read_metadata(props, source="m.onnx")


def test_a_model_without_any_metadata_is_refused() -> None:
    with pytest.raises(ModelMetadataError, match=r"no fedinspect metadata.*fedinspect export"):
        read_metadata({"producer": "someone"}, source="bare.onnx")


def test_complete_ultralytics_metadata_is_adopted() -> None:
    props = {"task": "detect", "names": "{0: 'open', 1: 'short'}", "imgsz": "[320, 416]", "stride": "32"}
    adopted = read_metadata(props, source="best.onnx", fallback_name="best")
    assert adopted.task == Task.DETECT
    assert adopted.classes == ["open", "short"]
    assert (adopted.input.height, adopted.input.width) == (320, 416)
    assert adopted.input.resize == ResizeMode.LETTERBOX and adopted.input.color == ColorMode.RGB
    assert adopted.input.scale == pytest.approx(1 / 255) and adopted.name == "best"


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"task": "segment", "names": "{0: 'a'}", "imgsz": "[64, 64]"}, "task 'segment' is not served"),
        ({"task": "detect", "names": "{0: 'a', 2: 'b'}", "imgsz": "[64, 64]"}, "must map 0..n-1"),
        ({"task": "detect", "names": "__import__('os').system('id')", "imgsz": "[64, 64]"}, "unreadable"),
        ({"task": "detect", "names": "{0: 'a'}", "imgsz": "[64]"}, "imgsz"),
    ],
)
def test_incomplete_or_hostile_ultralytics_metadata_is_refused(props: dict[str, str], message: str) -> None:
    with pytest.raises(ModelMetadataError, match=message):
        read_metadata(props, source="best.onnx")


def test_a_template_comparison_round_trips_and_the_default_is_left_out() -> None:
    alone = InputSpec(
        width=64, height=64, channels=3, color=ColorMode.RGB, resize=ResizeMode.LETTERBOX, mean=(0,) * 3, std=(1,) * 3
    )
    assert "template" not in alone.model_dump(mode="json"), "older edges and earlier signatures see the same keys"
    composite = InputSpec.model_validate({**alone.model_dump(), "template": "composite"})
    assert composite.model_dump(mode="json")["template"] == "composite"
    props = OnnxModelMetadata(name="det", version=1, task=Task.DETECT, classes=["open"], input=composite).to_props()
    assert read_metadata(props, source="m.onnx").input.template == TemplateInput.COMPOSITE
    with pytest.raises(ValueError, match="template 'composite' needs 3 input channels, got 1"):
        InputSpec.model_validate({**_metadata().input.model_dump(), "template": "composite"})
