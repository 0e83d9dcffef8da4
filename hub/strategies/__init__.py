"""Aggregation strategies, one file each, chosen by name from hub.yaml's ``aggregation`` section.

The names are the contract's ``StrategyName`` (what a config may say); each class declares the one it implements.
"""

from __future__ import annotations

from typing import Any

from hub.strategies.base import FEDBN_PATTERNS, ClientUpdate, Strategy, Weights
from hub.strategies.fedadagrad import FedAdagrad
from hub.strategies.fedadam import FedAdam
from hub.strategies.fedavg import FedAvg
from hub.strategies.fedavgm import FedAvgM
from hub.strategies.fedmedian import FedMedian
from hub.strategies.fedprox import FedProx
from hub.strategies.fedyogi import FedYogi
from hub.strategies.krum import Krum, MultiKrum
from hub.strategies.trimmed_mean import TrimmedMean
from schemas.config import HubConfig, StrategyConfig, StrategyName
from schemas.errors import ConfigError

STRATEGIES: dict[StrategyName, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, FedMedian, TrimmedMean, Krum, MultiKrum)
}

__all__ = ["FEDBN_PATTERNS", "STRATEGIES", "ClientUpdate", "Strategy", "Weights", "make_strategy"]


def make_strategy(config: StrategyConfig, *, where: str = "aggregation") -> Strategy:
    """Build the configured strategy; ConfigError names the bad ``{where}.params`` key or value."""
    cls = STRATEGIES[config.strategy]
    keep_local = tuple(FEDBN_PATTERNS if config.fedbn else ()) + tuple(config.keep_local)
    params: dict[str, Any] = dict(config.params)
    try:
        return cls(keep_local=keep_local, **params)
    except TypeError as exc:
        raise ConfigError([f"{where}.params: {config.strategy.value} does not take these parameters: {exc}"]) from None
    except ValueError as exc:
        raise ConfigError([f"{where}.params: {exc}"]) from None


def line_strategies(config: HubConfig) -> dict[str, Strategy]:
    """Each planned model line's strategy: its round plan's own aggregation, else the hub's. One instance per line,
    since server optimizers keep their moments per line."""
    return {
        plan.model_name: make_strategy(plan.aggregation, where=f"rounds[{index}].aggregation")
        if plan.aggregation is not None
        else make_strategy(config.aggregation)
        for index, plan in enumerate(config.rounds)
    }
