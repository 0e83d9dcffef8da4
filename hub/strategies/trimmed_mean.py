"""Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the ``trim_fraction`` largest and smallest
values, average the rest (unweighted)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from hub.strategies.base import ClientUpdate, Strategy, Weights, stacked
from schemas.config import StrategyName


class TrimmedMean(Strategy):
    name = StrategyName.TRIMMED_MEAN

    def __init__(self, *, trim_fraction: float = 0.2, keep_local: tuple[str, ...] = ()) -> None:
        super().__init__(keep_local=keep_local)
        if not 0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        self.trim_fraction = trim_fraction

    def combine(self, keys: Sequence[str], updates: Iterable[ClientUpdate]) -> Weights:
        values = stacked(keys, list(updates))
        n = next(iter(values.values())).shape[0] if values else 0
        cut = math.floor(self.trim_fraction * n)
        if n - 2 * cut < 1:
            raise ValueError(f"trim_fraction {self.trim_fraction} leaves nothing of {n} updates")
        return {key: np.sort(stack, axis=0)[cut : n - cut].mean(axis=0) for key, stack in values.items()}
