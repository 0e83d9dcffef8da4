"""Each global version's score at each edge, over the versions of a model line: the hub models page's plot.

The hub never sees a plant's images, so the score of version v at an edge is what that edge measured on its own
holdout boards before it trained from v in a round (the update's ``metrics_before``); the newest version has no
point until a round trains from it. One line per edge, drawn as an inline SVG by the server (no script, no
library: the pages load nothing from outside the package).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hub.rounds import RoundUpdate
from schemas.messages import RoundAnnouncementBody

PREFERRED_METRICS = ("mAP50", "accuracy")
"""The metric a line is plotted by: the first of these its edges report, else the first reported, by name."""
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
WIDTH, HEIGHT = 640, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 44, 120, 12, 32
"""The right margin holds the legend (edge ids)."""


@dataclass(frozen=True)
class Point:
    version: int
    value: float
    x: float
    y: float


@dataclass(frozen=True)
class Series:
    edge_id: str
    colour: str
    points: list[Point]

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass(frozen=True)
class Chart:
    """What the template draws: the plot area, the axis ticks in pixels and one series per edge."""

    metric: str
    series: list[Series]
    x_ticks: list[tuple[float, int]]
    y_ticks: list[tuple[float, float]]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = MARGIN_LEFT
    right: int = WIDTH - MARGIN_RIGHT
    top: int = MARGIN_TOP
    bottom: int = HEIGHT - MARGIN_BOTTOM


def version_scores(
    model_name: str,
    rounds: Iterable[RoundAnnouncementBody],
    updates_of: Callable[[str], Sequence[RoundUpdate]],
) -> tuple[str, dict[str, dict[int, float]]] | None:
    """(metric, {edge id: {version: score}}) of ``model_name`` from its rounds' updates; None without any score.
    A score outside 0-1 or not finite (an edge's report is not trusted to be sane) is left out; an edge that
    reported one version twice (a restarted round) keeps the later figure."""
    reported: list[tuple[str, int, dict[str, float]]] = []
    for body in rounds:
        if body.model_name != model_name:
            continue
        for update in updates_of(body.round_id):
            reported.append((update.edge_id, body.base_version, update.metrics_before))
    names = {name for _, _, metrics in reported for name in metrics}
    metric = next((name for name in PREFERRED_METRICS if name in names), min(names, default=None))
    if metric is None:
        return None
    scores: dict[str, dict[int, float]] = {}
    for edge_id, version, metrics in reported:
        value = metrics.get(metric)
        if value is not None and math.isfinite(value) and 0.0 <= value <= 1.0:
            scores.setdefault(edge_id, {})[version] = value
    return (metric, scores) if scores else None


def version_means(metric: str, scores: dict[str, dict[int, float]]) -> dict[int, str]:
    """Per version of ``version_scores``: "metric mean at N edges", the mean of its points on the plot."""
    means = {}
    for version in {v for points in scores.values() for v in points}:
        values = [points[version] for points in scores.values() if version in points]
        edges = f"{len(values)} edge{'s' if len(values) > 1 else ''}"
        means[version] = f"{metric} {sum(values) / len(values):.3f} at {edges}"
    return means


def chart(metric: str, scores: dict[str, dict[int, float]]) -> Chart:
    """The plot of ``version_scores``: versions across (every version between the first and last scored), the
    score up from 0 to 1, edges in name order with a colour each (cycling past eight)."""
    versions = sorted({version for points in scores.values() for version in points})
    first, last = versions[0], versions[-1]
    span = max(last - first, 1)
    right, bottom = WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM

    def x(version: int) -> float:
        if last == first:
            return (MARGIN_LEFT + right) / 2
        return MARGIN_LEFT + (version - first) / span * (right - MARGIN_LEFT)

    def y(value: float) -> float:
        return bottom - value * (bottom - MARGIN_TOP)

    step = max(1, math.ceil(span / 10))  # at most about ten version labels
    series = [
        Series(
            edge_id,
            COLOURS[index % len(COLOURS)],
            [Point(v, points[v], x(v), y(points[v])) for v in sorted(points)],
        )
        for index, (edge_id, points) in enumerate(sorted(scores.items()))
    ]
    return Chart(
        metric=metric,
        series=series,
        x_ticks=[(x(v), v) for v in range(first, last + 1, step)],
        y_ticks=[(y(value), value) for value in (0.0, 0.25, 0.5, 0.75, 1.0)],
    )
