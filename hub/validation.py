"""Checks every update passes before it may be aggregated, each refusal with its reason.

Per update (``check_update``): the same tensor names, shapes and dtypes as the base global, all values finite,
and the L2 norm within ``max_update_norm``. Within a round (``norm_outliers``): updates whose norm is far above
the others by the modified z-score of Iglewicz and Hoaglin, 0.6745 (x - median) / MAD, are refused too: a
scaled (boosted) update stands out even when no absolute bound was configured. An outlier must also be at least
MIN_OUTLIER_RATIO times the median norm: with only a few updates the MAD is tiny and honest plants with different
data differ by a few percent (measured: norms 111.2, 111.9 and 117.7 gave the last a z-score of 5.6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from schemas.errors import RejectedError, RejectReason

MIN_UPDATES_FOR_Z = 3
MIN_OUTLIER_RATIO = 1.5


def update_norm(delta: Mapping[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in delta.values()))


def check_update(
    base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], *, max_norm: float | None = None
) -> float:
    """Raise RejectedError unless ``delta`` fits ``base``; returns the update's L2 norm."""
    missing, extra = sorted(set(base) - set(delta)), sorted(set(delta) - set(base))
    if missing or extra:
        raise RejectedError(
            RejectReason.SHAPE_MISMATCH, f"tensor names differ from the base: missing {missing[:5]}, extra {extra[:5]}"
        )
    for key, reference in base.items():
        value = delta[key]
        if value.shape != reference.shape:
            raise RejectedError(
                RejectReason.SHAPE_MISMATCH, f"{key}: shape {value.shape} but the base has {reference.shape}"
            )
        if value.dtype != reference.dtype:
            raise RejectedError(
                RejectReason.SHAPE_MISMATCH, f"{key}: dtype {value.dtype} but the base has {reference.dtype}"
            )
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise RejectedError(RejectReason.NON_FINITE, f"{key} contains NaN or infinite values")
    norm = update_norm(delta)
    if max_norm is not None and norm > max_norm:
        raise RejectedError(RejectReason.NORM_BOUND, f"update norm {norm:.4g} exceeds the bound {max_norm:.4g}")
    return norm


def norm_outliers(norms: Mapping[str, float], max_z: float) -> dict[str, float]:
    """Edge id -> modified z-score of updates whose norm is an outlier above the round's others."""
    if len(norms) < MIN_UPDATES_FOR_Z:
        return {}
    values = np.array(list(norms.values()))
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    floor = median * MIN_OUTLIER_RATIO + 1e-12
    if mad == 0:
        # More than half the norms are equal: the z-score is infinite for any norm above them.
        return {edge: math.inf for edge, norm in norms.items() if norm > floor}
    scores = {edge: 0.6745 * (norm - median) / mad for edge, norm in norms.items()}
    return {edge: z for edge, z in scores.items() if z > max_z and norms[edge] > floor}
