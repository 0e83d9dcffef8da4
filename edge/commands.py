"""Edge side of hub commands: run each command id at most once, refuse expired ones, acknowledge everything.

Only a command signed by the pinned hub key (``models.hub_keys_dir``) and addressed to this edge runs; the sender
field alone proves nothing, since any client that can write to the topic can claim to be the hub.

A command's id is recorded in SQLite (outcome "accepted") before its handler runs, so a replay (a broker
re-delivery, or the hub sending the same message again) is answered "duplicate" with the first outcome and is
never run twice, also across restarts of the agent. A crash while a handler runs leaves the command "accepted":
it is not re-run, and the hub sees no final outcome and can issue a new command.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from edge.tables import ExecutedCommand
from runtime.mqtt import MqttLink, ReceivedMessage
from runtime.signing import KeyRing
from schemas.base import utc_now
from schemas.errors import LinkError, RejectedError, RejectionCounter, RejectReason
from schemas.messages import AckOutcome, CommandAckBody, CommandAckMessage, CommandBody, CommandMessage

log = logging.getLogger(__name__)

COMMAND_LOG_RETENTION = timedelta(days=30)
"""How long the record of a command is kept (``prune``). A command whose expiry lies further ahead is refused: once
its record is pruned, a replay of it would run again; the hub's API sends commands that expire within 7 days."""
COMMAND_LOG_PRUNE_INTERVAL_S = 3600.0
"""How often the edge service prunes the command log."""

CommandHandler = Callable[[CommandBody], Mapping[str, Any] | None]
"""Runs one command; returns a JSON-able result for the ack, or raises to report "failed"."""


class CommandExecutor:
    """Subscribes to this edge's command topic and runs commands one at a time, in arrival order."""

    def __init__(
        self,
        link: MqttLink,
        engine: Engine,
        handlers: Mapping[str, CommandHandler],
        *,
        hub_keys: KeyRing,
        hub_id: str = "hub",
    ) -> None:
        self.link = link
        self.engine = engine
        self.handlers = dict(handlers)
        self.hub_keys = hub_keys
        self.hub_id = hub_id
        self.rejections = RejectionCounter()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commands")
        link.subscribe(link.topics.edge_command(link.node_id), self._on_command, message_type=CommandMessage)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def prune(self, older_than: timedelta = COMMAND_LOG_RETENTION) -> int:
        """Forget commands received before ``older_than`` ago (they have expired: none is accepted that expires
        later than ``COMMAND_LOG_RETENTION`` after it arrives); returns how many."""
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                delete(ExecutedCommand).where(ExecutedCommand.received_at < utc_now() - older_than)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def _ack(
        self,
        command: CommandMessage,
        outcome: AckOutcome,
        detail: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        ack = CommandAckMessage(
            sender=self.link.node_id,
            body=CommandAckBody(
                command_id=command.id,
                action=command.body.action,
                outcome=outcome,
                detail=detail,
                result=dict(result or {}),
            ),
        )
        try:
            self.link.publish(self.link.topics.edge_command_ack(self.link.node_id), ack)
        except LinkError as exc:
            log.warning("command ack not sent", extra={"command_id": command.id, "error": str(exc)})

    def _refuse(self, command: CommandMessage, reason: RejectReason, outcome: AckOutcome, detail: str) -> None:
        self.rejections.add(reason)
        log.warning(
            "command refused",
            extra={"command_id": command.id, "action": command.body.action, "reason": reason.value, "detail": detail},
        )
        self._ack(command, outcome, detail)

    def _on_command(self, message: ReceivedMessage[CommandMessage]) -> None:
        command = message.payload
        action = command.body.action
        if command.sender != self.hub_id:
            self._refuse(
                command,
                RejectReason.SIGNER_MISMATCH,
                AckOutcome.REJECTED,
                f"commands are accepted from {self.hub_id!r} only, not {command.sender!r}",
            )
            return
        try:  # before anything is recorded: a forged command must not even take its id
            self.hub_keys.verify(command, expected_signer=self.hub_id)
        except RejectedError as exc:
            self._refuse(command, exc.reason, AckOutcome.REJECTED, f"command signature: {exc}")
            return
        if command.body.expires_at > utc_now() + COMMAND_LOG_RETENTION:
            self._refuse(
                command,
                RejectReason.MALFORMED,
                AckOutcome.REJECTED,
                f"command expires at {command.body.expires_at.isoformat()}, more than "
                f"{COMMAND_LOG_RETENTION.days} days ahead: this edge keeps a command's record that long, and a replay "
                "after it is gone would run the command again",
            )
            return
        if command.to != self.link.node_id:
            self._refuse(
                command,
                RejectReason.MALFORMED,
                AckOutcome.REJECTED,
                f"command addressed to {command.to!r}, this edge is {self.link.node_id!r}",
            )
            return
        with Session(self.engine) as session, session.begin():
            previous = session.get(ExecutedCommand, command.id)
            if previous is not None:
                log.info("command replay acknowledged, not run", extra={"command_id": command.id, "action": action})
                self._ack(
                    command, AckOutcome.DUPLICATE, f"already {previous.outcome}", json.loads(previous.result_json)
                )
                return
            handler = self.handlers.get(action)
            if command.body.is_expired():
                outcome, detail = AckOutcome.EXPIRED, f"expired at {command.body.expires_at.isoformat()}"
            elif handler is None:
                outcome, detail = AckOutcome.REJECTED, f"this edge does not support {action!r}"
            else:
                outcome, detail = AckOutcome.ACCEPTED, None
            session.add(ExecutedCommand(id=command.id, action=action, outcome=outcome.value, detail=detail))
        if outcome == AckOutcome.EXPIRED:
            self._refuse(command, RejectReason.EXPIRED, outcome, detail or "")
        elif outcome == AckOutcome.REJECTED:
            self._refuse(command, RejectReason.MALFORMED, outcome, detail or "")
        else:
            assert handler is not None
            self._ack(command, AckOutcome.ACCEPTED)
            self._worker.submit(self._run, command, handler)

    def _run(self, command: CommandMessage, handler: CommandHandler) -> None:
        try:
            result = dict(handler(command.body) or {})
            outcome, detail = AckOutcome.SUCCEEDED, None
        except Exception as exc:
            log.exception("command failed", extra={"command_id": command.id, "action": command.body.action})
            result, outcome, detail = {}, AckOutcome.FAILED, f"{type(exc).__name__}: {exc}"
        with Session(self.engine) as session, session.begin():
            row = session.get(ExecutedCommand, command.id)
            if row is not None:
                row.outcome, row.detail, row.result_json = outcome.value, detail, json.dumps(result)
        log.info(
            "command done", extra={"command_id": command.id, "action": command.body.action, "outcome": outcome.value}
        )
        self._ack(command, outcome, detail, result)
