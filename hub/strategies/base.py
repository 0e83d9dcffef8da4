"""The aggregation strategy interface: a round's updates (deltas against the base global) -> new global weights.

Every strategy works on plain numpy arrays (no ML framework). Updates arrive as an iterable, so a strategy that
can stream (FedAvg) holds one update at a time and its memory stays O(model) whatever the number of edges;
robust strategies (median, trimmed mean, Krum) need all updates at once by nature.

Common rules:
- keys matching a ``keep_local`` pattern (FedBN: BatchNorm statistics and affine parameters) are not
  aggregated; the new global keeps the base values and each edge keeps its own;
- float tensors become ``base + combined delta`` in the base dtype; integer tensors (e.g.
  ``num_batches_tracked``) become ``base + round(combined delta)``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from schemas.config import StrategyName
from schemas.messages import TrainingConfig

Weights = dict[str, np.ndarray]

STATISTICS_PATTERN = re.compile(r"(^|\.)(running_mean|running_var|num_batches_tracked)$")
"""BatchNorm's running statistics: measured, not trained. Server optimizers (momentum, adaptive steps) average
them plainly: a velocity or an Adam step can push a variance below zero, and the model then outputs NaN."""


def is_statistic(key: str) -> bool:
    return STATISTICS_PATTERN.search(key) is not None


FEDBN_PATTERNS = (r"(^|\.)(bn|norm|batchnorm)\d*\.", r"running_(mean|var)$", r"num_batches_tracked$")
"""Default FedBN key patterns: BatchNorm layers named bn/norm (Ultralytics, most torchvision models)."""


@dataclass(frozen=True)
class ClientUpdate:
    """One edge's contribution to a round: its delta (local - base) and how many examples produced it.

    ``weight`` overrides num_examples as the averaging weight (buffered mode discounts stale updates with it).
    """

    edge_id: str
    num_examples: int
    delta: Mapping[str, np.ndarray]
    weight: float | None = None

    @property
    def effective_weight(self) -> float:
        return float(self.num_examples) if self.weight is None else self.weight


class Strategy(ABC):
    """Base of every aggregation strategy (Flower's Strategy, reduced to what a round needs)."""

    name: ClassVar[StrategyName]

    def __init__(self, *, keep_local: Sequence[str] = ()) -> None:
        self._local = [re.compile(pattern) for pattern in keep_local]

    def is_local(self, key: str) -> bool:
        return any(pattern.search(key) for pattern in self._local)

    def configure_training(self, training: TrainingConfig) -> TrainingConfig:
        """The training settings announced with a round (FedProx adds its proximal term here)."""
        return training

    def aggregate(self, base: Mapping[str, np.ndarray], updates: Iterable[ClientUpdate]) -> Weights:
        """New global weights from the base and the round's (validated) updates."""
        shared = [key for key in base if not self.is_local(key)]
        combined = self.combine(shared, _restricted(updates, shared))
        return self.apply(base, combined)

    @abstractmethod
    def combine(self, keys: Sequence[str], updates: Iterable[ClientUpdate]) -> Weights:
        """Combine the deltas of ``keys`` into one delta. ValueError if there are no updates."""

    @staticmethod
    def apply(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Weights:
        result: Weights = {}
        for key, value in base.items():
            step = delta.get(key)
            if step is None:
                result[key] = value.copy()
            elif np.issubdtype(value.dtype, np.floating):
                # An overflow to inf is not silenced by accident: the round refuses a global that is not finite.
                with np.errstate(over="ignore"):
                    result[key] = np.asarray(value + step, dtype=value.dtype)  # 0-d tensors stay arrays
                if key.endswith("running_var"):
                    # Quantized deltas (fp16, int8) of a variance near 0 can land a little below 0, and a
                    # negative variance makes the model's outputs NaN: a variance is at least 0.
                    np.maximum(result[key], 0, out=result[key])
            else:
                result[key] = np.asarray(value + np.rint(step), dtype=value.dtype)
        return result


def _restricted(updates: Iterable[ClientUpdate], keys: Sequence[str]) -> Iterator[ClientUpdate]:
    for update in updates:
        restricted = ClientUpdate(
            update.edge_id, update.num_examples, {key: update.delta[key] for key in keys}, update.weight
        )
        # Drop our references before the next update is loaded: streaming holds one update, not two.
        del update
        yield restricted
        del restricted


def stacked(keys: Sequence[str], updates: Sequence[ClientUpdate]) -> dict[str, np.ndarray]:
    """Each key's deltas stacked along a new first axis (float64), for coordinate-wise statistics."""
    if not updates:
        raise ValueError("no updates to aggregate")
    return {key: np.stack([np.asarray(u.delta[key], dtype=np.float64) for u in updates]) for key in keys}


def weighted_mean(keys: Sequence[str], updates: Iterable[ClientUpdate]) -> Weights:
    """Mean of the deltas weighted by num_examples (or weight), streaming: one update in memory at a time.

    A running mean (mean += w/W * (delta - mean)) keeps memory at one model and stays accurate for hundreds of
    edges, unlike summing n * delta and dividing at the end. Each step is computed in float64 (a scratch buffer
    the size of the largest tensor): ``delta - mean`` of two large float32 values of opposite sign would overflow
    in float32. The running mean itself is stored in float32: each step is a convex combination of finite float32
    values, so it stays finite, and storing it in float64 would double the hub's peak memory for little precision.
    """
    mean: Weights = {}
    scratch = np.empty(0, np.float64)  # one buffer, the size of the largest tensor, reused for every key
    total = 0.0
    for update in updates:
        weight = update.effective_weight
        if weight <= 0:
            raise ValueError(f"update from {update.edge_id!r} has weight {weight}")
        total += weight
        fraction = weight / total
        for key in keys:
            delta = update.delta[key]
            if key not in mean:
                mean[key] = np.array(delta, dtype=np.float32, copy=True)
                if mean[key].size > scratch.size:
                    scratch = np.empty(mean[key].size, np.float64)
                continue
            work = scratch[: mean[key].size].reshape(mean[key].shape)
            np.subtract(delta, mean[key], out=work, dtype=np.float64)
            work *= fraction
            work += mean[key]
            mean[key][...] = work
        del update, delta  # let the next update load into the memory this one held
    if total == 0.0:
        raise ValueError("no updates to aggregate")
    return mean
