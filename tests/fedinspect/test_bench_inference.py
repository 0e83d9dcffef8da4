"""`fedinspect bench inference` runs both sides on the same models and prints measured ratios."""

from __future__ import annotations

import pytest

from tests.conftest import require_module

pytestmark = pytest.mark.slow


def test_bench_inference_prints_ratios_for_each_model() -> None:
    require_module("ultralytics")
    from fedinspect.bench_inference import run_inference_bench

    lines: list[str] = []
    rows = run_inference_bench(sizes=(64,), batches=(1, 2), threads=1, seconds=0.05, echo=lines.append)
    assert {(row.model.split()[0], row.batch) for row in rows} == {
        ("mobilenet_v3_small", 1),
        ("mobilenet_v3_small", 2),
        ("yolov8n", 1),
        ("yolov8n", 2),
    }
    assert all(row.ours_ips > 0 and row.reference_ips > 0 for row in rows)
    output = "\n".join(lines)
    assert "threads: 1" in output
    assert "classifier at batch 1:" in output and "detector at batch 1:" in output
    for row in rows:
        assert f"{row.ratio:.2f}x" in output
