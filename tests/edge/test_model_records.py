"""The edge's records of each model line: installed versions read from the folders, a high-water mark that only
rises, and the served model (served-model behaviour across swaps is in test_swap.py)."""

from __future__ import annotations

from pathlib import Path

from edge.model_records import installed_versions, newest_installed, newest_seen, note_seen


def install(models: Path, name: str, version: str, *, complete: bool = True) -> None:
    folder = models / name / version
    folder.mkdir(parents=True)
    if complete:
        (folder / "manifest.json").write_text("{}")


def test_installed_versions_are_the_complete_version_folders_in_number_order(tmp_path: Path) -> None:
    assert installed_versions(tmp_path, "pcb") == [] and newest_installed(tmp_path, "pcb") is None
    for version in ("2", "10", "1"):
        install(tmp_path, "pcb", version)
    install(tmp_path, "pcb", ".incoming-t-9")  # an install in progress
    install(tmp_path, "pcb", "11", complete=False)  # not a bundle
    (tmp_path / "pcb" / "serving.json").write_text("{}")
    assert installed_versions(tmp_path, "pcb") == [1, 2, 10]
    assert newest_installed(tmp_path, "pcb") == 10
    assert installed_versions(tmp_path, "other") == []


def test_the_newest_seen_mark_starts_at_the_newest_installed_and_never_goes_down(tmp_path: Path) -> None:
    install(tmp_path, "pcb", "3")
    assert newest_seen(tmp_path, "pcb") == 3
    note_seen(tmp_path, "pcb", 5)
    note_seen(tmp_path, "pcb", 4)
    assert newest_seen(tmp_path, "pcb") == 5
    assert (tmp_path / "pcb" / "newest-seen").read_text() == "5"
    assert not list((tmp_path / "pcb").glob("*.tmp")), "written aside and renamed"
