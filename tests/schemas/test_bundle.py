"""Bundle artifacts: deterministic packing, and unpacking that refuses anything but plain bounded files."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from schemas.bundle import MANIFEST_FILE, file_digest, pack_bundle, unpack_bundle, verify_files
from schemas.errors import RejectedError, RejectReason


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "manifest.json").write_text('{"name": "m"}')
    (src / "model.onnx").write_bytes(bytes(range(256)) * 100)
    return {"manifest.json": src / "manifest.json", "model.onnx": src / "model.onnx"}


def test_pack_unpack_round_trip_and_determinism(files: dict[str, Path], tmp_path: Path) -> None:
    first = pack_bundle(files, tmp_path / "a.tar")
    second = pack_bundle(files, tmp_path / "b.tar")
    assert first == second  # same files, same artifact hash
    out = unpack_bundle(tmp_path / "a.tar", tmp_path / "out", max_bytes=1_000_000)
    assert set(out) == {"manifest.json", "model.onnx"}
    assert out["model.onnx"].read_bytes() == files["model.onnx"].read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert tar.getnames()[0] == MANIFEST_FILE


def test_verify_files(files: dict[str, Path]) -> None:
    expected = {"model.onnx": file_digest(files["model.onnx"])}
    verify_files(expected, files)
    files["model.onnx"].write_bytes(b"tampered")
    with pytest.raises(RejectedError) as caught:
        verify_files(expected, files)
    assert caught.value.reason == RejectReason.HASH_MISMATCH
    with pytest.raises(RejectedError, match="differ"):
        verify_files({**expected, "weights.safetensors": expected["model.onnx"]}, files)


def _tar_with(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("members", "reason", "match"),
    [
        ([(_file("../escape"), b"x")], RejectReason.MALFORMED, "not allowed"),
        ([(_file("/etc/passwd"), b"x")], RejectReason.MALFORMED, "not allowed"),
        ([(_link("manifest.json", "/etc/shadow"), b"")], RejectReason.MALFORMED, "not a regular file"),
        ([(_file("manifest.json"), b"1"), (_file("manifest.json"), b"2")], RejectReason.MALFORMED, "twice"),
        ([(_file("model.onnx"), b"x")], RejectReason.MALFORMED, "no manifest.json"),
        ([(_file("manifest.json"), b"x" * 2000)], RejectReason.TOO_LARGE, "more than"),
    ],
    ids=["dotdot", "absolute", "symlink", "duplicate", "no-manifest", "too-large"],
)
def test_hostile_archives_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], reason: RejectReason, match: str
) -> None:
    with pytest.raises(RejectedError, match=match) as caught:
        unpack_bundle(_tar_with(tmp_path, *members), tmp_path / "out", max_bytes=1000)
    assert caught.value.reason == reason
    assert not (tmp_path / "escape").exists()


def test_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.tar"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(RejectedError) as caught:
        unpack_bundle(path, tmp_path / "out", max_bytes=10_000)
    assert caught.value.reason == RejectReason.MALFORMED
