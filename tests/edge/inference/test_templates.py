"""Golden templates: the store reads them by id from a folder, and a model whose input spec says 'composite' sees
each image stacked with its template, while a model without it sees the image alone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from edge.inference.images import reference_composite
from edge.inference.pipeline import InspectionPipeline
from edge.inference.templates import TemplateError, TemplateStore
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, read_model_manifest
from schemas.config import DetectorMode, InferenceConfig, InspectionConfig
from schemas.manifests import TemplateInput
from tests.support.models import blob_samples

cv2 = pytest.importorskip("cv2")


def write_template(folder: Path, name: str, image: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert cv2.imwrite(str(path), image)
    return path


def test_the_store_reads_templates_by_id_and_rereads_a_replaced_file(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    first = np.full((32, 48), 40, np.uint8)
    path = write_template(folder, "board-a.png", first)
    store = TemplateStore(folder, default="board-a")
    template = store.resolve(None)
    assert template is not None and template.template_id == "board-a"
    np.testing.assert_array_equal(template.image, first)
    assert template.data == path.read_bytes()
    assert store.get("board-a") is template, "kept decoded while the file is unchanged"
    write_template(folder, "board-a.png", np.full((32, 48), 90, np.uint8))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10_000_000))
    assert int(store.get("board-a").image[0, 0]) == 90, "a replaced file is read again"
    assert TemplateStore(folder).resolve(None) is None, "no id and no default: no template"


@pytest.mark.parametrize(
    ("template_id", "reason", "message"),
    [
        ("board-z", "unknown_template", r"no template 'board-z' in .*templates \(expected board-z.png"),
        ("../etc/passwd", "unknown_template", r"template id '../etc/passwd' is not valid"),
        ("twice", "unknown_template", r"template 'twice' is ambiguous: twice.png, twice.jpg"),
        ("broken", "bad_template", r"template 'broken' .*not a decodable image"),
    ],
)
def test_a_template_that_cannot_be_used_is_refused_by_name(
    tmp_path: Path, template_id: str, reason: str, message: str
) -> None:
    folder = tmp_path / "templates"
    write_template(folder, "twice.png", np.zeros((8, 8), np.uint8))
    write_template(folder, "twice.jpg", np.zeros((8, 8), np.uint8))
    (folder / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(TemplateError, match=message) as raised:
        TemplateStore(folder).get(template_id)
    assert raised.value.reason == reason


def test_naming_a_template_without_a_templates_folder_is_refused() -> None:
    with pytest.raises(TemplateError, match=r"'board-a' was named, but inspection.templates_dir is not configured"):
        TemplateStore(None).resolve("board-a")


@pytest.mark.slow
def test_a_composite_detector_sees_each_image_with_its_template(
    classifier_bundle: Path, composite_detector_bundle: Path, tmp_path: Path
) -> None:
    manifest = read_model_manifest({MANIFEST_FILE: composite_detector_bundle / MANIFEST_FILE})
    assert manifest.input.template == TemplateInput.COMPOSITE
    config = InferenceConfig()
    classifier = Classifier.load(classifier_bundle / MODEL_FILE, config, cache_dir=tmp_path)
    detector = Detector.load(composite_detector_bundle / MODEL_FILE, config, cache_dir=tmp_path)
    assert detector.metadata.input.template == TemplateInput.COMPOSITE, "the ONNX metadata says so too"
    inspection = InspectionConfig(detector_mode=DetectorMode.ALWAYS, confidence_threshold=0.001)
    pipeline = InspectionPipeline(classifier, detector, inspection)
    assert pipeline.needs_template
    images, _ = blob_samples(2, seed=31)
    template = images[0]
    result = pipeline.inspect(images[1], template=template)
    expected = detector.predict(reference_composite(images[1], template))
    assert [box.class_name for box in result.boxes] == list(expected.class_names)
    np.testing.assert_allclose([[b.x1, b.y1, b.x2, b.y2] for b in result.boxes], expected.boxes.reshape(-1, 4))
    assert result.boxes, "the tiny detector finds something at this threshold"
    alone = detector.predict(cv2.cvtColor(images[1], cv2.COLOR_GRAY2BGR))
    assert not np.array_equal(alone.scores, expected.scores), "the template changed what the detector saw"
    assert result.score == pytest.approx(classifier.predict(images[1]).probability(1)), "the classifier: image alone"

    with pytest.raises(TemplateError, match=r"pcb-detector v0 compares each image with its golden template") as none:
        pipeline.inspect(images[1])
    assert none.value.reason == "no_template"
    with pytest.raises(TemplateError, match=r"^image 64x64 and its template 64x32 differ in size") as other:
        pipeline.inspect(images[1], template=template[:32])
    assert other.value.reason == "template_mismatch"
    assert not InspectionPipeline(classifier, None, inspection).needs_template
