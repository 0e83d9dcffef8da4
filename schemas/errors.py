"""Exceptions raised by the contract layer, each carrying the facts an operator needs to act on it."""

from __future__ import annotations

import threading
from collections import Counter
from enum import StrEnum


class FedinspectError(Exception):
    """Base class of every fedinspect error."""


class ConfigError(FedinspectError):
    """A configuration file or environment override is invalid; the message names the source and the key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class ModelMetadataError(FedinspectError):
    """An ONNX model does not describe itself well enough to be served (missing or invalid metadata)."""


class LinkError(FedinspectError):
    """Base class of MQTT link errors."""


class LinkNotConnectedError(LinkError):
    """The link is not connected to the broker (and the operation cannot be queued)."""


class PayloadTooLargeError(LinkError):
    """A publish was refused locally because its payload exceeds the configured maximum."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        super().__init__(
            f"refused to publish {size} bytes on {topic!r}: over the configured broker.max_payload_bytes "
            f"of {limit} bytes (split it into chunks)"
        )


class PublishDeniedError(LinkError):
    """The broker answered a publish with a failure reason code (MQTT 5), e.g. 135 Not authorized."""

    def __init__(self, topic: str, reason_code: int, reason: str) -> None:
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason
        super().__init__(f"broker denied publish on {topic!r}: reason code {reason_code} ({reason})")


class PublishTimeoutError(LinkError):
    """No acknowledgement for a publish arrived in time; the client keeps it queued and may still deliver it."""

    def __init__(self, topic: str, timeout: float) -> None:
        self.topic = topic
        self.timeout = timeout
        super().__init__(
            f"no acknowledgement for publish on {topic!r} within {timeout:g} s; it stays queued in the client "
            "and is sent after reconnect (do not re-send it without de-duplication)"
        )


class RejectReason(StrEnum):
    """Why an artifact, chunk or command was refused; the label of the rejection counters."""

    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    SIGNER_MISMATCH = "signer_mismatch"
    MALFORMED = "malformed"
    CHUNK_CORRUPT = "chunk_corrupt"
    HASH_MISMATCH = "hash_mismatch"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    OVER_QUOTA = "over_quota"
    """A sender already holds its share of partial transfers or bytes at the receiver; retry once one finishes."""
    EXPIRED = "expired"
    STALE = "stale"
    SHAPE_MISMATCH = "shape_mismatch"
    NON_FINITE = "non_finite"
    NORM_BOUND = "norm_bound"
    OUTLIER = "outlier"


class RejectedError(FedinspectError):
    """Input from the network was refused; ``reason`` is the counter label, the message says what and why."""

    def __init__(self, reason: RejectReason, message: str, *, transfer_id: str | None = None) -> None:
        self.reason = reason
        self.detail = message
        """The message without the reason prefix, for wrapping it in a message of one's own."""
        self.transfer_id = transfer_id
        """The transfer the rejection ends, when it ends one (a whole-artifact hash mismatch)."""
        super().__init__(f"{reason.value}: {message}")


class RejectionCounter:
    """Thread-safe counts of rejections by reason, for logs, status messages and metrics."""

    def __init__(self) -> None:
        self._counts: Counter[RejectReason] = Counter()
        self._lock = threading.Lock()

    def add(self, reason: RejectReason) -> None:
        with self._lock:
            self._counts[reason] += 1

    def __getitem__(self, reason: RejectReason | str) -> int:
        with self._lock:
            return self._counts[RejectReason(reason)]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {reason.value: count for reason, count in self._counts.items()}
