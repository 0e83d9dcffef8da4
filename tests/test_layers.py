"""The layer rules of pyproject's ``[tool.importlinter]`` hold, and break on a deliberate violation: an edge module
importing the hub, a contract module importing the runtime (each planted in a copy of the packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "runtime", "edge", "hub", "exporters", "fedinspect")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(source_root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter with the project's contracts over the packages under ``source_root``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(REPO_ROOT / "pyproject.toml")],
        cwd=source_root,
        env={**os.environ, "PYTHONPATH": str(source_root)},  # ahead of the editable install's finder
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def copy_packages(target: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_the_project_keeps_every_layer_rule() -> None:
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        ("edge/buffer/samples.py", "import hub.rounds", "The edge agent and the hub never import each other BROKEN"),
        ("schemas/messages.py", "import runtime.mqtt", "The contract (schemas) imports no runtime"),
        ("hub/registry.py", "import fedinspect.cli", "The processes and the exporters never import the CLI package"),
    ],
)
def test_a_planted_import_across_the_layers_breaks_the_lint(
    tmp_path: Path, module: str, planted: str, broken: str
) -> None:
    root = copy_packages(tmp_path)
    path = root / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{planted}  # planted by the test\n", encoding="utf-8")
    result = lint_imports(root)
    assert result.returncode != 0, result.stdout
    assert broken in " ".join(result.stdout.split()), result.stdout
    assert "0 broken" not in result.stdout
