"""What the edge keeps on disk about each model line, in one place: the versions it has, the newest it has seen
signed, and the one it serves.

- Installed versions are the ``models/{name}/{version}`` folders themselves: an install unpacks into a staging
  folder and renames it into place whole, so a version folder is complete or absent, and the newest installed
  version is the highest folder that holds a manifest.
- ``models/{name}/newest-seen``: the high-water mark of versions seen signed by the hub (announced or installed);
  a version below it is neither fetched nor installed.
- ``models/{name}/serving.json``: the model the edge served last (written at every swap and rollback), which a
  restarted agent serves again instead of the older one its config names.

Every record is replaced atomically (written aside, fsynced, renamed).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from schemas.bundle import MANIFEST_FILE

log = logging.getLogger(__name__)

NEWEST_SEEN = "newest-seen"
SERVING_RECORD = "serving.json"


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def installed_versions(models_dir: Path, name: str) -> list[int]:
    """The versions of line ``name`` installed in ``models_dir``, oldest first."""
    try:
        folders = list((models_dir / name).iterdir())
    except OSError:
        return []
    return sorted(int(f.name) for f in folders if f.name.isdigit() and (f / MANIFEST_FILE).is_file())


def newest_installed(models_dir: Path, name: str) -> int | None:
    versions = installed_versions(models_dir, name)
    return versions[-1] if versions else None


def newest_seen(models_dir: Path, name: str) -> int | None:
    """The newest version of ``name`` seen signed by the hub; without a mark, the newest installed."""
    try:
        return int((models_dir / name / NEWEST_SEEN).read_text().strip())
    except (OSError, ValueError):
        return newest_installed(models_dir, name)


def note_seen(models_dir: Path, name: str, version: int) -> None:
    """Raise the high-water mark of ``name`` to ``version`` (never lowers it). Callers serialize calls."""
    newest = newest_seen(models_dir, name)
    if newest is None or version > newest:
        _replace(models_dir / name / NEWEST_SEEN, str(version))


def record_served(models_dir: Path, name: str, version: int, model_file: Path) -> None:
    """The edge now serves ``model_file`` (version ``version`` of ``name``)."""
    _replace(
        models_dir / name / SERVING_RECORD, json.dumps({"version": version, "model_file": str(model_file.resolve())})
    )


def served_model_file(models_dir: Path, name: str, configured_version: int) -> Path | None:
    """The model file the edge last served for line ``name``, if recorded, still there and newer than the
    configured version (a deployment that configures a newer model wins)."""
    record = models_dir / name / SERVING_RECORD
    try:
        served = json.loads(record.read_text(encoding="utf-8"))
        version, model_file = int(served["version"]), Path(served["model_file"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "serving record unreadable; using the configured model", extra={"path": str(record), "error": str(exc)}
        )
        return None
    if version <= configured_version or not model_file.is_file():
        return None
    return model_file
