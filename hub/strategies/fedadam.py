"""FedAdam: v = b2 v + (1 - b2) d^2."""

from __future__ import annotations

import numpy as np

from hub.strategies.fedopt import FedOpt
from schemas.config import StrategyName


class FedAdam(FedOpt):
    name = StrategyName.FEDADAM

    def second_moment(self, v: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.asarray(self.beta_2 * v + (1 - self.beta_2) * d * d)
