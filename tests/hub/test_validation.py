"""Update validation: names, shapes, dtypes, finiteness, the refusal bounds, and clipping within a round."""

from __future__ import annotations

import numpy as np
import pytest

from hub.validation import NormPolicy, check_update, non_finite_tensors, update_norm
from schemas.errors import RejectedError, RejectReason

BASE: dict[str, np.ndarray] = {"w": np.zeros((2, 3), np.float32), "steps": np.array(1, np.int64)}


def delta(**changes: np.ndarray) -> dict[str, np.ndarray]:
    return {"w": np.ones((2, 3), np.float32), "steps": np.array(1, np.int64), **changes}


def reason(base: dict[str, np.ndarray], update: dict[str, np.ndarray], **kw: tuple[float, str]) -> RejectReason:
    with pytest.raises(RejectedError) as caught:
        check_update(base, update, **kw)
    return caught.value.reason


def test_valid_update_returns_its_norm_over_float_tensors() -> None:
    # the integer step counter says how much data a plant has, not how far its weights moved: not counted
    assert check_update(BASE, delta()) == pytest.approx(np.sqrt(6))
    assert update_norm({"a": np.array([3.0, 4.0]), "n": np.array(1000, np.int64)}) == 5.0


def test_structure_must_match_the_base() -> None:
    assert reason(BASE, {"w": np.ones((2, 3), np.float32)}) == RejectReason.SHAPE_MISMATCH
    assert reason(BASE, delta(extra=np.ones(1, np.float32))) == RejectReason.SHAPE_MISMATCH
    assert reason(BASE, delta(w=np.ones((3, 2), np.float32))) == RejectReason.SHAPE_MISMATCH
    assert reason(BASE, delta(w=np.ones((2, 3), np.float64))) == RejectReason.SHAPE_MISMATCH


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    values = np.ones((2, 3), np.float32)
    values[1, 2] = bad
    assert reason(BASE, delta(w=values)) == RejectReason.NON_FINITE


def test_norm_bound() -> None:
    assert reason(BASE, delta(), bound=(2.0, "a test cap")) == RejectReason.NORM_BOUND
    assert check_update(BASE, delta(), bound=(3.0, "a test cap")) > 0


def test_finite_values_whose_norm_overflows_are_refused() -> None:
    # 3e38 squared fits in float64: without a bound such an update passes here (the base-relative cap refuses it)
    assert check_update(BASE, delta(w=np.full((2, 3), 3e38, np.float32))) == pytest.approx(3e38 * np.sqrt(6))
    huge = {"w": np.full((2, 3), 1e308), "steps": np.array(1, np.int64)}
    base = {"w": np.zeros((2, 3)), "steps": np.array(0, np.int64)}
    assert reason(base, huge) == RejectReason.NON_FINITE


def test_refusal_bound_is_the_tighter_of_relative_and_absolute() -> None:
    policy = NormPolicy(max_relative_norm=10.0, max_update_norm=None)
    assert policy.refusal_bound(2.0) == (20.0, "10 x the base model's norm 2")
    assert policy.refusal_bound(0.0) is None  # an all-zero base has no scale to be relative to
    both = NormPolicy(max_relative_norm=10.0, max_update_norm=5.0)
    assert both.refusal_bound(2.0) == (5.0, "aggregation.max_update_norm")
    assert both.refusal_bound(0.1) == (1.0, "10 x the base model's norm 0.1")
    assert NormPolicy(max_relative_norm=None).refusal_bound(2.0) is None
    with pytest.raises(ValueError, match="clip_factor"):
        NormPolicy(clip_factor=0.5)


def test_clipping_scales_only_what_is_above_the_median_times_the_factor() -> None:
    policy = NormPolicy(clip_factor=2.0)
    # three honest plants with different data, as measured in the demo: nobody is touched
    assert policy.clip_scales({"a": 111.9, "b": 111.2, "c": 117.7}) == {}
    # a boosted (or just very different) update is brought to 2 x the median, the others stay as they are
    assert policy.clip_scales({"a": 1.0, "b": 1.05, "c": 0.97, "d": 1.02, "big": 1000.0}) == {
        "big": pytest.approx(2 * 1.02 / 1000.0)
    }
    assert policy.clip_scales({"a": 1.0, "b": 1.0, "c": 1.0, "big": 5.0}) == {"big": pytest.approx(0.4)}
    assert policy.clip_bound({}) is None and policy.clip_scales({}) == {}
    assert NormPolicy(clip_factor=None).clip_scales({"a": 1.0, "b": 1.0, "big": 1e9}) == {}


def test_non_finite_tensors_names_the_float_tensors_with_nan_or_inf() -> None:
    weights: dict[str, np.ndarray] = {
        "ok": np.ones(2, np.float32),
        "inf": np.array([1.0, np.inf], np.float32),
        "n": np.array(3, np.int64),
    }
    assert non_finite_tensors(weights) == ["inf"]
