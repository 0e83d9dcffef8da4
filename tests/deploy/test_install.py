"""deploy/install.sh against a temporary root: files, owners and modes (secrets 0600), idempotence, uninstall."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedinspect.cli import cli
from fedinspect.plant import Plant

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL = REPO_ROOT / "deploy" / "install.sh"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh creates users and chowns: needs root")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, check=False, env=env)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty system root with its own user database, so the host's users are never touched."""
    etc = tmp_path / "root" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nmosquitto:x:120:\n")
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nmosquitto:x:110:120::/var/lib/mosquitto:/bin/false\n")
    for name, line in (("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n")):
        (etc / name).write_text(line)
        (etc / name).chmod(0o600)
    return tmp_path / "root"


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Plant:
    """A plant made the way operators make it: `fedinspect ca init` and `fedinspect enroll`."""
    directory = tmp_path_factory.mktemp("plant") / "p"
    runner = CliRunner()
    for args in (
        [
            "ca",
            "init",
            "--plant",
            str(directory),
            "--broker-host",
            "broker.local",
            "--client-certificates",
            "--hub-web-host",
            "hub.local",
        ],
        ["enroll", "line-3", "--plant", str(directory), "--web-host", "line-3.local"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    return Plant.load(directory)


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def service_ids(root: Path) -> tuple[int, int]:
    line = next(x for x in (root / "etc" / "passwd").read_text().splitlines() if x.startswith("fedinspect:"))
    fields = line.split(":")
    return int(fields[2]), int(fields[3])


def test_edge_install(root: Path, plant: Plant) -> None:
    source = plant.directory / "edges" / "line-3"
    result = run("--role", "edge", "--config", str(source), "--prefix", str(root), "--skip-venv")
    assert result.returncode == 0, result.stderr
    uid, gid = service_ids(root)
    assert uid != 0 and gid != 0
    etc, data = root / "etc" / "fedinspect", root / "var" / "lib" / "fedinspect"
    assert owner_and_mode(etc / "edge.env") == (uid, gid, 0o600)
    assert owner_and_mode(etc / "keys" / "line-3.key") == (uid, gid, 0o600)
    assert owner_and_mode(etc / "line-3.key") == (uid, gid, 0o600)  # TLS client key
    assert owner_and_mode(etc / "line-3-web.key") == (uid, gid, 0o600)  # the pages' HTTPS key
    assert owner_and_mode(etc / "line-3-web.crt") == (0, 0, 0o644)
    assert owner_and_mode(etc / "edge.yaml") == (0, gid, 0o640)
    assert owner_and_mode(etc / "keys" / "hub.pub") == (0, 0, 0o644)
    assert owner_and_mode(etc) == (0, gid, 0o751)  # traversable (mosquitto on reload), not listable
    assert owner_and_mode(data) == (uid, gid, 0o750)
    unit = root / "etc" / "systemd" / "system" / "fedinspect-edge.service"
    assert unit.read_text() == (REPO_ROOT / "deploy" / "systemd" / "fedinspect-edge.service").read_text()
    assert (etc / "edge.env").read_text() == (source / "edge.env").read_text()

    again = run("--role", "edge", "--config", str(source), "--prefix", str(root), "--skip-venv")
    assert again.returncode == 0, again.stderr
    assert "created user" not in again.stdout
    users = [line.split(":")[0] for line in (root / "etc" / "passwd").read_text().splitlines()]
    assert users.count("fedinspect") == 1
    assert owner_and_mode(etc / "edge.env") == (uid, gid, 0o600)


def test_hub_and_broker_install(root: Path, plant: Plant) -> None:
    assert run("--role", "hub", "--config", str(plant.hub_dir), "--prefix", str(root), "--skip-venv").returncode == 0
    assert run("--role", "broker", "--config", str(plant.mosquitto_dir), "--prefix", str(root)).returncode == 0
    uid, gid = service_ids(root)
    etc = root / "etc" / "fedinspect"
    assert owner_and_mode(etc / "hub.env") == (uid, gid, 0o600)
    assert owner_and_mode(etc / "keys" / "hub.key") == (uid, gid, 0o600)
    assert owner_and_mode(etc / "hub-web.key") == (uid, gid, 0o600), "the pages' HTTPS key, the service's only"
    assert owner_and_mode(etc / "hub-web.crt") == (0, 0, 0o644)
    assert (etc / "keys" / "edges" / "line-3.pub").exists()
    assert owner_and_mode(etc / "mosquitto" / "passwd") == (0, 120, 0o640)
    assert owner_and_mode(etc / "mosquitto" / "broker.key") == (0, 120, 0o640)
    assert owner_and_mode(etc / "mosquitto" / "crl.pem") == (0, 0, 0o644)  # the revocation list (crlfile)
    conf = (etc / "mosquitto" / "mosquitto.conf").read_text()
    assert "password_file /etc/fedinspect/mosquitto/passwd" in conf
    assert "persistence_location /var/lib/mosquitto/" in conf
    assert owner_and_mode(root / "var" / "lib" / "mosquitto") == (110, 120, 0o750)  # mosquitto writes there
    units = sorted(p.name for p in (root / "etc" / "systemd" / "system").iterdir())
    assert units == ["fedinspect-hub.service", "fedinspect-mosquitto.service"]


def test_uninstall_keeps_data_unless_purged(root: Path, plant: Plant) -> None:
    assert run("--role", "hub", "--config", str(plant.hub_dir), "--prefix", str(root), "--skip-venv").returncode == 0
    (root / "var" / "lib" / "fedinspect" / "hub.db").write_text("registry")
    kept = run("--uninstall", "--prefix", str(root))
    assert kept.returncode == 0, kept.stderr
    assert not (root / "etc" / "systemd" / "system" / "fedinspect-hub.service").exists()
    assert (root / "var" / "lib" / "fedinspect" / "hub.db").read_text() == "registry"
    assert (root / "etc" / "fedinspect" / "hub.env").exists()
    purged = run("--uninstall", "--purge", "--prefix", str(root))
    assert purged.returncode == 0, purged.stderr
    assert not (root / "var" / "lib" / "fedinspect").exists() and not (root / "etc" / "fedinspect").exists()
    assert not any(line.startswith("fedinspect:") for line in (root / "etc" / "passwd").read_text().splitlines())


def test_onnxruntime_build_follows_the_driver(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    base_path = "/usr/bin:/bin"
    assert run("--print-extra", env={"PATH": base_path}).stdout.strip() == "cpu"
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100'\n")
    smi.chmod(0o755)
    assert run("--print-extra", env={"PATH": f"{fake}:{base_path}"}).stdout.strip() == "gpu"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n")  # a driver that does not answer
    assert run("--print-extra", env={"PATH": f"{fake}:{base_path}"}).stdout.strip() == "cpu"


def test_bad_arguments(tmp_path: Path) -> None:
    assert run("--role", "toaster", "--prefix", str(tmp_path)).returncode == 2
    missing = run("--role", "edge", "--config", str(tmp_path / "nope"), "--prefix", str(tmp_path))
    assert missing.returncode == 2 and "not a directory" in missing.stderr
