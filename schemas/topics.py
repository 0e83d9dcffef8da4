"""The MQTT topic tree of the wire contract (v1). No topic string is built anywhere else.

Layout under a configurable prefix (default ``fedinspect/v1``)::

    edge/{edge_id}/status                  edge -> all     retained birth / last will
    edge/{edge_id}/events                  edge -> hub     inspection results
    edge/{edge_id}/cmd                     hub  -> edge    commands
    edge/{edge_id}/cmd/ack                 edge -> hub     command acknowledgements
    edge/{edge_id}/update/{transfer_id}    edge -> hub     chunks of a signed model update
    edge/{edge_id}/update/{transfer_id}/status  hub -> edge  receiver progress / missing chunks / verdict
    edge/{edge_id}/fetch                   edge -> hub     requests for chunks of a model artifact
    model/{model_name}/announce            hub  -> all     retained signed manifest of the current global model
    model/{model_name}/{version}/chunk     hub  -> edges   chunks of a model artifact
    round/{model_name}                     hub  -> edges   retained open round
    hub/status                             hub  -> all     retained birth / last will

An edge's broker credentials allow writing only under ``edge/{its id}/``; only the hub writes ``model/``,
``round/`` and ``hub/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.base import IDENTIFIER_PATTERN

DEFAULT_TOPIC_PREFIX = "fedinspect/v1"

_LEVEL = re.compile(IDENTIFIER_PATTERN)
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def validate_topic_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid topic prefix (levels without wildcards), else raise ValueError."""
    if not _PREFIX.match(prefix):
        raise ValueError(
            f"topic prefix {prefix!r} is invalid: use '/'-separated levels of letters, digits, '_', '-', '.' "
            "with no wildcards and no leading or trailing '/'"
        )
    return prefix


def _level(kind: str, value: str) -> str:
    if not _LEVEL.match(value):
        raise ValueError(f"{kind} {value!r} cannot be a topic level: expected {IDENTIFIER_PATTERN}")
    return value


@dataclass(frozen=True)
class TopicTree:
    """Builds every topic and subscription filter of the contract under one prefix."""

    prefix: str = DEFAULT_TOPIC_PREFIX

    def __post_init__(self) -> None:
        validate_topic_prefix(self.prefix)

    def _join(self, *levels: str) -> str:
        return "/".join((self.prefix, *levels))

    # edge -> ...
    def edge_status(self, edge_id: str) -> str:
        return self._join("edge", _level("edge id", edge_id), "status")

    def edge_events(self, edge_id: str) -> str:
        return self._join("edge", _level("edge id", edge_id), "events")

    def edge_images(self, edge_id: str) -> str:
        """Raw image bytes for the edge to inspect (optional source; a camera client publishes here)."""
        return self._join("edge", _level("edge id", edge_id), "images")

    def edge_command(self, edge_id: str) -> str:
        return self._join("edge", _level("edge id", edge_id), "cmd")

    def edge_command_ack(self, edge_id: str) -> str:
        return self._join("edge", _level("edge id", edge_id), "cmd", "ack")

    def edge_update(self, edge_id: str, transfer_id: str) -> str:
        return self._join("edge", _level("edge id", edge_id), "update", _level("transfer id", transfer_id))

    def edge_update_status(self, edge_id: str, transfer_id: str) -> str:
        return self._join("edge", _level("edge id", edge_id), "update", _level("transfer id", transfer_id), "status")

    def edge_fetch(self, edge_id: str) -> str:
        return self._join("edge", _level("edge id", edge_id), "fetch")

    def edge_model_chunk(self, edge_id: str, model_name: str, version: int) -> str:
        """hub -> one edge: the chunks of a model that this edge fetched (what it misses), not broadcast."""
        if version < 0:
            raise ValueError(f"model version must be >= 0, got {version}")
        return self._join(
            "edge", _level("edge id", edge_id), "model", _level("model name", model_name), str(version), "chunk"
        )

    def edge_model_chunks(self, edge_id: str) -> str:
        return self._join("edge", _level("edge id", edge_id), "model", "+", "+", "chunk")

    # hub -> ...
    def model_announce(self, model_name: str) -> str:
        return self._join("model", _level("model name", model_name), "announce")

    def model_chunk(self, model_name: str, version: int) -> str:
        if version < 0:
            raise ValueError(f"model version must be >= 0, got {version}")
        return self._join("model", _level("model name", model_name), str(version), "chunk")

    def round(self, model_name: str) -> str:
        return self._join("round", _level("model name", model_name))

    def hub_status(self) -> str:
        return self._join("hub", "status")

    # subscription filters
    def edge_subtree(self, edge_id: str) -> str:
        """Everything an edge may write: the ACL pattern of its credentials."""
        return self._join("edge", _level("edge id", edge_id), "#")

    def all_edge_status(self) -> str:
        return self._join("edge", "+", "status")

    def all_edge_events(self) -> str:
        return self._join("edge", "+", "events")

    def all_command_acks(self) -> str:
        return self._join("edge", "+", "cmd", "ack")

    def all_updates(self) -> str:
        return self._join("edge", "+", "update", "+")

    def edge_update_statuses(self, edge_id: str) -> str:
        return self._join("edge", _level("edge id", edge_id), "update", "+", "status")

    def all_fetches(self) -> str:
        return self._join("edge", "+", "fetch")

    def all_model_announcements(self) -> str:
        return self._join("model", "+", "announce")

    def all_model_chunks(self) -> str:
        return self._join("model", "+", "+", "chunk")

    def all_rounds(self) -> str:
        return self._join("round", "+")

    def everything(self) -> str:
        return self._join("#")

    def edge_id_of(self, topic: str) -> str:
        """Return the edge id of a topic under ``edge/{edge_id}/``; ValueError if the topic is not one."""
        levels = topic.split("/")
        prefix_levels = self.prefix.split("/")
        if (
            len(levels) < len(prefix_levels) + 3
            or levels[: len(prefix_levels)] != prefix_levels
            or levels[len(prefix_levels)] != "edge"
        ):
            raise ValueError(f"topic {topic!r} is not an edge topic under {self.prefix!r}")
        return _level("edge id", levels[len(prefix_levels) + 1])
