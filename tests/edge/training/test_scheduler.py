"""When the edge trains: the gates of the training scheduler on a real buffer, with a real trainer when it starts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from edge.buffer import EdgeBuffer
from edge.db import open_edge_database
from edge.tables import TrainingRunRow
from edge.training.jobs import TrainingError
from edge.training.scheduler import TrainingScheduler
from edge.updates import UpdateUploader
from runtime.exchange import TransferOutbox
from runtime.mqtt import MqttLink, ReceivedMessage
from runtime.signing import SigningKey, generate_key_pair
from schemas.base import utc_now
from schemas.config import BrokerConfig, LocalTrainingConfig
from schemas.manifests import Task
from schemas.messages import (
    Role,
    RoundAnnouncementBody,
    RoundAnnouncementMessage,
    RoundState,
    TrainingConfig,
    TrainNowCommand,
)
from tests.support.buffers import import_labeled_blobs
from tests.support.waiting import wait_until

pytest.importorskip("cv2")  # the blob images are encoded with OpenCV
MODEL = "pcb-classifier"


@dataclass
class Clock:
    now: datetime = field(default_factory=utc_now)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Setup:
    buffer: EdgeBuffer
    clock: Clock
    load: list[float]
    make: Callable[..., TrainingScheduler]

    def label(self, count: int, seed: int = 0) -> None:
        import_labeled_blobs(self.buffer, count, seed=seed)


@pytest.fixture
def setup(tmp_path: Path, mobilenet_bundle: Path) -> Iterator[Setup]:
    engine = open_edge_database(tmp_path / "buffer.db")
    buffer = EdgeBuffer(engine, tmp_path / "images")
    private, _ = generate_key_pair("line-1", tmp_path / "keys")
    link = MqttLink(BrokerConfig(), role=Role.EDGE, node_id="line-1")
    outbox = TransferOutbox(link, engine, tmp_path / "spool")
    clock = Clock()
    load = [0.0]
    made: list[TrainingScheduler] = []

    def make(**settings: object) -> TrainingScheduler:
        scheduler = TrainingScheduler(
            LocalTrainingConfig.model_validate({"min_examples": 8, "min_new_labels": 10, **settings}),
            engine=engine,
            link=link,
            buffer=buffer,
            uploader=UpdateUploader(outbox, SigningKey.load(private), tmp_path / "work"),
            work_dir=tmp_path / "training",
            served=lambda: {MODEL: Task.CLASSIFY},
            base_bundle=lambda name, version: mobilenet_bundle if (name, version) == (MODEL, 0) else None,
            load=lambda _window: load[0],
            defect_class="defective",
            clock=clock,
        )
        made.append(scheduler)
        return scheduler

    yield Setup(buffer, clock, load, make)
    for scheduler in made:
        scheduler.close()


def announce(
    scheduler: TrainingScheduler, clock: Clock, *, sender: str = "hub", **changes: object
) -> RoundAnnouncementBody:
    fields: dict[str, object] = {
        "round_id": "r-1",
        "model_name": MODEL,
        "base_version": 0,
        "state": RoundState.OPEN,
        "opened_at": clock.now,
        "deadline": clock.now + timedelta(minutes=10),
        "min_updates": 1,
        "strategy": "fedavg",
        "training": TrainingConfig(local_epochs=1000, batch_size=16),  # runs until stopped
    }
    fields.update(changes)
    body = RoundAnnouncementBody.model_validate(fields)
    message = RoundAnnouncementMessage(sender=sender, body=body)
    scheduler._on_round(ReceivedMessage(topic="round/x", payload=message, retain=True, qos=1))
    return body


def test_a_round_is_not_trained_without_enough_labeled_samples_or_its_base(setup: Setup) -> None:
    scheduler = setup.make()
    body = announce(scheduler, setup.clock)
    assert scheduler.not_trainable(body) == "0 labeled training samples, 8 needed (training.min_examples)"
    assert scheduler.tick() is None
    assert "8 needed" in (scheduler.status().waiting or "")
    setup.label(30)
    other_base = body.model_copy(update={"base_version": 3})
    assert scheduler.not_trainable(other_base) == "the weights of pcb-classifier v3 are not installed here"
    other_line = body.model_copy(update={"model_name": "pcb-detector"})
    assert scheduler.not_trainable(other_line) == "this edge does not serve 'pcb-detector'"
    closed = body.model_copy(update={"state": RoundState.AGGREGATING})
    assert scheduler.not_trainable(closed) == "round r-1 is aggregating"
    setup.clock.now += timedelta(minutes=11)
    assert scheduler.not_trainable(body) == "round r-1 is past its deadline"


def test_a_busy_line_delays_round_training_until_half_the_round_has_passed(setup: Setup) -> None:
    setup.label(30)
    scheduler = setup.make()
    announce(scheduler, setup.clock)
    setup.load[0] = 5.0  # images per second, over the 1.0 threshold
    assert scheduler.tick() is None
    assert scheduler.status().waiting == "the line is busy"
    setup.clock.now += timedelta(minutes=5, seconds=1)
    run_id = scheduler.tick()
    assert run_id is not None
    assert scheduler.status().running_run == run_id
    # one run at a time, also for the hub's command
    with pytest.raises(TrainingError, match="already answered by training run"):
        scheduler.train_now(TrainNowCommand(action="train_now", model_name=MODEL, expires_at=setup.clock.now))
    scheduler.close()  # the agent stops: the trainer is stopped and the run recorded as interrupted
    [run] = scheduler.runs()
    assert (run["run_id"], run["state"], run["trigger"]) == (run_id, "interrupted", "round")
    assert "the agent is stopping" in run["detail"]


def test_the_schedule_waits_for_new_labels_and_an_idle_line(setup: Setup) -> None:
    setup.label(30)
    scheduler = setup.make(on_round=False, schedule_interval_s=60, min_new_labels=40)
    announce(scheduler, setup.clock)
    assert scheduler.tick() is None, "not due yet"
    setup.clock.now += timedelta(seconds=61)
    assert scheduler.tick() is None
    assert scheduler.status().waiting == f"{setup.buffer.labels.untrained_label_count()} new labels, 40 needed"
    setup.label(40, seed=1)
    setup.load[0] = 3.0
    assert scheduler.tick() is None
    assert scheduler.status().waiting == "the line is busy"
    setup.load[0] = 0.0
    run_id = scheduler.tick()
    assert run_id is not None
    scheduler.close()
    assert scheduler.runs()[0]["trigger"] == "schedule"


def test_cron_schedules_are_computed_in_utc(setup: Setup) -> None:
    setup.clock.now = datetime(2026, 11, 22, 1, 30, tzinfo=utc_now().tzinfo)
    scheduler = setup.make(on_round=False, schedule_cron="0 2 * * *")
    assert scheduler._next_due == datetime(2026, 11, 22, 2, 0, tzinfo=utc_now().tzinfo)


def test_train_now_names_what_is_missing(setup: Setup) -> None:
    scheduler = setup.make()
    command = TrainNowCommand(action="train_now", model_name=MODEL, expires_at=setup.clock.now)
    with pytest.raises(TrainingError, match="no round of 'pcb-classifier' is known here"):
        scheduler.train_now(command)
    announce(scheduler, setup.clock)
    with pytest.raises(TrainingError, match="round r-9 is not the current round"):
        scheduler.train_now(command.model_copy(update={"round_id": "r-9"}))
    with pytest.raises(TrainingError, match="0 labeled training samples"):
        scheduler.train_now(command)


def test_runs_a_crash_left_running_are_recorded_as_interrupted_and_trained_again(setup: Setup) -> None:
    setup.label(30)
    scheduler = setup.make()
    with Session(scheduler.engine) as session, session.begin():
        session.add(
            TrainingRunRow(
                run_id="t-old",
                model_name=MODEL,
                round_id="r-1",
                base_version=0,
                trigger="round",
                state="running",
                started_at=setup.clock.now,
            )
        )
    restarted = setup.make()
    [run] = restarted.runs()
    assert (run["state"], run["detail"]) == ("interrupted", "the agent stopped during training")
    body = announce(restarted, setup.clock)
    assert restarted.not_trainable(body) is None, "an interrupted run does not answer the round"


def test_round_announcements_from_anyone_but_the_hub_are_ignored(setup: Setup) -> None:
    setup.label(30)
    scheduler = setup.make()
    announce(scheduler, setup.clock, sender="line-2")
    assert scheduler.tick() is None and scheduler.status().waiting is None
    with pytest.raises(TrainingError, match="no round of 'pcb-classifier' is known here"):
        scheduler.train_now(TrainNowCommand(action="train_now", model_name=MODEL, expires_at=setup.clock.now))


def test_scheduled_runs_start_training_that_finishes(setup: Setup) -> None:
    setup.label(30)
    scheduler = setup.make()
    announce(scheduler, setup.clock, training=TrainingConfig(local_epochs=1, batch_size=16))
    run_id = scheduler.tick()
    assert run_id is not None
    wait_until(lambda: scheduler.status().running_run is None, 120, "training finished")
    [run] = scheduler.runs()
    assert run["state"] == "uploaded", run
    assert run["transfer_id"] and run["num_examples"] == len(setup.buffer.labels.labeled_samples(holdout=False))
    assert setup.buffer.labels.training_sample_count() == run["num_examples"]
    assert set(run["metrics"]) == {"before", "after"}
    assert setup.buffer.labels.untrained_label_count() == 0, "the labels used are marked trained"
