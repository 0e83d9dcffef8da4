"""The on-disk store of a round's updates, and FedAvg streaming from it in bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from hub.strategies.fedavg import FedAvg
from hub.update_store import UpdateStore


def test_put_load_replace_drop(tmp_path: Path) -> None:
    store = UpdateStore(tmp_path)
    delta: dict[str, np.ndarray] = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "steps": np.array(4, np.int64)}
    store.put("r1", "edge-b", 7, delta)
    store.put("r1", "edge-a", 3, delta)
    store.put("r1", "edge-a", 5, delta)  # the same edge again: replaces
    assert store.edges("r1") == ["edge-a", "edge-b"]
    loaded = store.load("r1", "edge-a")
    assert (loaded.edge_id, loaded.num_examples) == ("edge-a", 5)
    assert loaded.delta["steps"].shape == () and loaded.delta["steps"] == 4
    np.testing.assert_array_equal(loaded.delta["w"], delta["w"])
    assert [u.edge_id for u in store.iter_updates("r1")] == ["edge-a", "edge-b"]
    assert UpdateStore(tmp_path).edges("r1") == ["edge-a", "edge-b"]  # a restarted hub sees them
    store.drop_round("r1")
    assert store.edges("r1") == []


def test_streamed_fedavg_holds_about_two_models(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = {f"t{i}": np.zeros((64, 1024), np.float32) for i in range(8)}  # 2 MiB model
    model_bytes = sum(v.nbytes for v in base.values())
    store = UpdateStore(tmp_path)
    expected = {k: np.zeros_like(v, dtype=np.float64) for k, v in base.items()}
    total = 0
    for i in range(20):
        delta = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
        store.put("r1", f"e{i:02d}", i + 1, delta)
        for k in base:
            expected[k] += (i + 1) * delta[k]
        total += i + 1
    tracemalloc.start()
    result = FedAvg().aggregate(base, store.iter_updates("r1"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for k in base:
        np.testing.assert_allclose(result[k], expected[k] / total, atol=1e-5)
    assert peak < 2.5 * model_bytes, f"peak {peak / model_bytes:.2f} models for 20 updates"
