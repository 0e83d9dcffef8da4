"""Workers started the one way: importable from a checkout, bounded threads, dead with their parent, and a failure
read back as the line the worker wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.processes import (
    EXIT_ORPHANED,
    PARENT_PID_ENV,
    PROJECT_ROOT,
    child_environment,
    worker_error,
)
from tests.support.waiting import wait_until


def test_the_child_environment_makes_the_project_importable_names_the_parent_and_bounds_threads() -> None:
    env = child_environment({"EXTRA": "1"}, threads=2)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == PROJECT_ROOT
    assert env[PARENT_PID_ENV] == str(os.getpid())
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2" and env["EXTRA"] == "1"
    completed = subprocess.run(
        [sys.executable, "-c", "import runtime.processes, os; print(os.environ['OMP_NUM_THREADS'])"],
        env=env,
        cwd="/",  # not the checkout: only PYTHONPATH can make the package importable
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout.strip() == "2"


def test_a_worker_failure_is_its_last_error_line_else_the_tail_of_its_output() -> None:
    assert worker_error("loading\nerror: first\nwarning\nerror: model.onnx: not a bundle\nbye\n") == (
        "model.onnx: not a bundle"
    )
    assert worker_error("a\nb\nc\nd\n") == "b | c | d"
    assert worker_error("") == "(no output)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_dies_with_its_parent_and_one_orphaned_before_arming_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    worker = (
        "import time, os, pathlib; from runtime.processes import die_with_parent; die_with_parent(); "
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(60)"
    )
    parent = (
        "import subprocess, sys, time; from runtime.processes import child_environment; "
        f"subprocess.Popen([sys.executable, '-c', {worker!r}], env=child_environment()); time.sleep(60)"
    )
    middle = subprocess.Popen([sys.executable, "-c", parent], env=child_environment())
    try:
        wait_until(pid_file.exists, timeout=30, what="the worker to start")
        worker_pid = int(pid_file.read_text())
        middle.kill()
        middle.wait()
        wait_until(lambda: not _alive(worker_pid), timeout=10, what="the worker to die with its parent")
    finally:
        middle.kill()
    orphan = subprocess.run(
        [sys.executable, "-c", "from runtime.processes import die_with_parent; die_with_parent(); print('ran')"],
        env={**child_environment(), PARENT_PID_ENV: "1"},  # a parent that is not this child's
        capture_output=True,
        text=True,
        check=False,
    )
    assert orphan.returncode == EXIT_ORPHANED and "ran" not in orphan.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of a dead parent is reaped by init; until then it is a zombie, which counts as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
