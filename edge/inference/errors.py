"""Errors of the inference engine, each naming the model file or image it is about."""

from __future__ import annotations

from schemas.errors import FedinspectError


class ModelLoadError(FedinspectError):
    """A model file is missing, corrupt or not something this engine can serve."""


class ImageError(FedinspectError):
    """An image cannot be decoded or does not fit the model (empty, corrupt, wrong shape or type)."""
