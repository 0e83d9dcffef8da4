"""One artifact file per transfer: a bundle's files packed as an uncompressed POSIX tar, and unpacked safely.

A model bundle packs ``manifest.json``, ``model.onnx`` and ``weights.safetensors``; an update packs
``manifest.json`` and ``delta.safetensors``. Any tar tool can read the artifact. Unpacking reads member by
member (never ``extractall``): only regular files with plain names are accepted, each name once, within a size
limit, so a crafted artifact can neither escape the target directory nor fill the disk.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from schemas.base import validation_problems
from schemas.errors import RejectedError, RejectReason
from schemas.manifests import FileDigest, ModelManifest

MANIFEST_FILE = "manifest.json"
UPDATE_DELTA_FILE = "delta.safetensors"
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_READ_BLOCK = 1024 * 1024


def file_digest(path: Path) -> FileDigest:
    """Size and SHA-256 of a file, read in blocks (memory does not grow with the file)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
            size += len(block)
    return FileDigest(sha256=digest.hexdigest(), size_bytes=size)


def pack_bundle(files: Mapping[str, Path], artifact: Path) -> FileDigest:
    """Write ``files`` (name in the bundle -> source path) into ``artifact``; returns the artifact's digest."""
    for name in files:
        if not _NAME.match(name):
            raise ValueError(f"bundle file name {name!r} is not a plain file name")
    if MANIFEST_FILE not in files:
        raise ValueError(f"a bundle needs {MANIFEST_FILE}")
    artifact.parent.mkdir(parents=True, exist_ok=True)
    tmp = artifact.with_name(artifact.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        # manifest.json first, so a reader can look at it without scanning the whole archive.
        for name in sorted(files, key=lambda n: (n != MANIFEST_FILE, n)):
            source = files[name]
            info = tarfile.TarInfo(name)
            info.size = source.stat().st_size
            info.mode = 0o644
            info.mtime = 0  # deterministic: the same files give the same artifact hash
            with source.open("rb") as handle:
                tar.addfile(info, handle)
    tmp.replace(artifact)
    return file_digest(artifact)


def unpack_bundle(artifact: Path, destination: Path, *, max_bytes: int) -> dict[str, Path]:
    """Extract ``artifact`` into ``destination``; RejectedError for anything but plain, unique, bounded files."""
    destination.mkdir(parents=True, exist_ok=True)
    extracted: dict[str, Path] = {}
    total = 0
    try:
        with tarfile.open(artifact, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    raise RejectedError(RejectReason.MALFORMED, f"bundle member {member.name!r} is not a regular file")
                if not _NAME.match(member.name):
                    raise RejectedError(RejectReason.MALFORMED, f"bundle member name {member.name!r} is not allowed")
                if member.name in extracted:
                    raise RejectedError(RejectReason.MALFORMED, f"bundle member {member.name!r} appears twice")
                total += member.size
                if total > max_bytes:
                    raise RejectedError(RejectReason.TOO_LARGE, f"bundle unpacks to more than {max_bytes} bytes")
                source = tar.extractfile(member)
                assert source is not None  # regular files always have content
                target = destination / member.name
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, _READ_BLOCK)
                extracted[member.name] = target
    except tarfile.TarError as exc:
        raise RejectedError(RejectReason.MALFORMED, f"artifact is not a readable tar archive: {exc}") from None
    if MANIFEST_FILE not in extracted:
        raise RejectedError(RejectReason.MALFORMED, f"bundle has no {MANIFEST_FILE}")
    return extracted


def verify_files(expected: Mapping[str, FileDigest], files: Mapping[str, Path]) -> None:
    """RejectedError unless exactly the ``expected`` files (besides the manifest) exist with those digests."""
    present = set(files) - {MANIFEST_FILE}
    if present != set(expected):
        raise RejectedError(
            RejectReason.MALFORMED,
            f"bundle files {sorted(present)} differ from the manifest's {sorted(expected)}",
        )
    for name, digest in expected.items():
        actual = file_digest(files[name])
        if actual != digest:
            raise RejectedError(
                RejectReason.HASH_MISMATCH,
                f"{name}: sha256 {actual.sha256[:12]}... / {actual.size_bytes} bytes, manifest says "
                f"{digest.sha256[:12]}... / {digest.size_bytes} bytes",
            )


def read_model_manifest(files: Mapping[str, Path]) -> ModelManifest:
    try:
        return ModelManifest.model_validate_json(files[MANIFEST_FILE].read_bytes())
    except ValidationError as exc:
        raise RejectedError(
            RejectReason.MALFORMED, f"{MANIFEST_FILE} is not a valid model manifest: {validation_problems(exc)}"
        ) from None
