"""Update validation: names, shapes, dtypes, finiteness, norm bound, and outliers within a round."""

from __future__ import annotations

import numpy as np
import pytest

from hub.validation import check_update, norm_outliers, update_norm
from schemas.errors import RejectedError, RejectReason

BASE: dict[str, np.ndarray] = {"w": np.zeros((2, 3), np.float32), "steps": np.array(1, np.int64)}


def delta(**changes: np.ndarray) -> dict[str, np.ndarray]:
    return {"w": np.ones((2, 3), np.float32), "steps": np.array(1, np.int64), **changes}


def reason(base: dict[str, np.ndarray], update: dict[str, np.ndarray], **kw: float) -> RejectReason:
    with pytest.raises(RejectedError) as caught:
        check_update(base, update, **kw)
    return caught.value.reason


def test_valid_update_returns_its_norm() -> None:
    assert check_update(BASE, delta()) == pytest.approx(np.sqrt(6 + 1))
    assert update_norm({"a": np.array([3.0, 4.0])}) == 5.0


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
    assert reason(BASE, delta(), max_norm=2.0) == RejectReason.NORM_BOUND
    assert check_update(BASE, delta(), max_norm=3.0) > 0


def test_scaled_update_is_an_outlier_in_its_round() -> None:
    norms = {"a": 1.00, "b": 1.05, "c": 0.97, "d": 1.02, "evil": 1000.0}
    assert set(norm_outliers(norms, max_z=3.5)) == {"evil"}
    assert norm_outliers({"a": 1.0, "b": 1.1, "c": 0.9, "d": 1.05}, max_z=3.5) == {}
    assert norm_outliers({"a": 1.0, "evil": 1000.0}, max_z=3.5) == {}  # too few updates to judge
    assert set(norm_outliers({"a": 1.0, "b": 1.0, "c": 1.0, "evil": 5.0}, max_z=3.5)) == {"evil"}  # MAD = 0
    # three honest plants with different data (measured in the demo): a tiny MAD, but no update is out of scale
    assert norm_outliers({"a": 111.9, "b": 111.2, "c": 117.7}, max_z=3.5) == {}
    assert set(norm_outliers({"a": 111.9, "b": 111.2, "evil": 500.0}, max_z=3.5)) == {"evil"}
