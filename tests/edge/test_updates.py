"""Building a signed update on the edge: what its manifest carries."""

from __future__ import annotations

import logging
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edge.updates import build_update_artifact
from runtime.signing import SigningKey, generate_key_pair
from schemas.bundle import MANIFEST_FILE
from schemas.manifests import TensorEncoding, UpdateManifest


def test_non_finite_metrics_are_left_out_of_the_signed_manifest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A diverged local run can measure NaN; the hub refuses a manifest carrying one, so the edge leaves it out."""
    private, _ = generate_key_pair("edge-a", tmp_path / "keys")
    artifact = tmp_path / "u.artifact"
    with caplog.at_level(logging.WARNING, logger="edge.updates"):
        manifest, _ = build_update_artifact(
            {"w": np.ones(3, np.float32)},
            signing_key=SigningKey.load(private),
            model_name="det",
            round_id="r1",
            base_version=0,
            num_examples=4,
            encoding=TensorEncoding(),
            artifact=artifact,
            metrics_before={"accuracy": 0.8},
            metrics_after={"accuracy": 0.9, "loss": math.nan, "f1": math.inf},
        )
    assert manifest.metrics_before == {"accuracy": 0.8}
    assert manifest.metrics_after == {"accuracy": 0.9}
    with tarfile.open(artifact) as tar:
        member = tar.extractfile(MANIFEST_FILE)
        assert member is not None
        assert UpdateManifest.model_validate_json(member.read()) == manifest
    assert any(r.getMessage() == "metrics left out of the update" for r in caplog.records)
