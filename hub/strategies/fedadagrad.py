"""FedAdagrad: v = v + d^2 (no momentum by default: beta_1 = 0)."""

from __future__ import annotations

import numpy as np

from hub.strategies.fedopt import FedOpt
from schemas.config import StrategyName


class FedAdagrad(FedOpt):
    name = StrategyName.FEDADAGRAD
    default_beta_1 = 0.0

    def second_moment(self, v: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.asarray(v + d * d)
