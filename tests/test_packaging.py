"""Every extra installs beside dev in one environment: pip resolves them all together (a dry run against the
package index, keeping what is installed), and the resolved set keeps make lint's tools working."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


EXTRAS = sorted(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
NO_DEPS = {
    line.split("==")[0].strip().lower()
    for line in (REPO_ROOT / "deploy" / "requirements-pretrained.txt").read_text().splitlines()
    if "==" in line and not line.lstrip().startswith("#")
}
"""Weight packages installed with --no-deps on purpose (their metadata pins torch 1.6): not checked."""


@pytest.mark.parametrize(
    "chosen",
    [[e for e in EXTRAS if e != "gpu"]] + [[e] for e in EXTRAS if e != "gpu"],
    ids=lambda chosen: "all" if len(chosen) > 1 else chosen[0],
)
def test_extras_install_into_the_test_environment_without_breaking_what_is_there(
    tmp_path: Path, chosen: list[str]
) -> None:
    """All extras at once (but gpu: it and cpu install the same onnxruntime module), and each on its own over the
    environment ``make venv`` made, as the README has a user add one (``pip install -e ".[bench]"``)."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
            str(report),
            "-e",
            f"{REPO_ROOT}[{','.join(chosen)}]",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"the extras {chosen} do not resolve:\n{result.stderr[-3000:]}"
    assert not conflicts_after(json.loads(report.read_text())["install"])


def conflicts_after(installs: list[dict[str, Any]]) -> list[str]:
    """Requirements broken in this environment once pip's resolved set is installed over it: pip checks the set it
    installs, not what stays installed beside it (how installing the bench extra once broke mypy)."""
    from importlib.metadata import distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    final: dict[str, tuple[str, list[str]]] = {}
    for dist in distributions():
        final[canonicalize_name(dist.metadata["Name"])] = (dist.version, list(dist.requires or []))
    for item in installs:
        meta = item["metadata"]
        final[canonicalize_name(meta["name"])] = (meta["version"], list(meta.get("requires_dist", [])))
    broken = []
    for name, (_, requires) in final.items():
        if name in NO_DEPS:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            have = final.get(canonicalize_name(requirement.name))
            if have is not None and not requirement.specifier.contains(have[0], prereleases=True):
                broken.append(f"{name} needs {requirement}, would have {have[0]}")
    return broken
