"""House rule 1: the contract imports without any ML framework (a hub without torch must speak the protocol)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "torchvision", "onnxruntime", "ultralytics", "tensorflow", "keras", "onnx", "cv2")


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {BLOCKED!r}
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked import of {{name}}")
                return None
        sys.meta_path.insert(0, Blocker())
        """
    ) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False)


def test_every_schemas_module_imports_with_ml_frameworks_blocked() -> None:
    result = run_blocked(
        """
        import pkgutil, importlib, schemas
        names = [m.name for m in pkgutil.walk_packages(schemas.__path__, "schemas.")]
        for name in names:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print(len(names), "modules")
        """
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) >= 7


def test_the_blocker_really_blocks() -> None:
    result = run_blocked("import torch\n")
    assert result.returncode != 0
    assert "blocked import of torch" in result.stderr


def test_cli_help_needs_no_ml_framework() -> None:
    result = run_blocked("from fedinspect.cli import cli\ncli(['--help'], standalone_mode=False)\n")
    assert result.returncode == 0, result.stderr
    assert "schemas" in result.stdout
