"""FedAvg (McMahan et al. 2017): the mean of the edges' deltas weighted by their number of examples."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hub.strategies.base import ClientUpdate, Strategy, Weights, weighted_mean
from schemas.config import StrategyName


class FedAvg(Strategy):
    name = StrategyName.FEDAVG

    def combine(self, keys: Sequence[str], updates: Iterable[ClientUpdate]) -> Weights:
        return weighted_mean(keys, updates)
