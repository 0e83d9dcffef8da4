"""The source formats an export starts from."""

from __future__ import annotations

from enum import StrEnum


class ExportFormat(StrEnum):
    """Which exporter handles a model (``fedinspect export <format> ...``)."""

    TORCH = "torch"
    """A PyTorch classifier: any nn.Module, or a torchvision mobilenet_v3_small / resnet18."""
    YOLO = "yolo"
    """An Ultralytics YOLO detector: a .pt checkpoint, or a model .yaml plus weights.safetensors."""
    KERAS = "keras"
    """A Keras classifier (.keras, .h5 or a SavedModel directory), converted in its own process."""
