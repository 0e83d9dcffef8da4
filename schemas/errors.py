"""Exceptions raised by the contract layer, each carrying the facts an operator needs to act on it."""

from __future__ import annotations


class FedinspectError(Exception):
    """Base class of every fedinspect error."""


class ConfigError(FedinspectError):
    """A configuration file or environment override is invalid; the message names the source and the key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


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
