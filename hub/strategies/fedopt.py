"""Server-side adaptive optimizers over the averaged delta (Reddi et al. 2021, "Adaptive Federated Optimization").

The weighted-mean delta is treated as a pseudo-gradient: m = b1 m + (1 - b1) d, then a second moment v that
FedAdam, FedYogi and FedAdagrad update differently, then w = w + eta m / (sqrt(v) + tau). As in the paper and
in Flower, there is no bias correction. The moments persist across rounds (``state`` / ``load_state``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from hub.strategies.base import ClientUpdate, Strategy, Weights, is_statistic, weighted_mean


class FedOpt(Strategy):
    """Shared machinery; subclasses define the second-moment update."""

    default_beta_1 = 0.9

    def __init__(
        self,
        *,
        eta: float = 0.1,
        beta_1: float | None = None,
        beta_2: float = 0.99,
        tau: float = 1e-9,
        keep_local: tuple[str, ...] = (),
    ) -> None:
        super().__init__(keep_local=keep_local)
        self.eta = eta
        self.beta_1 = self.default_beta_1 if beta_1 is None else beta_1
        self.beta_2 = beta_2
        self.tau = tau
        for label, value, low, high in (("beta_1", self.beta_1, 0.0, 1.0), ("beta_2", beta_2, 0.0, 1.0)):
            if not low <= value < high:
                raise ValueError(f"{label} must be in [{low}, {high}), got {value}")
        if eta <= 0 or tau <= 0:
            raise ValueError("eta and tau must be > 0")
        self.m: Weights = {}
        self.v: Weights = {}

    def combine(self, keys: Sequence[str], updates: Iterable[ClientUpdate]) -> Weights:
        combined: Weights = {}
        for key, delta in weighted_mean(keys, updates).items():
            if is_statistic(key):
                combined[key] = delta  # running statistics are averaged, never stepped (see is_statistic)
                continue
            d = delta.astype(np.float64)
            m = self.m.get(key, np.zeros_like(d))
            v = self.v.get(key, np.zeros_like(d))
            self.m[key] = self.beta_1 * m + (1 - self.beta_1) * d
            self.v[key] = self.second_moment(v, d)
            combined[key] = self.eta * self.m[key] / (np.sqrt(self.v[key]) + self.tau)
        return combined

    @abstractmethod
    def second_moment(self, v: np.ndarray, d: np.ndarray) -> np.ndarray: ...

    def state(self) -> Weights:
        """Optimizer moments to persist with the model version (safetensors-ready names)."""
        return {f"m::{k}": v for k, v in self.m.items()} | {f"v::{k}": v for k, v in self.v.items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.m = {k[3:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("m::")}
        self.v = {k[3:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("v::")}
