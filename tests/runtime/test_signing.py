"""Ed25519 key files and manifest signatures: valid ones verify, every kind of forgery is refused by reason."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from runtime.signing import KeyFileError, KeyRing, SigningKey, generate_key_pair
from schemas.errors import RejectedError, RejectReason
from tests.schemas import samples


@pytest.fixture
def hub_key(tmp_path: Path) -> SigningKey:
    private, _ = generate_key_pair("hub", tmp_path / "keys")
    return SigningKey.load(private)


def test_key_files_and_modes(tmp_path: Path) -> None:
    private, public = generate_key_pair("edge-a", tmp_path)
    assert (private.name, public.name) == ("edge-a.key", "edge-a.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_key_pair("edge-a", tmp_path)
    with pytest.raises(KeyFileError, match="key id"):
        generate_key_pair("../evil", tmp_path)


def test_sign_and_verify(hub_key: SigningKey, tmp_path: Path) -> None:
    manifest = samples.model_manifest().model_copy(update={"signature": None})
    signed = hub_key.sign(manifest)
    assert signed.signature is not None and signed.signature.key_id == "hub"
    ring = KeyRing.from_directory(tmp_path / "keys")
    assert "hub" in ring and len(ring) == 1
    ring.verify(signed, expected_signer="hub")
    ring.verify(type(signed).model_validate_json(signed.model_dump_json()), expected_signer="hub")


def test_tampered_manifest_is_refused(hub_key: SigningKey, tmp_path: Path) -> None:
    signed = hub_key.sign(samples.model_manifest())
    tampered = signed.model_copy(update={"classes": ["open", "short", "mousebite", "spur", "copper", "other"]})
    with pytest.raises(RejectedError) as caught:
        KeyRing.from_directory(tmp_path / "keys").verify(tampered, expected_signer="hub")
    assert caught.value.reason == RejectReason.BAD_SIGNATURE


def test_unsigned_unknown_and_wrong_signer(hub_key: SigningKey, tmp_path: Path) -> None:
    ring = KeyRing.from_directory(tmp_path / "keys")
    unsigned = samples.update_manifest().model_copy(update={"signature": None})
    with pytest.raises(RejectedError) as caught:
        ring.verify(unsigned, expected_signer="edge-a")
    assert caught.value.reason == RejectReason.UNSIGNED

    rogue_private, _ = generate_key_pair("edge-a", tmp_path / "rogue")
    by_unenrolled = SigningKey.load(rogue_private).sign(unsigned)
    with pytest.raises(RejectedError) as caught:
        ring.verify(by_unenrolled, expected_signer="edge-a")
    assert caught.value.reason == RejectReason.UNKNOWN_KEY

    # An edge that signs with its own valid key but claims to be another edge.
    with pytest.raises(RejectedError) as caught:
        ring.verify(hub_key.sign(unsigned), expected_signer="edge-a")
    assert caught.value.reason == RejectReason.SIGNER_MISMATCH


def test_signature_by_another_key_with_the_same_id_is_refused(hub_key: SigningKey, tmp_path: Path) -> None:
    impostor_private, _ = generate_key_pair("hub", tmp_path / "impostor")
    forged = SigningKey.load(impostor_private).sign(samples.model_manifest())
    with pytest.raises(RejectedError) as caught:
        KeyRing.from_directory(tmp_path / "keys").verify(forged, expected_signer="hub")
    assert caught.value.reason == RejectReason.BAD_SIGNATURE


def test_bad_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        SigningKey.load(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        SigningKey.load(garbage)
    _, public = generate_key_pair("x", tmp_path)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        SigningKey.load(public)
