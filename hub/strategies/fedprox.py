"""FedProx (Li et al. 2020): FedAvg aggregation, with a proximal term mu/2 ||w - w_global||^2 in local training.

The hub only carries ``mu`` in the round's training config; the edge trainer adds the term.
"""

from __future__ import annotations

from hub.strategies.fedavg import FedAvg
from schemas.config import StrategyName
from schemas.messages import TrainingConfig


class FedProx(FedAvg):
    name = StrategyName.FEDPROX

    def __init__(self, *, mu: float = 0.01, keep_local: tuple[str, ...] = ()) -> None:
        super().__init__(keep_local=keep_local)
        if mu <= 0:
            raise ValueError(f"mu must be > 0 for FedProx, got {mu}")
        self.mu = mu

    def configure_training(self, training: TrainingConfig) -> TrainingConfig:
        return training.model_copy(update={"proximal_mu": self.mu})
