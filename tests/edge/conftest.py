"""Fixtures of the edge's tests: an inspection service on real ONNX models and a real SQLite buffer."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.buffer import EdgeBuffer
from edge.db import open_edge_database
from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from edge.inference.pipeline import InspectionPipeline
from edge.inspection import InspectionService
from schemas.bundle import MODEL_FILE
from schemas.config import InferenceConfig, InspectionConfig, IntakeConfig, ReviewConfig


@pytest.fixture
def service(classifier_bundle: Path, detector_bundle: Path, tmp_path: Path) -> InspectionService:
    config = InferenceConfig()
    pipeline = InspectionPipeline(
        Classifier.load(classifier_bundle / MODEL_FILE, config, cache_dir=tmp_path),
        Detector.load(detector_bundle / MODEL_FILE, config, cache_dir=tmp_path),
        InspectionConfig(),
    )
    buffer = EdgeBuffer(open_edge_database(tmp_path / "buffer.db"), tmp_path / "images")
    return InspectionService(
        pipeline,
        buffer,
        edge_id="line-1",
        intake=IntakeConfig(max_image_bytes=200_000, max_pending=2, max_import_bytes=1024**2),
        review=ReviewConfig(),
        event_topic="t/v1/edge/line-1/events",
    )
