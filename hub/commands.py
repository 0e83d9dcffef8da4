"""Hub side of commands: send a command to an edge and follow its acknowledgements."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from datetime import datetime, timedelta

from runtime.mqtt import MqttLink, ReceivedMessage
from runtime.signing import SigningKey
from schemas.base import utc_now
from schemas.messages import AckOutcome, CommandAckBody, CommandAckMessage, CommandBody, CommandMessage

FINAL_OUTCOMES = frozenset(
    {AckOutcome.SUCCEEDED, AckOutcome.FAILED, AckOutcome.REJECTED, AckOutcome.EXPIRED, AckOutcome.DUPLICATE}
)


def expires_in(seconds: float) -> datetime:
    """An ``expires_at`` for a command that must run within ``seconds`` from now."""
    return utc_now() + timedelta(seconds=seconds)


class CommandSender:
    """Publishes commands on ``edge/{id}/cmd`` and collects the acks from ``edge/+/cmd/ack``."""

    def __init__(self, link: MqttLink, signing_key: SigningKey) -> None:
        self.link = link
        self.signing_key = signing_key
        self._acks: dict[str, list[CommandAckBody]] = {}
        self._cond = threading.Condition()
        link.subscribe(link.topics.all_command_acks(), self._on_ack, message_type=CommandAckMessage)

    def send(self, edge_id: str, body: CommandBody) -> CommandMessage:
        """Publish a command (QoS 1; it waits at the broker while the edge is offline, until it expires)."""
        command = self.signing_key.sign(CommandMessage(sender=self.link.node_id, to=edge_id, body=body))
        self.link.publish(self.link.topics.edge_command(edge_id), command).wait()
        return command

    def resend(self, edge_id: str, command: CommandMessage) -> None:
        """Publish the same command again (same id): the edge acknowledges it and does not run it twice."""
        self.link.publish(self.link.topics.edge_command(edge_id), command).wait()

    def acks(self, command_id: str) -> list[CommandAckBody]:
        with self._cond:
            return list(self._acks.get(command_id, []))

    def wait_for(
        self, command_id: str, outcomes: Collection[AckOutcome] = FINAL_OUTCOMES, *, timeout: float = 30.0
    ) -> CommandAckBody:
        """The first ack of ``command_id`` with one of ``outcomes``; TimeoutError if none comes in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ack in self._acks.get(command_id, []):
                    if ack.outcome in outcomes:
                        return ack
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {sorted(o.value for o in outcomes)} ack for command {command_id}")
                self._cond.wait(remaining)

    def _on_ack(self, message: ReceivedMessage[CommandAckMessage]) -> None:
        ack = message.payload.body
        with self._cond:
            self._acks.setdefault(ack.command_id, []).append(ack)
            self._cond.notify_all()
