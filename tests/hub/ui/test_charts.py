"""The models page's plot: each version's score at each edge, from the updates' ``metrics_before``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.rounds import RoundUpdate
from hub.ui.charts import (
    HEIGHT,
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    WIDTH,
    chart,
    version_means,
    version_scores,
)
from schemas.messages import RoundAnnouncementBody, RoundState, TrainingConfig

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _round(round_id: str, base_version: int, model: str = "pcb-detector") -> RoundAnnouncementBody:
    return RoundAnnouncementBody(
        round_id=round_id,
        model_name=model,
        base_version=base_version,
        state=RoundState.PUBLISHED,
        opened_at=T0,
        deadline=T0 + timedelta(minutes=5),
        min_updates=2,
        strategy="fedavg",
        training=TrainingConfig(),
    )


def _update(edge_id: str, before: dict[str, float], status: str = "accepted") -> RoundUpdate:
    return RoundUpdate(
        edge_id=edge_id,
        status=status,
        reason=None,
        num_examples=10,
        norm=1.0,
        metrics_before=before,
        metrics_after={},
        received_at=T0,
    )


def test_each_version_is_scored_at_each_edge_by_what_it_measured_before_training() -> None:
    rounds = [_round("r1", 0), _round("r2", 1), _round("r3", 2), _round("other", 0, model="pcb-classifier")]
    updates = {
        "r1": [_update("plant-a", {"mAP50": 0.1, "mAP50-95": 0.05}), _update("plant-b", {"mAP50": 0.2})],
        "r2": [_update("plant-a", {"mAP50": 0.6}), _update("plant-b", {"mAP50": float("nan")})],
        # a refused update still tells how the version did there; a figure past 1 is not sane
        "r3": [_update("plant-a", {"mAP50": 0.8}, status="rejected"), _update("plant-b", {"mAP50": 7.0})],
        "other": [_update("plant-a", {"accuracy": 0.9})],
    }
    metric, scores = version_scores("pcb-detector", rounds, updates.__getitem__) or ("", {})
    assert metric == "mAP50"
    assert scores == {"plant-a": {0: 0.1, 1: 0.6, 2: 0.8}, "plant-b": {0: 0.2}}
    assert version_scores("pcb-classifier", rounds, updates.__getitem__) == ("accuracy", {"plant-a": {0: 0.9}})
    assert version_scores("no-such-line", rounds, updates.__getitem__) is None


def test_the_plot_puts_versions_across_and_the_score_up() -> None:
    drawn = chart("mAP50", {"plant-b": {2: 0.5}, "plant-a": {0: 0.0, 2: 1.0}})
    assert [s.edge_id for s in drawn.series] == ["plant-a", "plant-b"]
    assert drawn.series[0].colour != drawn.series[1].colour
    a = drawn.series[0].points
    assert (a[0].x, a[0].y) == (MARGIN_LEFT, HEIGHT - MARGIN_BOTTOM)  # v0 at 0: bottom left
    assert (a[1].x, a[1].y) == (WIDTH - MARGIN_RIGHT, MARGIN_TOP)  # v2 at 1: top right
    assert drawn.series[1].points[0].y == pytest.approx((MARGIN_TOP + HEIGHT - MARGIN_BOTTOM) / 2)
    bottom_left = f"{MARGIN_LEFT:.1f},{HEIGHT - MARGIN_BOTTOM:.1f}"
    top_right = f"{WIDTH - MARGIN_RIGHT:.1f},{MARGIN_TOP:.1f}"
    assert drawn.series[0].polyline == f"{bottom_left} {top_right}"
    assert [v for _, v in drawn.x_ticks] == [0, 1, 2]
    many = chart("accuracy", {"e": {v: 0.5 for v in range(0, 41)}})
    assert len(many.x_ticks) <= 11 and many.x_ticks[0][1] == 0


def test_each_version_s_mean_is_over_the_edges_that_scored_it() -> None:
    scores = {"edge-a": {0: 0.1, 1: 0.5}, "edge-b": {0: 0.4}}
    assert version_means("accuracy", scores) == {0: "accuracy 0.250 at 2 edges", 1: "accuracy 0.500 at 1 edge"}
