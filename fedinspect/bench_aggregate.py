"""``fedinspect bench aggregate``: FedAvg of 10 and 100 YOLOv8n-size updates, ours vs Flower's ``aggregate``.

Same arrays, same process, one run:
- time: our FedAvg (hub.strategies.FedAvg.aggregate, new global included) vs
  ``flwr.server.strategy.aggregate.aggregate`` on the identical in-memory updates (median of repeats);
- peak memory (tracemalloc, which sees numpy's allocations) beyond the inputs, in units of one model: ours when
  the hub streams the round's updates from its UpdateStore on disk, ours and Flower's on in-memory updates.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedinspect.benchdata import YOLOV8N_PARAMS, synthetic_state_dict
from hub.strategies.base import ClientUpdate
from hub.strategies.fedavg import FedAvg
from hub.update_store import UpdateStore


def _peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def _timed(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_aggregate_bench(
    counts: tuple[int, ...] = (10, 100), repeat: int = 3, echo: Callable[[str], None] = print
) -> dict[int, tuple[float, float]]:
    """Print the tables; return {updates: (time ratio ours/Flower, streamed peak in models)}."""
    try:
        from flwr.server.strategy.aggregate import aggregate as flower_aggregate
    except ImportError:
        raise ImportError("flwr is not installed: pip install -e '.[bench]'") from None

    base = synthetic_state_dict(YOLOV8N_PARAMS * 4)
    keys = list(base)
    model_bytes = sum(v.nbytes for v in base.values())
    float_keys = [k for k in keys if base[k].dtype.kind == "f"]
    echo(
        f"model: {len(keys)} tensors, {sum(base[k].size for k in float_keys) / 1e6:.2f} M float parameters, "
        f"{model_bytes / 1e6:.1f} MB"
    )
    echo(
        f"{'updates':>8}{'ours ms':>10}{'Flower ms':>11}{'time ratio':>12}"
        f"{'ours streamed':>15}{'ours in-mem':>13}{'Flower in-mem':>15}   (peak memory in models)"
    )
    rng = np.random.default_rng(1)
    results: dict[int, tuple[float, float]] = {}
    for count in counts:
        results[count] = _measure(count, base, float_keys, model_bytes, rng, repeat, flower_aggregate, echo)
    echo("\ntargets: time ratio <= 1.0; streamed peak <= 3 models at 100 updates (results agree with Flower's to 1e-5)")
    return results


def _measure(
    count: int,
    base: dict[str, np.ndarray],
    float_keys: list[str],
    model_bytes: int,
    rng: np.random.Generator,
    repeat: int,
    flower_aggregate: Callable[[Any], Any],
    echo: Callable[[str], None],
) -> tuple[float, float]:
    updates = [
        ClientUpdate(
            f"edge-{i}",
            int(rng.integers(10, 200)),
            {k: (0.01 * rng.standard_normal(base[k].shape)).astype(np.float32) for k in float_keys},
        )
        for i in range(count)
    ]
    float_base = {k: base[k] for k in float_keys}
    flower_input = [([u.delta[k] for k in float_keys], u.num_examples) for u in updates]
    strategy = FedAvg()

    ours = _timed(lambda: strategy.aggregate(float_base, updates), repeat)
    theirs = _timed(lambda: flower_aggregate(flower_input), repeat)
    check = flower_aggregate(flower_input)
    mine = strategy.aggregate({k: np.zeros_like(v) for k, v in float_base.items()}, updates)
    worst = max(float(np.abs(mine[k] - check[i]).max()) for i, k in enumerate(float_keys))
    if worst > 1e-5:
        raise AssertionError(f"our FedAvg differs from Flower's by {worst}")
    del check, mine

    _, ours_in_memory = _peak(lambda: strategy.aggregate(float_base, updates))
    _, flower_in_memory = _peak(lambda: flower_aggregate(flower_input))
    with tempfile.TemporaryDirectory(prefix="fedinspect-bench-") as tmp:
        store = UpdateStore(Path(tmp))
        for update in updates:
            store.put("r1", update.edge_id, update.num_examples, update.delta)
        _, streamed = _peak(lambda: strategy.aggregate(float_base, store.iter_updates("r1")))
    ratio = ours / theirs
    echo(
        f"{count:>8}{1e3 * ours:>10.0f}{1e3 * theirs:>11.0f}{ratio:>12.2f}{streamed / model_bytes:>15.2f}"
        f"{ours_in_memory / model_bytes:>13.2f}{flower_in_memory / model_bytes:>15.2f}"
    )
    return ratio, streamed / model_bytes
