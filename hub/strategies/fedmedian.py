"""FedMedian (Yin et al. 2018): the coordinate-wise median of the deltas, unweighted; robust to a minority of
arbitrary updates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from hub.strategies.base import ClientUpdate, Strategy, Weights, stacked
from schemas.config import StrategyName


class FedMedian(Strategy):
    name = StrategyName.FEDMEDIAN

    def combine(self, keys: Sequence[str], updates: Iterable[ClientUpdate]) -> Weights:
        return {key: np.median(values, axis=0) for key, values in stacked(keys, list(updates)).items()}
