"""Probes and metrics of the hub: ``/healthz`` and Prometheus ``/metrics``, read from its state at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from schemas.messages import RoundState

if TYPE_CHECKING:
    from hub.service import HubService


def router(service: HubService) -> APIRouter:
    routes = APIRouter()
    metrics = CollectorRegistry()
    metrics.register(_HubCollector(service))

    @routes.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "broker_connected": service.link.connected}

    @routes.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return routes


class _HubCollector:
    """Reads the hub's state at scrape time; nothing is counted twice or kept in globals."""

    def __init__(self, service: HubService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        rejections = CounterMetricFamily("fedinspect_hub_rejections", "Updates refused, by reason", labels=["reason"])
        for reason, count in service.rounds.rejection_counts().items():
            rejections.add_metric([reason], count)
        yield rejections
        chunks = CounterMetricFamily(
            "fedinspect_hub_transfer_rejections", "Chunks and artifacts refused, by reason", labels=["reason"]
        )
        for reason, count in service.inbox.rejections.items():
            chunks.add_metric([reason], count)
        yield chunks
        rounds = GaugeMetricFamily("fedinspect_hub_rounds", "Rounds by state", labels=["state"])
        counts: dict[str, int] = {state.value: 0 for state in RoundState}
        for body, *_ in service.rounds.all_rounds():
            counts[body.state.value] += 1
        for state, count in counts.items():
            rounds.add_metric([state], count)
        yield rounds
        versions = GaugeMetricFamily("fedinspect_hub_model_version", "Latest global version", labels=["model"])
        for name in service.registry.model_names():
            versions.add_metric([name], service.registry.latest_version(name) or 0)
        yield versions
        yield GaugeMetricFamily(
            "fedinspect_hub_edges_online", "Edges whose last status is online", value=service.edges.online_count()
        )
        stats = service.link.stats
        for name in (
            "connects",
            "disconnects",
            "messages_received",
            "messages_invalid",
            "handler_errors",
            "publishes",
            "publishes_denied",
            "publishes_oversize",
        ):
            yield CounterMetricFamily(
                f"fedinspect_mqtt_{name}", f"MQTT link: {name.replace('_', ' ')}", value=getattr(stats, name)
            )
        yield GaugeMetricFamily(
            "fedinspect_mqtt_connected", "1 while connected to the broker", value=1 if service.link.connected else 0
        )
