"""Hub -> edge commands over the real broker: run once, replays acknowledged, expired and foreign ones refused."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.commands import CommandExecutor, CommandHandler
from edge.db import open_edge_database
from hub.commands import CommandSender, expires_in
from runtime.mqtt import MqttLink
from runtime.signing import KeyRing, SigningKey, generate_key_pair
from schemas.base import utc_now
from schemas.config import BrokerConfig
from schemas.messages import (
    AckOutcome,
    CommandBody,
    CommandMessage,
    PinModelCommand,
    ReportStatusCommand,
    Role,
    RollbackCommand,
    TrainNowCommand,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker


class Recorder:
    def __init__(self) -> None:
        self.calls: list[CommandBody] = []

    def train(self, body: CommandBody) -> dict[str, Any]:
        self.calls.append(body)
        return {"started": True}

    def rollback(self, body: CommandBody) -> dict[str, Any]:
        self.calls.append(body)
        raise RuntimeError("no earlier version installed")


@dataclass
class Setup:
    sender: CommandSender
    executor: CommandExecutor
    recorder: Recorder
    new_executor: Callable[[], CommandExecutor]  # another agent process over the same database


@pytest.fixture
def setup(
    broker_config: Callable[..., BrokerConfig], links: Callable[..., MqttLink], tmp_path: Path, closers: list[Any]
) -> Setup:
    config = broker_config()
    recorder = Recorder()
    handlers: dict[str, CommandHandler] = {"train_now": recorder.train, "rollback": recorder.rollback}
    private, _ = generate_key_pair("hub", tmp_path / "keys")

    def make_executor() -> CommandExecutor:
        link = links(config, Role.EDGE, "edge-c", start=False)
        executor = CommandExecutor(
            link, open_edge_database(tmp_path / "edge.db"), handlers, hub_keys=KeyRing.from_directory(tmp_path / "keys")
        )
        closers.append(executor)
        link.start()
        link.wait_connected(10)
        return executor

    hub_link = links(config, Role.HUB, "hub", start=False)
    sender = CommandSender(hub_link, SigningKey.load(private))
    hub_link.start()
    hub_link.wait_connected(10)
    return Setup(sender, make_executor(), recorder, make_executor)


def train_now() -> TrainNowCommand:
    return TrainNowCommand(action="train_now", model_name="det", expires_at=expires_in(60))


def test_command_runs_once_and_replays_are_acknowledged(setup: Setup) -> None:
    sender, recorder = setup.sender, setup.recorder
    command = sender.send("edge-c", train_now())
    done = sender.wait_for(command.id, {AckOutcome.SUCCEEDED})
    assert done.result == {"started": True}
    assert [a.outcome for a in sender.acks(command.id)] == [AckOutcome.ACCEPTED, AckOutcome.SUCCEEDED]

    sender.resend("edge-c", command)
    duplicate = sender.wait_for(command.id, {AckOutcome.DUPLICATE})
    assert duplicate.detail == "already succeeded"
    assert duplicate.result == {"started": True}
    assert len(recorder.calls) == 1


def test_replay_after_an_agent_restart_is_not_run_again(setup: Setup) -> None:
    sender, executor, recorder = setup.sender, setup.executor, setup.recorder
    command = sender.send("edge-c", train_now())
    sender.wait_for(command.id, {AckOutcome.SUCCEEDED})
    executor.close()
    executor.link.stop()
    setup.new_executor()
    sender.resend("edge-c", command)
    assert sender.wait_for(command.id, {AckOutcome.DUPLICATE}).detail == "already succeeded"
    assert len(recorder.calls) == 1


def test_expired_command_is_refused_and_counted(setup: Setup) -> None:
    sender, executor, recorder = setup.sender, setup.executor, setup.recorder
    stale = TrainNowCommand(action="train_now", model_name="det", expires_at=utc_now() - timedelta(seconds=1))
    command = sender.send("edge-c", stale)
    ack = sender.wait_for(command.id)
    assert ack.outcome == AckOutcome.EXPIRED
    assert recorder.calls == []
    assert executor.rejections["expired"] == 1


def test_failing_and_unsupported_commands(setup: Setup) -> None:
    sender, recorder = setup.sender, setup.recorder
    failed = sender.send("edge-c", RollbackCommand(action="rollback", model_name="det", expires_at=expires_in(60)))
    ack = sender.wait_for(failed.id)
    assert ack.outcome == AckOutcome.FAILED
    assert ack.detail == "RuntimeError: no earlier version installed"
    unsupported = sender.send(
        "edge-c", PinModelCommand(action="pin_model", model_name="det", version=1, expires_at=expires_in(60))
    )
    ack = sender.wait_for(unsupported.id)
    assert ack.outcome == AckOutcome.REJECTED
    assert "does not support 'pin_model'" in (ack.detail or "")
    assert [call.action for call in recorder.calls] == ["rollback"]  # run once; pin_model never


def test_commands_from_anyone_but_the_hub_are_refused(
    setup: Setup, links: Callable[..., MqttLink], broker_config: Callable[..., BrokerConfig]
) -> None:
    sender, executor, recorder = setup.sender, setup.executor, setup.recorder
    rogue = links(broker_config(), Role.EDGE, "edge-rogue")
    command = CommandMessage(
        sender="edge-rogue", body=ReportStatusCommand(action="report_status", expires_at=expires_in(60))
    )
    rogue.publish(rogue.topics.edge_command("edge-c"), command).wait()
    ack = sender.wait_for(command.id)
    assert ack.outcome == AckOutcome.REJECTED
    wait_until(lambda: executor.rejections["signer_mismatch"] == 1)
    assert recorder.calls == []


def test_unsigned_forged_altered_and_redirected_commands_are_refused(setup: Setup, tmp_path: Path) -> None:
    """The hub's sender name proves nothing: only the pinned hub key's signature over the command, addressed to
    this edge, makes it run (whoever can write to the topic: a broker, a leaked hub login)."""
    sender, executor, recorder = setup.sender, setup.executor, setup.recorder
    report = ReportStatusCommand(action="report_status", expires_at=expires_in(60))
    forger, _ = generate_key_pair("hub", tmp_path / "forger")  # a key named like the hub's, not the pinned one
    genuine = sender.signing_key.sign(CommandMessage(sender="hub", to="edge-c", body=train_now()))
    cases = {
        "unsigned": (CommandMessage(sender="hub", to="edge-c", body=report), "unsigned"),
        "forged": (
            SigningKey.load(forger).sign(CommandMessage(sender="hub", to="edge-c", body=report)),
            "bad_signature",
        ),
        # a genuine signature on a changed command (another action): the signature no longer matches
        "altered": (genuine.model_copy(update={"body": report}), "bad_signature"),
        # signed for edge-d, replayed to edge-c
        "redirected": (sender.signing_key.sign(CommandMessage(sender="hub", to="edge-d", body=report)), "malformed"),
    }
    for name, (command, reason) in cases.items():
        sender.link.publish(sender.link.topics.edge_command("edge-c"), command).wait()
        ack = sender.wait_for(command.id)
        assert ack.outcome == AckOutcome.REJECTED, name

        def counted(reason: str = reason) -> bool:
            return executor.rejections[reason] >= 1

        wait_until(counted, 10, f"{name} counted as {reason}")
    assert recorder.calls == []
    assert executor.rejections["unsigned"] == 1 and executor.rejections["bad_signature"] == 2


def test_a_command_that_outlives_the_command_log_is_refused(setup: Setup) -> None:
    """Its record would be pruned while it is still valid, and a replay after that would run it again."""
    sender, executor, recorder = setup.sender, setup.executor, setup.recorder
    lasting = TrainNowCommand(action="train_now", model_name="det", expires_at=utc_now() + timedelta(days=60))
    ack = sender.wait_for(sender.send("edge-c", lasting).id)
    assert ack.outcome == AckOutcome.REJECTED and "more than 30 days ahead" in (ack.detail or "")
    assert recorder.calls == [] and executor.rejections["malformed"] == 1


def test_prune_forgets_only_records_older_than_the_retention(setup: Setup) -> None:
    from sqlalchemy import text

    sender, executor = setup.sender, setup.executor
    old, recent = sender.send("edge-c", train_now()), sender.send("edge-c", train_now())
    for command in (old, recent):
        sender.wait_for(command.id, {AckOutcome.SUCCEEDED})
    with executor.engine.begin() as connection:
        connection.execute(
            text("UPDATE executed_commands SET received_at = :at WHERE id = :id"),
            {"at": utc_now() - timedelta(days=31), "id": old.id},
        )
    assert executor.prune() == 1
    with executor.engine.connect() as connection:
        kept = [row[0] for row in connection.execute(text("SELECT id FROM executed_commands"))]
    assert kept == [recent.id]
    sender.resend("edge-c", recent)  # still known: acknowledged, not run again
    assert sender.wait_for(recent.id, {AckOutcome.DUPLICATE}).detail == "already succeeded"
