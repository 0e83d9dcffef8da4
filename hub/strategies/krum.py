"""Krum and Multi-Krum (Blanchard et al. 2017).

Each update is scored by the sum of squared distances to its n - f - 2 nearest other updates, where f is the
number of Byzantine edges tolerated (needs n > 2f + 2). Krum takes the single best-scored delta; Multi-Krum
averages the ``keep`` best-scored ones, weighted by num_examples. Ties go to the earlier update.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from hub.strategies.base import ClientUpdate, Strategy, Weights, weighted_mean
from schemas.config import StrategyName


def krum_scores(updates: Sequence[ClientUpdate], keys: Sequence[str], byzantine: int) -> np.ndarray:
    n = len(updates)
    if n <= 2 * byzantine + 2:
        raise ValueError(f"Krum with f={byzantine} needs more than {2 * byzantine + 2} updates, got {n}")
    flat = np.stack(
        [np.concatenate([np.ravel(np.asarray(u.delta[k], dtype=np.float64)) for k in keys]) for u in updates]
    )
    squared_norms = np.einsum("ij,ij->i", flat, flat)
    distances = np.maximum(squared_norms[:, None] + squared_norms[None, :] - 2 * flat @ flat.T, 0.0)
    neighbours = n - byzantine - 2
    scores = np.empty(n)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[:neighbours].sum()
    return scores


class Krum(Strategy):
    name = StrategyName.KRUM

    def __init__(self, *, byzantine: int = 1, keep: int = 1, keep_local: tuple[str, ...] = ()) -> None:
        super().__init__(keep_local=keep_local)
        if byzantine < 0 or keep < 1:
            raise ValueError("byzantine must be >= 0 and keep >= 1")
        self.byzantine = byzantine
        self.keep = keep

    def combine(self, keys: Sequence[str], updates: Iterable[ClientUpdate]) -> Weights:
        pool = list(updates)
        scores = krum_scores(pool, keys, self.byzantine)
        chosen = np.argsort(scores, kind="stable")[: self.keep]
        self.selected = [pool[i].edge_id for i in chosen]
        return weighted_mean(keys, (pool[i] for i in chosen))


class MultiKrum(Krum):
    name = StrategyName.MULTIKRUM

    def __init__(self, *, byzantine: int = 1, keep: int = 3, keep_local: tuple[str, ...] = ()) -> None:
        super().__init__(byzantine=byzantine, keep=keep, keep_local=keep_local)
