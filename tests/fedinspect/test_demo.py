"""`fedinspect demo` as a newcomer runs it (small settings): it finishes with a report, and neither the end nor a
Ctrl-C leaves any of its processes (broker, hub, edges, trainers) running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT

pytestmark = [pytest.mark.broker, pytest.mark.slow]
pytest.importorskip("ultralytics")
SMALL = ["--rounds", "2", "--plants", "2", "--boards", "10", "--detector-epochs", "2"]


def processes_under(folder: Path) -> list[str]:
    """Command lines of running processes that mention ``folder`` (the demo's configs and data live there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in command:
            found.append(command)
    return found


def start_demo(out: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "fedinspect.cli", "demo", *SMALL, "--out", str(out)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )


def test_demo_finishes_with_a_report_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    demo = start_demo(out, tmp_path / "demo.log")
    assert demo.wait(timeout=900) == 0, (tmp_path / "demo.log").read_text()[-4000:]
    output = (tmp_path / "demo.log").read_text()
    [run] = list(out.iterdir())
    report = run / "report"
    assert f"Report: {report / 'index.html'}" in output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["versions"] == [0, 1, 2]
    assert set(metrics["accuracy_by_version"]) == {"plant-a", "plant-b", "unseen boards"}
    assert all(len(values) == 3 for values in metrics["accuracy_by_version"].values())
    assert set(metrics["local_only"]) == {"plant-a", "plant-b"} and "centralized_mean" in metrics
    page = (report / "index.html").read_text()
    for picture in ("accuracy_by_round.png", "confusion.png"):
        assert picture in page and (report / picture).stat().st_size > 1000
    for line in ("pcb-classifier", "pcb-detector"):  # both lines federated, no round failed
        assert f"round {line}-r0002: published" in output and f"{line}-r0001: failed" not in output
        for plant in ("plant-a", "plant-b"):  # each edge serves the last version or says why it kept it out
            assert f"{plant}: now serving {line} v2" in output or f"{plant}: model {line} v2 not used" in output
    assert "plant-a has seen open, short, mousebite, spur only" in output
    pages = re.findall(r"  (hub|plant-a|plant-b): (http://127\.0\.0\.1:\d+)/ui  token (fi_\S+)", output)
    assert {name for name, _, _ in pages} == {"hub", "plant-a", "plant-b"}, "each page is printed with its login"
    detector = metrics["detector"]  # every detector version scored per plant, against alone and pooled
    assert detector["versions"] == [0, 1, 2] and "detector_map50_by_round.png" in page
    assert set(detector["map50_by_version"]) == {"plant-a", "plant-b", "unseen boards"}
    assert all(len(values) == 3 for values in detector["map50_by_version"].values())
    assert set(detector["local_only"]) == {"plant-a", "plant-b"} and "centralized_mean_map50" in detector
    examples = sorted(report.glob("example-*.png"))  # boxes drawn on two defective test boards a plant
    assert len(examples) == 4 and all(example.name in page for example in examples)
    assert processes_under(out) == []


def test_ctrl_c_stops_every_demo_process(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    log = tmp_path / "demo.log"
    demo = start_demo(out, log)
    deadline = time.monotonic() + 600
    while "hub running" not in log.read_text():
        assert demo.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "the demo never got its hub running"
        time.sleep(0.5)
    assert len(processes_under(out)) >= 4, "broker, hub and two edges run"
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=120) == 130
    assert "interrupted: every demo process stopped" in log.read_text()
    assert processes_under(out) == []
