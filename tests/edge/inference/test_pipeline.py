"""Classify-then-detect: the gate decides whether the detector runs; results carry versions and stage times."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from edge.inference.errors import ModelLoadError
from edge.inference.pipeline import InspectionPipeline
from edge.inference.watchdog import InferenceWatchdog
from schemas.bundle import MODEL_FILE
from schemas.config import DetectorMode, InferenceConfig, InspectionConfig
from schemas.messages import Verdict
from tests.support.models import blob_samples

pytestmark = pytest.mark.slow


@pytest.fixture
def models(classifier_bundle: Path, detector_bundle: Path, tmp_path: Path) -> tuple[Classifier, Detector]:
    config = InferenceConfig()
    return (
        Classifier.load(classifier_bundle / MODEL_FILE, config, cache_dir=tmp_path),
        Detector.load(detector_bundle / MODEL_FILE, config, cache_dir=tmp_path),
    )


def test_gate_runs_the_detector_only_on_defective_images(models: tuple[Classifier, Detector]) -> None:
    classifier, detector = models
    images, labels = blob_samples(8, seed=11)
    pipeline = InspectionPipeline(classifier, detector, InspectionConfig(confidence_threshold=0.01))
    results = pipeline.inspect_batch(list(images))
    expected = [Verdict.DEFECTIVE if label else Verdict.GOOD for label in labels]
    correct = sum(r.verdict == want for r, want in zip(results, expected, strict=True))
    assert correct >= 6, f"the trained classifier got {correct}/8 right"
    assert {r.verdict for r in results} == {Verdict.GOOD, Verdict.DEFECTIVE}
    for result in results:
        assert result.model_versions == {"pcb-classifier": 0, "pcb-detector": 0}
        assert (result.image_width, result.image_height) == (64, 64)
        if result.verdict == Verdict.GOOD:
            assert result.latency.detect_ms is None and result.boxes == ()
            assert result.score < 0.5
        else:
            assert result.latency.detect_ms is not None and result.latency.detect_ms > 0
            assert result.score >= 0.5
        assert result.latency.total_ms >= result.latency.classify_ms > 0


def test_always_mode_runs_the_detector_on_every_image(models: tuple[Classifier, Detector]) -> None:
    classifier, detector = models
    images, _ = blob_samples(4, seed=12)
    pipeline = InspectionPipeline(
        classifier, detector, InspectionConfig(detector_mode=DetectorMode.ALWAYS, defect_threshold=1.0)
    )
    results = pipeline.inspect_batch(list(images), decode_ms=2.5)
    assert all(r.verdict == Verdict.GOOD and r.latency.detect_ms is not None for r in results)
    assert all(r.latency.decode_ms == 2.5 and r.latency.total_ms > 2.5 for r in results)


def test_boxes_are_typed_and_inside_the_image(models: tuple[Classifier, Detector]) -> None:
    classifier, detector = models
    image = np.full((240, 320), 20, np.uint8)
    image[60:140, 100:200] = 230
    pipeline = InspectionPipeline(
        classifier, detector, InspectionConfig(detector_mode=DetectorMode.ALWAYS, confidence_threshold=0.05)
    )
    result = pipeline.inspect(image)
    assert result.boxes, "the trained detector should see a large bright rectangle"
    for box in result.boxes:
        assert 0 <= box.x1 <= box.x2 <= 320 and 0 <= box.y1 <= box.y2 <= 240
        assert box.class_name in ("rect", "ellipse") and 0.05 < box.score <= 1


def test_classifier_without_the_defect_class_is_refused(models: tuple[Classifier, Detector]) -> None:
    classifier, detector = models
    with pytest.raises(ModelLoadError, match=r"do not include inspection\.defect_class 'ng'"):
        InspectionPipeline(classifier, detector, InspectionConfig(defect_class="ng"))


def test_pipeline_without_a_detector_classifies_only(models: tuple[Classifier, Detector]) -> None:
    classifier, _ = models
    images, _ = blob_samples(2, seed=13)
    result = InspectionPipeline(classifier, None, InspectionConfig()).inspect(images[1])
    assert result.boxes == () and result.latency.detect_ms is None
    assert result.model_versions == {"pcb-classifier": 0}


def test_watchdog_marks_an_overrun_unhealthy_and_recovers(classifier_bundle: Path, tmp_path: Path) -> None:
    watchdog = InferenceWatchdog(limit_s=0.2)
    classifier = Classifier.load(
        classifier_bundle / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path, watchdog=watchdog
    )
    image = np.zeros((64, 64), np.uint8)
    classifier.predict(image)
    assert watchdog.status().healthy
    original = classifier._runner.run

    def slow(tensor: Any) -> Any:
        time.sleep(0.3)
        return original(tensor)

    classifier._runner.run = slow  # type: ignore[method-assign]
    classifier.predict(image)
    status = watchdog.status()
    assert not status.healthy and status.reason is not None and "pcb-classifier took" in status.reason
    classifier._runner.run = original  # type: ignore[method-assign]
    classifier.predict(image)
    assert watchdog.status().healthy


def test_watchdog_sees_a_call_that_is_still_running() -> None:
    watchdog = InferenceWatchdog(limit_s=0.05)
    with watchdog.track("pcb-detector"):
        assert watchdog.status().healthy
        time.sleep(0.1)
        status = watchdog.status()
        assert not status.healthy and "pcb-detector running for" in (status.reason or "")
    with pytest.raises(ValueError, match="must be > 0"):
        InferenceWatchdog(limit_s=0)
