"""Synthetic model weights for the benchmarks: realistic shapes and value ranges, deterministic by seed."""

from __future__ import annotations

import numpy as np

YOLOV8N_PARAMS = 3_011_000
"""Parameter count of an Ultralytics yolov8n detector (nc=3); the benchmarks' default model size."""


def synthetic_state_dict(total_bytes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Conv layers with BatchNorm buffers, He-initialised, until about ``total_bytes`` of fp32."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    channels, layer, size = 16, 0, 0
    while size < total_bytes:
        out_c = min(channels * 2, 256)
        # Scale in float64, then cast: float32 * np.float64 would promote the whole tensor to float64.
        weight = (rng.standard_normal((out_c, channels, 3, 3)) * np.sqrt(2 / (channels * 9))).astype(np.float32)
        tensors[f"layer{layer}.conv.weight"] = weight
        tensors[f"layer{layer}.bn.weight"] = np.ones(out_c, np.float32)
        tensors[f"layer{layer}.bn.bias"] = np.zeros(out_c, np.float32)
        tensors[f"layer{layer}.bn.running_var"] = rng.uniform(0.5, 2.0, out_c).astype(np.float32)
        tensors[f"layer{layer}.bn.num_batches_tracked"] = np.array(1000, np.int64)
        size += weight.nbytes + 3 * out_c * 4
        channels, layer = out_c, layer + 1
    return tensors
