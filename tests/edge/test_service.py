"""The edge agent's start: a model that compares each image with its golden template needs the templates folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.inference.errors import ModelLoadError
from edge.service import EdgeService
from schemas.bundle import MODEL_FILE
from schemas.config import EdgeConfig
from tests.support.models import blob_samples

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")


def test_an_edge_serving_a_template_comparing_detector_starts_only_with_its_templates(
    classifier_bundle: Path, composite_detector_bundle: Path, tmp_path: Path
) -> None:
    settings: dict[str, object] = {
        "edge_id": "line-3",
        "data_dir": str(tmp_path / "edge"),
        "broker": {"host": "127.0.0.1", "port": 1},
        "models": {
            "classifier": str(classifier_bundle / MODEL_FILE),
            "detector": str(composite_detector_bundle / MODEL_FILE),
        },
    }
    with pytest.raises(
        ModelLoadError, match=r"compares each image with its golden template .* set inspection.templates_dir"
    ):
        EdgeService(EdgeConfig.model_validate(settings))

    images, _ = blob_samples(2, seed=95)
    templates = tmp_path / "templates"
    templates.mkdir()
    cv2.imwrite(str(templates / "board-a.png"), images[0])
    inspection = {"templates_dir": str(templates), "default_template": "board-a", "detector_mode": "always"}
    edge = EdgeService(EdgeConfig.model_validate({**settings, "inspection": inspection}))
    inspected = edge.inspection.inspect(bytes(cv2.imencode(".png", images[1])[1]), source="http")
    assert inspected.result.latency.detect_ms is not None, "the detector ran on the composite"
    edge.buffer.labels.add(inspected.stored.sample_id, verdict="good", boxes=[], source="operator", author="qa")
    [labeled] = edge.buffer.labels.labeled_samples()
    assert labeled.template_path is not None
    np.testing.assert_array_equal(cv2.imread(str(labeled.template_path), cv2.IMREAD_UNCHANGED), images[0])
