"""When the edge trains: one run at a time, for the hub's open round, sent as a signed update when it succeeds.

A round is *trainable* here when it is open, this edge serves its model line, has the base version's weights,
has at least ``min_examples`` labeled training samples, and has not answered it yet (a run that is training,
uploaded, or failed answers it; one the agent's stop or a crash interrupted does not, so it is trained again).
Runs start on:
- the round announcement (``on_round``) once the line is idle, or regardless of load once half of the round's
  time has passed (a busy line must not miss every round);
- a ``train_now`` command from the hub, at once;
- the local schedule (``schedule_interval_s`` / ``schedule_cron``): when due, the next time the line is idle and
  at least ``min_new_labels`` labels have not been trained on.
Every run is a row of ``training_runs`` in the buffer's database, written before the trainer starts, so a
restart knows what was interrupted.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from edge.buffer import EdgeBuffer
from edge.tables import TrainingRunRow
from edge.training.jobs import TrainingError, TrainingJob, TrainingResult, TrainingSample
from edge.training.runner import TrainerProcess
from edge.updates import UpdateUploader
from runtime.mqtt import MqttLink, ReceivedMessage
from schemas.base import as_utc, utc_now
from schemas.config import LocalTrainingConfig
from schemas.manifests import Task
from schemas.messages import RoundAnnouncementBody, RoundAnnouncementMessage, RoundState, TrainNowCommand

log = logging.getLogger(__name__)
TICK_S = 1.0
KEPT_RUN_FOLDERS = 5
EVALUATION_ALLOWANCE = 0.2
"""Part of a run's time limit kept for measuring the holdout after training (the trainer stops early)."""


class RunState(StrEnum):
    RUNNING = "running"
    UPLOADED = "uploaded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


ANSWERED = (RunState.RUNNING.value, RunState.UPLOADED.value, RunState.FAILED.value)


class Trigger(StrEnum):
    ROUND = "round"
    COMMAND = "train_now"
    SCHEDULE = "schedule"


@dataclass(frozen=True)
class TrainingStatus:
    """What /metrics and the logs say about training."""

    running_run: str | None
    running_model: str | None
    epoch: int
    epochs: int
    runs: dict[str, int]
    last_seconds: float | None
    waiting: str | None


class TrainingScheduler:
    def __init__(
        self,
        config: LocalTrainingConfig,
        *,
        engine: Engine,
        link: MqttLink,
        buffer: EdgeBuffer,
        uploader: UpdateUploader,
        work_dir: Path,
        served: Callable[[], dict[str, Task]],
        base_bundle: Callable[[str, int], Path | None],
        load: Callable[[float], float],
        defect_class: str,
        hub_id: str = "hub",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.config = config
        self.engine = engine
        self.link = link
        self.buffer = buffer
        self.uploader = uploader
        self.work_dir = work_dir
        self.served = served
        self.base_bundle = base_bundle
        self.load = load
        self.defect_class = defect_class
        self.hub_id = hub_id
        self._clock = clock
        self._lock = threading.Lock()
        self._rounds: dict[str, RoundAnnouncementBody] = {}
        self._running: str | None = None
        self._running_model: str | None = None
        self._progress = (0, 0)
        self._last_seconds: float | None = None
        self._waiting: str | None = None
        self._schedule_pending = False
        self._next_due = self._next_schedule(clock())
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_thread: threading.Thread | None = None
        self._recover()
        link.subscribe(link.topics.all_rounds(), self._on_round, message_type=RoundAnnouncementMessage)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Runs a crash or kill left 'running' were interrupted: their rounds may be trained again."""
        with Session(self.engine) as session, session.begin():
            for row in session.scalars(select(TrainingRunRow).where(TrainingRunRow.state == RunState.RUNNING.value)):
                row.state, row.ended_at = RunState.INTERRUPTED.value, self._clock()
                row.detail = "the agent stopped during training"
                log.warning(
                    "training run was interrupted by a restart",
                    extra={"run_id": row.run_id, "round_id": row.round_id, "model": row.model_name},
                )
        folders = sorted(self.work_dir.glob("t-*"), key=lambda p: p.stat().st_mtime) if self.work_dir.is_dir() else []
        for old in folders[:-KEPT_RUN_FOLDERS]:
            shutil.rmtree(old, ignore_errors=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="training-scheduler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop scheduling; a running trainer is stopped and its run recorded as interrupted."""
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._run_thread):
            if thread is not None:
                thread.join(timeout=30)

    # -- inputs ------------------------------------------------------------------------------------------------

    def _on_round(self, message: ReceivedMessage[RoundAnnouncementMessage]) -> None:
        announcement = message.payload
        if announcement.sender != self.hub_id:
            log.warning("round announcement from a non-hub sender ignored", extra={"sender": announcement.sender})
            return
        body = announcement.body
        with self._lock:
            self._rounds[body.model_name] = body
        log.info(
            "round announcement",
            extra={"round_id": body.round_id, "model": body.model_name, "state": body.state.value},
        )
        self._wake.set()

    def train_now(self, command: TrainNowCommand) -> dict[str, Any]:
        """The hub's train_now: start a run for the model's open round now (or say why not)."""
        with self._lock:
            body = self._rounds.get(command.model_name)
        if body is None:
            raise TrainingError(f"no round of {command.model_name!r} is known here; nothing to send an update to")
        if command.round_id is not None and command.round_id != body.round_id:
            raise TrainingError(f"round {command.round_id} is not the current round of {command.model_name!r}")
        reason = self.not_trainable(body, retry_failed=True)
        if reason is not None:
            raise TrainingError(reason)
        run_id = self._start(body, Trigger.COMMAND)
        return {"run_id": run_id, "round_id": body.round_id, "model": body.model_name}

    # -- decisions ---------------------------------------------------------------------------------------------

    def _next_schedule(self, after: datetime) -> datetime | None:
        candidates = []
        if self.config.schedule_interval_s is not None:
            candidates.append(after + timedelta(seconds=self.config.schedule_interval_s))
        if self.config.schedule_cron is not None:
            from croniter import croniter

            candidates.append(croniter(self.config.schedule_cron, after).get_next(datetime))
        return min(candidates) if candidates else None

    def _answered_by(self, round_id: str, states: tuple[str, ...]) -> str | None:
        with Session(self.engine) as session:
            return session.scalars(
                select(TrainingRunRow.run_id).where(
                    TrainingRunRow.round_id == round_id, TrainingRunRow.state.in_(states)
                )
            ).first()

    def not_trainable(self, body: RoundAnnouncementBody, *, retry_failed: bool = False) -> str | None:
        """Why this edge cannot train for the round now, or None."""
        if not self.config.enabled:
            return "training is disabled in this edge's config"
        if body.model_name not in self.served():
            return f"this edge does not serve {body.model_name!r}"
        if body.state not in (RoundState.OPEN, RoundState.COLLECTING):
            return f"round {body.round_id} is {body.state.value}"
        if as_utc(body.deadline) <= self._clock():
            return f"round {body.round_id} is past its deadline"
        states = (RunState.RUNNING.value, RunState.UPLOADED.value) if retry_failed else ANSWERED
        answered = self._answered_by(body.round_id, states)
        if answered is not None:
            return f"round {body.round_id} is already answered by training run {answered}"
        if self.base_bundle(body.model_name, body.base_version) is None:
            return f"the weights of {body.model_name} v{body.base_version} are not installed here"
        count = self.buffer.labels.training_sample_count()
        if count < self.config.min_examples:
            return f"{count} labeled training samples, {self.config.min_examples} needed (training.min_examples)"
        return None

    def _idle(self) -> bool:
        return self.load(self.config.idle_window_s) < self.config.idle_max_images_per_s

    def tick(self) -> str | None:
        """Start a run if one is due; returns its id. Called every second by the scheduler thread."""
        now = self._clock()
        if self._next_due is not None and now >= self._next_due:
            self._schedule_pending = True
            self._next_due = self._next_schedule(now)
        with self._lock:
            if self._running is not None:
                return None
            rounds = list(self._rounds.values())
        waiting: list[str] = []
        served = self.served()
        for body in rounds:
            if body.model_name not in served or body.state not in (RoundState.OPEN, RoundState.COLLECTING):
                continue  # nothing to do for this round: not a reason to report
            reason = self.not_trainable(body)
            if reason is not None:
                if "already answered" not in reason:
                    waiting.append(reason)
                continue
            halfway = as_utc(body.opened_at) + (as_utc(body.deadline) - as_utc(body.opened_at)) / 2
            idle = self._idle()
            if self.config.on_round and (idle or now >= halfway):
                return self._start(body, Trigger.ROUND)
            if self._schedule_pending:
                new_labels = self.buffer.labels.untrained_label_count()
                if new_labels < self.config.min_new_labels:
                    waiting.append(f"{new_labels} new labels, {self.config.min_new_labels} needed")
                elif not idle:
                    waiting.append("the line is busy")
                else:
                    self._schedule_pending = False
                    return self._start(body, Trigger.SCHEDULE)
            elif not idle:
                waiting.append("the line is busy")
        self._note_waiting("; ".join(waiting) or None)
        return None

    def _note_waiting(self, reason: str | None) -> None:
        if reason != self._waiting:
            self._waiting = reason
            if reason:
                log.info("training waits", extra={"reason": reason})

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the scheduler must outlive any single bad decision; the next tick retries
                log.exception("training scheduler tick failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    # -- runs --------------------------------------------------------------------------------------------------

    def _start(self, body: RoundAnnouncementBody, trigger: Trigger) -> str:
        run_id = f"t-{uuid.uuid4().hex[:20]}"
        with self._lock:
            if self._running is not None:
                raise TrainingError(f"training run {self._running} is still running; one run at a time")
            self._running, self._running_model, self._progress = run_id, body.model_name, (0, 0)
        with Session(self.engine) as session, session.begin():
            session.add(
                TrainingRunRow(
                    run_id=run_id,
                    model_name=body.model_name,
                    round_id=body.round_id,
                    base_version=body.base_version,
                    trigger=trigger.value,
                    state=RunState.RUNNING.value,
                    started_at=self._clock(),
                )
            )
        log.info(
            "training started",
            extra={"run_id": run_id, "round_id": body.round_id, "model": body.model_name, "trigger": trigger.value},
        )
        self._run_thread = threading.Thread(target=self._execute, args=(run_id, body), name=f"training-{run_id}")
        self._run_thread.start()
        return run_id

    def _job(self, run_id: str, body: RoundAnnouncementBody, base: Path, timeout_s: float) -> TrainingJob:
        def samples(holdout: bool) -> list[TrainingSample]:
            return [
                TrainingSample(
                    sample_id=s.sample_id,
                    image=s.image_path,
                    verdict=s.verdict,
                    boxes=s.boxes,
                    template=s.template_path,
                )
                for s in self.buffer.labels.labeled_samples(holdout=holdout)
            ]

        return TrainingJob(
            run_id=run_id,
            task=self.served()[body.model_name],
            base_dir=base,
            work_dir=self.work_dir / run_id,
            train=samples(False),
            holdout=samples(True),
            settings=body.training,
            augmentation=self.config.augmentation,
            class_balancing=self.config.class_balancing,
            labeled_kinds_only=self.config.labeled_kinds_only,
            defect_class=self.defect_class,
            threads=self.config.threads,
            nice=self.config.nice,
            device=self.config.device,
            seed=uuid.uuid4().int % 2**31,
            deadline_s=max(1.0, timeout_s * (1 - EVALUATION_ALLOWANCE)),
        )

    def _execute(self, run_id: str, body: RoundAnnouncementBody) -> None:
        try:
            base = self.base_bundle(body.model_name, body.base_version)
            if base is None:
                raise TrainingError(f"the weights of {body.model_name} v{body.base_version} are not installed here")
            remaining = (as_utc(body.deadline) - self._clock()).total_seconds()
            timeout_s = max(1.0, min(self.config.max_duration_s, body.training.max_train_seconds, remaining))
            job = self._job(run_id, body, base, timeout_s)
            process = TrainerProcess(job, timeout_s=timeout_s, on_progress=self._on_progress)
            result, delta = process.run(self._stop)
            transfer_id = self.uploader.upload(
                delta,
                model_name=body.model_name,
                round_id=body.round_id,
                base_version=body.base_version,
                num_examples=result.num_examples,
                encoding=self.config.encoding,
                metrics_before=result.metrics_before,
                metrics_after=result.metrics_after,
            )
            self.buffer.labels.mark_trained([s.sample_id for s in job.train])
            self._finish(run_id, RunState.UPLOADED, None, transfer_id=transfer_id, result=result)
            for scratch in ("dataset", "ultralytics", "runs", "base.pt", "trained.pt", "delta.safetensors"):
                path = job.work_dir / scratch
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        except TrainingError as exc:
            self._finish(run_id, RunState.INTERRUPTED if exc.interrupted else RunState.FAILED, str(exc))
        except Exception as exc:  # recorded, never fatal for the agent
            log.exception("training run crashed", extra={"run_id": run_id})
            self._finish(run_id, RunState.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running = self._running_model = None
            self._wake.set()

    def _on_progress(self, progress: dict[str, Any]) -> None:
        with self._lock:
            self._progress = (int(progress.get("epoch", 0)), int(progress.get("epochs", 0)))

    def _finish(
        self,
        run_id: str,
        state: RunState,
        detail: str | None,
        *,
        transfer_id: str | None = None,
        result: TrainingResult | None = None,
    ) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(TrainingRunRow, run_id)
            assert row is not None
            row.state, row.detail, row.ended_at, row.transfer_id = state.value, detail, self._clock(), transfer_id
            if result is not None:
                row.num_examples = result.num_examples
                row.metrics_json = json.dumps({"before": result.metrics_before, "after": result.metrics_after})
                self._last_seconds = result.seconds
            extra = {"run_id": run_id, "round_id": row.round_id, "model": row.model_name, "state": state.value}
        if state == RunState.UPLOADED and result is not None:
            log.info(
                "training finished; update queued",
                extra={
                    **extra,
                    "transfer_id": transfer_id,
                    "num_examples": result.num_examples,
                    "epochs": result.epochs,
                    "seconds": round(result.seconds, 1),
                    "metrics_before": result.metrics_before,
                    "metrics_after": result.metrics_after,
                },
            )
        else:
            log.error("training run ended without an update", extra={**extra, "detail": detail})

    # -- state -------------------------------------------------------------------------------------------------

    def status(self) -> TrainingStatus:
        with Session(self.engine) as session:
            query = select(TrainingRunRow.state, func.count()).group_by(TrainingRunRow.state)
            counts = dict(session.execute(query).all())
        with self._lock:
            return TrainingStatus(
                running_run=self._running,
                running_model=self._running_model,
                epoch=self._progress[0],
                epochs=self._progress[1],
                runs={str(k): int(v) for k, v in counts.items()},
                last_seconds=self._last_seconds,
                waiting=self._waiting,
            )

    def runs(self) -> list[dict[str, Any]]:
        """Every training run, newest first (for the API and tests)."""
        with Session(self.engine) as session:
            rows = session.scalars(select(TrainingRunRow).order_by(TrainingRunRow.started_at.desc())).all()
            return [
                {
                    "run_id": r.run_id,
                    "model": r.model_name,
                    "round_id": r.round_id,
                    "base_version": r.base_version,
                    "trigger": r.trigger,
                    "state": r.state,
                    "started_at": as_utc(r.started_at).isoformat(),
                    "ended_at": as_utc(r.ended_at).isoformat() if r.ended_at else None,
                    "detail": r.detail,
                    "transfer_id": r.transfer_id,
                    "num_examples": r.num_examples,
                    "metrics": json.loads(r.metrics_json),
                }
                for r in rows
            ]
