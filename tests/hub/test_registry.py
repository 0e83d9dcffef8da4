"""The model registry's bounds on what it records: metrics a manifest can carry, tensor specs from the header."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from hub.db import upgrade_hub_database
from hub.registry import ModelRegistry
from runtime.db import sqlite_engine
from schemas.tensors import tensor_specs
from tests.schemas import samples

BASE: dict[str, np.ndarray] = {"w": np.zeros((4, 3), np.float32), "steps": np.array(0, np.int64)}


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    engine = sqlite_engine(tmp_path / "hub.db")
    upgrade_hub_database(engine)
    registry = ModelRegistry(engine, tmp_path / "artifacts")
    manifest = samples.model_manifest().model_copy(update={"version": 0, "parent": None, "signature": None})
    registry.import_root(manifest, BASE)
    return registry


def test_a_new_version_leaves_out_metrics_a_manifest_cannot_carry(
    registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A weighted mean of finite metrics can still overflow (1e308 x examples): the round must publish anyway."""
    with caplog.at_level(logging.WARNING, logger="hub.registry"):
        version = registry.add_version(
            "pcb-detector",
            0,
            BASE,
            round_id="r-1",
            strategy="fedavg",
            participants=["edge-a"],
            num_examples=3,
            metrics={"mAP50": 0.7, "loss": math.inf, "recall": math.nan},
        )
    assert version.manifest.metrics == {"mAP50": 0.7}
    reread = registry.get("pcb-detector", version.manifest.version)  # the stored manifest parses again
    assert reread.manifest.metrics == {"mAP50": 0.7} and reread.metrics == {"mAP50": 0.7}
    [record] = [r for r in caplog.records if r.getMessage() == "metrics left out of the new version"]
    assert record.metrics == ["loss", "recall"]  # type: ignore[attr-defined]


def test_tensor_specs_come_from_the_stored_weights(registry: ModelRegistry) -> None:
    assert registry.tensor_specs("pcb-detector", 0) == tensor_specs(BASE)
    with pytest.raises(KeyError):
        registry.tensor_specs("pcb-detector", 9)
