"""The `fedinspect` console command as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from fedinspect import __version__


def fedinspect(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("fedinspect", path=str(Path(sys.executable).parent))
    assert exe, "the fedinspect console script is not installed in this environment"
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False)


def test_help_lists_the_subcommands() -> None:
    result = fedinspect("--help")
    assert result.returncode == 0
    for command in ("version", "schemas", "config"):
        assert command in result.stdout


def test_version() -> None:
    result = fedinspect("version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"fedinspect {__version__} (wire contract v1)"


def test_schemas_export_writes_valid_schemas(tmp_path: Path) -> None:
    result = fedinspect("schemas", "export", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "out").glob("*.schema.json"))
    assert {f.name for f in files} >= {"status.schema.json", "command.schema.json", "model_manifest.schema.json"}
    assert len(result.stdout.splitlines()) == len(files) == 12
    for file in files:
        jsonschema.Draft202012Validator.check_schema(json.loads(file.read_text()))


@pytest.mark.parametrize(("text", "code"), [("edge_id: e1\n", 0), ("edge_id: e1\nbogus: 1\n", 2)])
def test_config_check(tmp_path: Path, text: str, code: int) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    result = fedinspect("config", "check", "edge", str(path))
    assert result.returncode == code
    if code:
        assert f"{path}: bogus: unknown key" in result.stderr
    else:
        assert "valid edge configuration" in result.stdout


def test_keys_new(tmp_path: Path) -> None:
    result = fedinspect("keys", "new", "edge-7", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "edge-7.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "edge-7.pub").exists()
    again = fedinspect("keys", "new", "edge-7", "--dir", str(tmp_path))
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr


def test_hub_migrate_upgrades_a_database_from_before_the_migrations_and_refuses_a_newer_one(tmp_path: Path) -> None:
    import sqlite3

    from hub.db import head_revision

    data = tmp_path / "hub"
    data.mkdir()
    shutil.copyfile(Path(__file__).resolve().parents[1] / "fixtures" / "pre_migration" / "hub.sqlite", data / "hub.db")
    config = tmp_path / "hub.yaml"
    config.write_text(json.dumps({"data_dir": str(data)}))

    first = fedinspect("hub", "migrate", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert f"upgraded from schema revision none (before migrations) to {head_revision()}" in first.stdout
    again = fedinspect("hub", "migrate", "--config", str(config))
    assert again.returncode == 0 and "the newest; nothing to do" in again.stdout

    with sqlite3.connect(data / "hub.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    for command in ("migrate", "run"):
        refused = fedinspect("hub", command, "--config", str(config))
        assert refused.returncode == 2, refused.stderr
        assert "is at schema revision '9999', newer than this fedinspect knows" in refused.stderr


def test_bench_fl_refuses_an_augmentation_key_or_value_the_edge_config_would_refuse(tmp_path: Path) -> None:
    result = fedinspect(
        "bench",
        "fl",
        "--reference",
        "--augment",
        "rotate9=false",
        "--augment",
        "brightness=2",
        "--work-dir",
        str(tmp_path),
    )
    assert result.returncode == 2
    assert "--augment" in result.stderr
    assert "rotate9\n  Extra inputs are not permitted" in result.stderr, "the unknown key, named"
    assert "brightness\n  Input should be less than or equal to 0.9" in result.stderr, "the value out of range"
    assert not (tmp_path / "results.json").exists(), "nothing ran"
