"""FedYogi: v = v - (1 - b2) d^2 sign(v - d^2); v grows more cautiously than Adam's."""

from __future__ import annotations

import numpy as np

from hub.strategies.fedopt import FedOpt
from schemas.config import StrategyName


class FedYogi(FedOpt):
    name = StrategyName.FEDYOGI

    def second_moment(self, v: np.ndarray, d: np.ndarray) -> np.ndarray:
        squared = d * d
        return np.asarray(v - (1 - self.beta_2) * squared * np.sign(v - squared))
