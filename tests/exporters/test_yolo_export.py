"""YOLO export: our ONNX detector finds the same boxes as Ultralytics' predict on the same weights and image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.inference.detector import Detections, Detector, box_iou
from exporters.errors import ExportError
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE
from schemas.config import InferenceConfig
from schemas.manifests import Framework, ModelManifest, Task
from tests.support.models import DETECTOR_CLASSES, DETECTOR_SIZE

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")


def unmatched(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, other: Detections, margin_above: float
) -> list[int]:
    """Indices of boxes with no partner in ``other`` (same class, IoU >= 0.95, score within 1e-3).

    Boxes scoring within ``margin_above`` of the threshold are exempt: a 1e-6 difference may put them either side.
    """
    if len(other) == 0:
        return [i for i in range(len(scores)) if scores[i] > margin_above]
    iou = box_iou(boxes, other.boxes)
    ok = (
        (iou >= 0.95)
        & (classes[:, None] == other.class_ids[None, :])
        & (np.abs(scores[:, None] - other.scores[None, :]) <= 1e-3)
    )
    return [i for i in range(len(scores)) if not ok[i].any() and scores[i] > margin_above]


def _val_images(checkpoint: Path) -> list[np.ndarray]:
    folder = checkpoint.parents[3] / "shapes" / "images" / "val"
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(folder.glob("*.png"))]
    # Also a non-square, differently sized view so letterbox padding and the mapping back are exercised.
    return [*images, cv2.resize(images[0], (300, 220))]


def test_detector_matches_ultralytics_predict(yolo_checkpoint: Path, detector_bundle: Path, tmp_path: Path) -> None:
    from ultralytics import YOLO

    conf = 0.05
    detector = Detector.load(
        detector_bundle / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path, confidence_threshold=conf
    )
    reference = YOLO(str(yolo_checkpoint))
    compared = 0
    for image in _val_images(yolo_checkpoint):
        ours = detector.predict(image)
        theirs = reference.predict(
            cv2.cvtColor(image, cv2.COLOR_GRAY2BGR),
            imgsz=DETECTOR_SIZE,
            conf=conf,
            iou=0.7,
            rect=False,
            verbose=False,
            device="cpu",
        )[0].boxes
        ref_boxes, ref_scores = theirs.xyxy.numpy(), theirs.conf.numpy()
        ref_classes = theirs.cls.numpy().astype(np.int64)
        assert not unmatched(ref_boxes, ref_scores, ref_classes, ours, conf + 1e-3), "Ultralytics found more"
        theirs_as_detections = Detections(ref_boxes, ref_scores, ref_classes, ())
        assert not unmatched(ours.boxes, ours.scores, ours.class_ids, theirs_as_detections, conf + 1e-3), (
            "we found more"
        )
        compared += len(ref_scores)
        assert set(ours.class_names) <= set(DETECTOR_CLASSES)
    assert compared >= 5, "the trained model must find boxes for the comparison to mean anything"


def test_manifest_maps_ultralytics_metadata(detector_bundle: Path) -> None:
    manifest = ModelManifest.model_validate_json((detector_bundle / MANIFEST_FILE).read_bytes())
    assert manifest.task == Task.DETECT and manifest.classes == list(DETECTOR_CLASSES)
    assert (manifest.input.width, manifest.input.height, manifest.input.channels) == (DETECTOR_SIZE, DETECTOR_SIZE, 3)
    assert manifest.input.resize.value == "letterbox" and manifest.input.pad_value == 114
    assert manifest.architecture.framework == Framework.ULTRALYTICS
    assert manifest.architecture.name == "yolov8n.yaml" and manifest.architecture.params["nc"] == 2
    assert manifest.export is not None and manifest.export.parity_max_abs_diff < 1e-2


def test_yaml_plus_safetensors_export_equals_checkpoint_export(detector_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fedinspect.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "export",
            "yolo",
            "--cfg",
            "yolov8n.yaml",
            "--weights",
            str(detector_bundle / WEIGHTS_FILE),
            "--classes",
            ",".join(DETECTOR_CLASSES),
            "--imgsz",
            str(DETECTOR_SIZE),
            "--name",
            "pcb-detector",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code == 0, result.output
    image = np.random.default_rng(0).integers(0, 255, (DETECTOR_SIZE, DETECTOR_SIZE), dtype=np.uint8)
    first = Detector.load(detector_bundle / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
    second = Detector.load(tmp_path / "b" / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
    tensor, _ = first.preprocess([image])
    assert np.allclose(first.run(tensor)[0], second.run(tensor)[0], atol=1e-3)


def test_bad_checkpoints_and_weights_are_refused(detector_bundle: Path, tmp_path: Path) -> None:
    from exporters.yolo import load_yolo_checkpoint, load_yolo_weights

    corrupt = tmp_path / "best.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(ExportError, match=r"best\.pt: not a loadable Ultralytics checkpoint"):
        load_yolo_checkpoint(corrupt)
    with pytest.raises(ExportError, match="checkpoint not found"):
        load_yolo_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ExportError, match=r"does not fit yolov8n\.yaml with 3 classes"):
        load_yolo_weights("yolov8n.yaml", detector_bundle / WEIGHTS_FILE, ["a", "b", "c"])
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        load_yolo_weights("yolov8n.yaml", corrupt, ["a", "b"])


def test_a_pickle_with_foreign_globals_is_not_executed(tmp_path: Path) -> None:
    import pickle

    from exporters.yolo import load_yolo_checkpoint

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (marker.write_text, ("ran",))

    torch = pytest.importorskip("torch")
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": Exploit()}, str(hostile), pickle_module=pickle)
    with pytest.raises(ExportError):
        load_yolo_checkpoint(hostile)
    assert not marker.exists(), "loading a checkpoint must never run code from it"


def test_imgsz_must_fit_the_stride(yolo_checkpoint: Path, tmp_path: Path) -> None:
    from exporters.yolo import export_yolo, load_yolo_checkpoint

    with pytest.raises(ExportError, match="multiple of the model stride 32"):
        export_yolo(load_yolo_checkpoint(yolo_checkpoint), tmp_path / "x", name="d", imgsz=100)


def test_a_detector_of_template_comparisons_says_so_and_keeps_it_when_rebuilt(
    composite_detector_bundle: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from exporters.rebuild import rebuild_and_export
    from fedinspect.cli import cli
    from schemas.bundle import read_model_manifest
    from schemas.manifests import TemplateInput

    arguments = ["export", "yolo", "--cfg", "yolov8n.yaml", "--weights", str(composite_detector_bundle / WEIGHTS_FILE)]
    arguments += ["--classes", ",".join(DETECTOR_CLASSES), "--imgsz", str(DETECTOR_SIZE), "--name", "pcb-detector"]
    result = CliRunner().invoke(cli, [*arguments, "--template", "composite", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "compared with golden templates" in result.output
    exported = Detector.load(tmp_path / "cli" / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
    assert exported.metadata.input.template == TemplateInput.COMPOSITE
    # the hub rebuilds every aggregated version from weights: the new version must still say it
    manifest = read_model_manifest({MANIFEST_FILE: composite_detector_bundle / MANIFEST_FILE})
    rebuilt = rebuild_and_export(
        manifest.model_copy(update={"version": 1, "parent": 0}),
        composite_detector_bundle / WEIGHTS_FILE,
        tmp_path / "v1",
    )
    assert rebuilt.input.template == TemplateInput.COMPOSITE
    served = Detector.load(tmp_path / "v1" / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path)
    assert served.metadata.input.template == TemplateInput.COMPOSITE and served.version == 1
