"""`fedinspect bench edge` measures both sides in one run and prints the ratio it measured."""

from __future__ import annotations

import pytest

from tests.conftest import require_module

pytestmark = pytest.mark.slow


def test_bench_edge_prints_the_measured_ratio() -> None:
    require_module("ultralytics")
    from fedinspect.bench_edge import run_edge_bench

    lines: list[str] = []
    ratio = run_edge_bench(seconds=0.05, echo=lines.append)
    output = "\n".join(lines)
    assert 0 < ratio < 2
    assert f"ratio HTTP / bare: {ratio:.1%}" in output
    assert "bare pipeline" in output and "HTTP POST /v1/inspect" in output
