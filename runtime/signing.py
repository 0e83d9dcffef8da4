"""Ed25519 keys and manifest signatures.

Key files: ``{key_id}.key`` (PEM PKCS#8 private key, mode 0600) and ``{key_id}.pub`` (PEM public key). The hub
accepts updates only when signed by the enrolled key of the edge that sent them; an edge installs a model only
when it is signed by its pinned hub key. A signature covers ``manifest.canonical_bytes()``, which in turn
holds the SHA-256 of every file, so a signed manifest vouches for the whole artifact.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.base import IDENTIFIER_PATTERN
from schemas.errors import FedinspectError, RejectedError, RejectReason
from schemas.manifests import Signature, SignedManifest

log = logging.getLogger(__name__)
ManifestT = TypeVar("ManifestT", bound=SignedManifest)


class KeyFileError(FedinspectError):
    """A key file is missing, unreadable, of the wrong type, or would be overwritten."""


def _check_key_id(key_id: str) -> str:
    if not re.match(IDENTIFIER_PATTERN, key_id):
        raise KeyFileError(f"key id {key_id!r} is invalid: expected {IDENTIFIER_PATTERN}")
    return key_id


def write_secret_file(path: Path, data: bytes) -> None:
    """Write a secret created with mode 0600 from the start: never readable by others, not even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)  # O_CREAT's mode is masked by the umask; make it exact


def generate_key_pair(key_id: str, directory: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``{key_id}.key`` (0600) and ``{key_id}.pub`` into ``directory``; returns both paths."""
    _check_key_id(key_id)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{key_id}.key", directory / f"{key_id}.pub"
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise KeyFileError(f"{private_path} or {public_path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret_file(private_path, private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


class SigningKey:
    """A private key with its id, loaded from a ``.key`` file."""

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        self.key_id = _check_key_id(key_id)
        self._private_key = private_key

    @classmethod
    def load(cls, path: Path, key_id: str | None = None) -> SigningKey:
        """Load a private key; the key id defaults to the file name without ``.key``."""
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read private key {path}: {exc.strerror or exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("private key readable by others; chmod 600 it", extra={"path": str(path)})
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key_id or path.stem, key)

    def public_key(self) -> Ed25519PublicKey:
        return self._private_key.public_key()

    def sign(self, manifest: ManifestT) -> ManifestT:
        """Return a copy of ``manifest`` carrying this key's signature over its canonical form."""
        value = base64.b64encode(self._private_key.sign(manifest.canonical_bytes())).decode("ascii")
        return manifest.model_copy(update={"signature": Signature(key_id=self.key_id, value=value)})


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


class KeyRing:
    """Trusted public keys by key id: the hub's enrolled edges, or an edge's pinned hub key."""

    def __init__(self, keys: dict[str, Ed25519PublicKey] | None = None) -> None:
        self._keys = dict(keys or {})

    @classmethod
    def from_directory(cls, directory: Path) -> KeyRing:
        """Every ``{key_id}.pub`` in ``directory`` (a missing directory is an empty ring)."""
        paths = sorted(directory.glob("*.pub")) if directory.is_dir() else []
        return cls({_check_key_id(p.stem): load_public_key(p) for p in paths})

    def add(self, key_id: str, key: Ed25519PublicKey) -> None:
        self._keys[_check_key_id(key_id)] = key

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, manifest: SignedManifest, *, expected_signer: str) -> None:
        """Raise RejectedError unless ``manifest`` carries a valid signature by ``expected_signer``'s key."""
        signature = manifest.signature
        if signature is None:
            raise RejectedError(RejectReason.UNSIGNED, f"{type(manifest).__name__} carries no signature")
        if signature.key_id != expected_signer:
            raise RejectedError(
                RejectReason.SIGNER_MISMATCH,
                f"signed by {signature.key_id!r} but must be signed by {expected_signer!r}",
            )
        key = self._keys.get(signature.key_id)
        if key is None:
            raise RejectedError(RejectReason.UNKNOWN_KEY, f"no trusted key for {signature.key_id!r} (not enrolled)")
        try:
            key.verify(base64.b64decode(signature.value, validate=True), manifest.canonical_bytes())
        except (InvalidSignature, ValueError):
            raise RejectedError(
                RejectReason.BAD_SIGNATURE, f"signature by {signature.key_id!r} does not match the manifest"
            ) from None
