"""The shipped systemd units pass `systemd-analyze verify` with no output at all (it exits 0 on warnings), and
`systemd-analyze security` rates each at an exposure of at most 3.0, the edge unit keeping its GPU and cameras."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO_ROOT / "deploy" / "systemd").glob("*.service"))
SYSTEM_UNITS = Path("/lib/systemd/system")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the host's own system units and the executables our units start."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None or not SYSTEM_UNITS.is_dir():
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: install the systemd package (.ci/run does)")
        pytest.skip("systemd-analyze is not installed")
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(SYSTEM_UNITS, root / "lib" / "systemd" / "system", symlinks=True)
    for executable in ("opt/fedinspect/venv/bin/fedinspect", "usr/sbin/mosquitto", "bin/kill"):
        path = root / executable
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    return root


def test_units_are_shipped() -> None:
    assert [u.name for u in UNITS] == [
        "fedinspect-edge.service",
        "fedinspect-hub.service",
        "fedinspect-mosquitto.service",
    ]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies_without_any_output(root: Path, unit: Path) -> None:
    shutil.copy(unit, root / "etc" / "systemd" / "system" / unit.name)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{unit.name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout + result.stderr == ""


def test_the_verifier_catches_a_bad_unit(root: Path) -> None:
    bad = root / "etc" / "systemd" / "system" / "bad.service"
    bad.write_text(UNITS[1].read_text().replace("Restart=on-failure", "Restart=on-failure\nRestartt=always"))
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "/etc/systemd/system/bad.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Unknown key" in result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_units_are_hardened(unit: Path) -> None:
    text = unit.read_text()
    for setting in (
        "Type=notify",
        "Restart=on-failure",
        "StartLimitBurst=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "PrivateTmp=yes",
        "ProtectHome=yes",
    ):
        assert setting in text, f"{unit.name} lacks {setting}"
    if unit.name != "fedinspect-mosquitto.service":
        assert "WatchdogSec=" in text and "User=fedinspect" in text and "EnvironmentFile=" in text


MAX_EXPOSURE = 3.0


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_exposure_is_at_most_three(root: Path, unit: Path) -> None:
    import re

    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_edge_unit_keeps_its_gpu_and_camera_devices() -> None:
    edge = (REPO_ROOT / "deploy" / "systemd" / "fedinspect-edge.service").read_text()
    for device in ("char-nvidia-frontend", "char-nvidia-uvm", "char-nvidia-caps", "char-drm", "char-video4linux"):
        assert f"DeviceAllow={device} rw" in edge
    assert "PrivateDevices=yes" not in edge and "MemoryDenyWriteExecute=yes" not in edge  # CUDA / TensorRT need both
