"""Federated rounds: open -> collecting -> aggregating -> published, or failed with a reason.

A round closes when ``min_updates`` (k) valid updates are in, or at its deadline, whichever comes first; at the
deadline with fewer than k it fails cleanly, and (by its plan) the next round opens. Updates for an unknown,
closed or other-base round, late ones, or a second one from the same edge are refused as stale or conflicting.
Every accepted update is stored on disk (UpdateStore) and every decision in SQL, so a hub killed mid-round
resumes with the updates it already received; a round caught mid-aggregation is aggregated again.

MQTT stays outside: ``announce`` publishes the (retained) round state, ``on_published`` receives a new global
version once it is committed, under the round lock, so it must return at once (the hub queues it for
``hub.publication``, which exports and broadcasts it outside the lock). ``tick()`` must be called periodically to
enforce deadlines.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import safetensors.numpy
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from hub.registry import ModelRegistry, ModelVersion
from hub.strategies import ClientUpdate, Strategy
from hub.tables import RejectionRow, RoundRow, RoundUpdateRow
from hub.update_store import UpdateStore
from hub.updates import ReceivedUpdate
from hub.validation import NormPolicy, check_update, non_finite_tensors, update_norm
from schemas.base import as_utc, utc_now
from schemas.config import RoundPlanConfig
from schemas.errors import RejectedError, RejectReason
from schemas.messages import RoundAnnouncementBody, RoundState, RoundSummary, TrainingConfig
from schemas.tensors import contiguous

log = logging.getLogger(__name__)
OPEN_STATES = (RoundState.OPEN.value, RoundState.COLLECTING.value)


class RoundUpdate(BaseModel):
    """One edge's update to a round as the hub recorded it, with the edge's local holdout metrics (also the API's
    view of it)."""

    model_config = ConfigDict(frozen=True)

    edge_id: str
    status: str
    reason: str | None
    num_examples: int
    norm: float
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    received_at: datetime


def weighted_metrics(updates: list[RoundUpdate], which: str) -> dict[str, float]:
    """Mean of the accepted updates' metrics (``before`` or ``after``) weighted by their examples."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for update in updates:
        if update.status != "accepted":
            continue
        for name, value in (update.metrics_before if which == "before" else update.metrics_after).items():
            totals[name] = totals.get(name, 0.0) + value * update.num_examples
            weights[name] = weights.get(name, 0.0) + update.num_examples
    return {name: totals[name] / weights[name] for name in totals if weights[name] > 0}


class RoundManager:
    def __init__(
        self,
        engine: Engine,
        registry: ModelRegistry,
        store: UpdateStore,
        strategies: Mapping[str, Strategy],
        *,
        announce: Callable[[RoundAnnouncementBody], None],
        on_published: Callable[[ModelVersion], None],
        plans: Mapping[str, RoundPlanConfig] | None = None,
        norm_policy: NormPolicy | None = None,
        max_examples_per_update: int = 10_000,
        state_dir: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.store = store
        self.strategies = dict(strategies)  # model name -> its strategy (FedOpt keeps moments per line)
        self.plans = dict(plans or {})
        self.norm_policy = norm_policy or NormPolicy()
        self.max_examples_per_update = max_examples_per_update
        self._announce = announce
        self._on_published = on_published
        self._clock = clock
        self._state_dir = state_dir
        self._lock = threading.RLock()
        self._base_cache: tuple[tuple[str, int], dict[str, np.ndarray], float] | None = None
        self._load_strategy_state()

    # -- strategy state (server optimizer moments survive restarts) ---------------------------------------------

    def _strategy_state_path(self, model_name: str) -> Path | None:
        return None if self._state_dir is None else self._state_dir / f"strategy-{model_name}.safetensors"

    def _load_strategy_state(self) -> None:
        for name in self.strategies:
            self._restore_strategy_state(name)

    def _restore_strategy_state(self, name: str) -> None:
        """The state saved with the last published version, or a fresh one: at start, and after a failed
        aggregation (which must leave no trace)."""
        strategy = self.strategies[name]
        if not hasattr(strategy, "load_state"):
            return
        path = self._strategy_state_path(name)
        strategy.load_state(safetensors.numpy.load_file(str(path)) if path is not None and path.exists() else {})

    def _save_strategy_state(self, name: str) -> None:
        path = self._strategy_state_path(name)
        strategy = self.strategies[name]
        if path is None or not hasattr(strategy, "state"):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        safetensors.numpy.save_file({k: contiguous(v) for k, v in strategy.state().items()}, str(tmp))
        tmp.replace(path)

    def _base(self, name: str, version: int) -> tuple[Mapping[str, np.ndarray], float]:
        """The base of the open round and its norm, read from the registry once (versions never change)."""
        if self._base_cache is None or self._base_cache[0] != (name, version):
            weights = self.registry.weights(name, version)
            self._base_cache = ((name, version), weights, update_norm(weights))
        return self._base_cache[1], self._base_cache[2]

    # -- opening -----------------------------------------------------------------------------------------------

    def open_round(
        self, model_name: str, *, min_updates: int, duration: timedelta, training: TrainingConfig
    ) -> RoundAnnouncementBody:
        with self._lock, Session(self.engine) as session, session.begin():
            if session.scalars(
                select(RoundRow).where(RoundRow.model_name == model_name, RoundRow.state.in_(OPEN_STATES))
            ).first():
                raise ValueError(f"model {model_name!r} already has an open round")
            base_version = self.registry.latest_version(model_name)
            if base_version is None:
                raise ValueError(f"model {model_name!r} has no version to train from; import version 0 first")
            strategy = self.strategies[model_name]
            number = session.scalar(select(func.count()).where(RoundRow.model_name == model_name)) or 0
            now = self._clock()
            row = RoundRow(
                round_id=f"{model_name}-r{number + 1:04d}",
                model_name=model_name,
                base_version=base_version,
                state=RoundState.OPEN.value,
                opened_at=now,
                deadline=now + duration,
                min_updates=min_updates,
                strategy=strategy.name,
                training_json=strategy.configure_training(training).model_dump_json(),
            )
            session.add(row)
            body = self._body(row)
        log.info(
            "round opened",
            extra={
                "round_id": body.round_id,
                "model": model_name,
                "base_version": base_version,
                "min_updates": min_updates,
                "deadline": body.deadline.isoformat(),
            },
        )
        self._announce(body)
        return body

    def _body(self, row: RoundRow) -> RoundAnnouncementBody:
        return RoundAnnouncementBody(
            round_id=row.round_id,
            model_name=row.model_name,
            base_version=row.base_version,
            state=RoundState(row.state),
            opened_at=as_utc(row.opened_at),
            deadline=as_utc(row.deadline),
            min_updates=row.min_updates,
            strategy=row.strategy,
            training=TrainingConfig.model_validate_json(row.training_json),
        )

    def open_planned(self, model_name: str) -> RoundAnnouncementBody | None:
        """Open the next round of a planned model line, unless it has one open or its plan is done."""
        plan = self.plans.get(model_name)
        if plan is None:
            return None
        with Session(self.engine) as session:
            done = session.scalar(select(func.count()).where(RoundRow.model_name == model_name)) or 0
            if session.scalars(
                select(RoundRow).where(RoundRow.model_name == model_name, RoundRow.state.in_(OPEN_STATES))
            ).first():
                return None
        if plan.max_rounds and done >= plan.max_rounds:
            return None
        return self.open_round(
            model_name,
            min_updates=plan.min_updates,
            duration=timedelta(seconds=plan.round_duration_s),
            training=plan.training_for_round(done + 1),
        )

    # -- updates -----------------------------------------------------------------------------------------------

    def record_rejection(
        self, edge_id: str, error: RejectedError, *, round_id: str | None = None, transfer_id: str | None = None
    ) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(
                RejectionRow(
                    edge_id=edge_id,
                    round_id=round_id,
                    transfer_id=transfer_id,
                    reason=error.reason.value,
                    detail=str(error),
                )
            )

    def submit(self, update: ReceivedUpdate) -> None:
        """Accept a verified update into its round, or raise RejectedError (recorded) saying why not."""
        manifest = update.manifest
        try:
            self._submit(update)
        except RejectedError as exc:
            self.record_rejection(manifest.edge_id, exc, round_id=manifest.round_id, transfer_id=update.transfer_id)
            log.warning(
                "update refused",
                extra={
                    "edge_id": manifest.edge_id,
                    "round_id": manifest.round_id,
                    "reason": exc.reason.value,
                    "error": str(exc),
                },
            )
            raise

    def _buffered_target(self, session: Session, update: ReceivedUpdate) -> tuple[RoundRow, float] | None:
        """In buffered mode, the open round a stale update goes to, and its weight; None if it cannot."""
        manifest = update.manifest
        plan = self.plans.get(manifest.model_name)
        if plan is None or not plan.buffered:
            return None
        current = session.scalars(
            select(RoundRow).where(RoundRow.model_name == manifest.model_name, RoundRow.state.in_(OPEN_STATES))
        ).first()
        if current is None:
            return None
        staleness = current.base_version - manifest.base_version
        if not 0 <= staleness <= plan.max_staleness:
            return None
        return current, manifest.num_examples / (1 + staleness) ** plan.staleness_exponent

    def _submit(self, update: ReceivedUpdate) -> None:
        manifest = update.manifest
        weight: float | None = None
        with self._lock:
            with Session(self.engine) as session:
                row = session.get(RoundRow, manifest.round_id)
                if row is None or row.state not in OPEN_STATES or manifest.base_version != row.base_version:
                    buffered = self._buffered_target(session, update)
                    if buffered is not None:
                        row, weight = buffered
                        log.info(
                            "stale update buffered into the open round",
                            extra={
                                "edge_id": manifest.edge_id,
                                "round_id": row.round_id,
                                "base_version": manifest.base_version,
                                "weight": weight,
                            },
                        )
                if row is None:
                    raise RejectedError(RejectReason.STALE, f"no round {manifest.round_id!r}")
                if row.model_name != manifest.model_name:
                    raise RejectedError(
                        RejectReason.MALFORMED,
                        f"round {row.round_id} trains {row.model_name!r}, not {manifest.model_name!r}",
                    )
                if row.state not in OPEN_STATES:
                    raise RejectedError(RejectReason.STALE, f"round {row.round_id} is already {row.state}")
                if manifest.base_version != row.base_version and weight is None:
                    raise RejectedError(
                        RejectReason.STALE,
                        f"update is against version {manifest.base_version}, "
                        f"round {row.round_id} trains version {row.base_version}",
                    )
                if self._clock() > as_utc(row.deadline):
                    raise RejectedError(RejectReason.STALE, f"round {row.round_id} closed at its deadline")
                if session.get(RoundUpdateRow, (row.round_id, manifest.edge_id)) is not None:
                    raise RejectedError(
                        RejectReason.CONFLICT, f"edge {manifest.edge_id!r} already sent an update for {row.round_id}"
                    )
                base, base_norm = self._base(row.model_name, row.base_version)
            norm = check_update(base, update.delta, bound=self.norm_policy.refusal_bound(base_norm))
            self.store.put(row.round_id, manifest.edge_id, manifest.num_examples, update.delta, weight)
            with Session(self.engine) as session, session.begin():
                session.add(
                    RoundUpdateRow(
                        round_id=row.round_id,
                        edge_id=manifest.edge_id,
                        transfer_id=update.transfer_id,
                        num_examples=manifest.num_examples,
                        norm=norm,
                        metrics_json=json.dumps({"before": manifest.metrics_before, "after": manifest.metrics_after}),
                        status="accepted",
                    )
                )
                current = session.get(RoundRow, row.round_id)
                assert current is not None
                current.state = RoundState.COLLECTING.value
                accepted = self._accepted_count(session, row.round_id)  # autoflush includes the new row
                body = self._body(current)
            log.info(
                "update accepted",
                extra={
                    "round_id": row.round_id,
                    "edge_id": manifest.edge_id,
                    "accepted": accepted,
                    "min_updates": row.min_updates,
                    "norm": norm,
                },
            )
            if accepted >= row.min_updates:
                self._aggregate(row.round_id)
            else:
                self._announce(body)

    def _bounded(self, update: ClientUpdate, scale: float | None) -> ClientUpdate:
        """The update as it is averaged: its float tensors times its clip scale, its weight within the cap."""
        delta = dict(update.delta)
        if scale is not None:
            for key, value in delta.items():
                if np.issubdtype(value.dtype, np.floating):
                    # In place where the loaded array allows it: a clipped update costs no second copy in memory.
                    step = np.asarray(scale, value.dtype)
                    delta[key] = np.multiply(value, step, out=value) if value.flags.writeable else value * step
        weight = update.effective_weight * min(1.0, self.max_examples_per_update / update.num_examples)
        return ClientUpdate(update.edge_id, update.num_examples, delta, weight)

    @staticmethod
    def _accepted_count(session: Session, round_id: str) -> int:
        return (
            session.scalar(
                select(func.count()).where(RoundUpdateRow.round_id == round_id, RoundUpdateRow.status == "accepted")
            )
            or 0
        )

    # -- closing -----------------------------------------------------------------------------------------------

    def tick(self) -> list[str]:
        """Enforce deadlines and finish rounds interrupted by a restart; returns the rounds closed."""
        closed = []
        with self._lock:
            with Session(self.engine) as session:
                rows = session.scalars(
                    select(RoundRow).where(RoundRow.state.in_((*OPEN_STATES, RoundState.AGGREGATING.value)))
                ).all()
                pending = [
                    (r.round_id, r.state, as_utc(r.deadline), r.min_updates, self._accepted_count(session, r.round_id))
                    for r in rows
                ]
            for round_id, state, deadline, k, accepted in pending:
                if state == RoundState.AGGREGATING.value or accepted >= k:
                    self._aggregate(round_id)  # interrupted mid-aggregation, or k reached before a crash
                    closed.append(round_id)
                elif self._clock() > deadline:
                    self._fail(round_id, f"deadline passed with {accepted} of {k} required updates")
                    closed.append(round_id)
        return closed

    def _set_state(self, round_id: str, state: RoundState, **fields: object) -> RoundAnnouncementBody:
        with Session(self.engine) as session, session.begin():
            row = session.get(RoundRow, round_id)
            assert row is not None
            row.state = state.value
            for key, value in fields.items():
                setattr(row, key, value)
            return self._body(row)

    def _fail(self, round_id: str, reason: str) -> None:
        body = self._set_state(round_id, RoundState.FAILED, reason=reason, closed_at=self._clock())
        self.store.drop_round(round_id)
        log.warning("round failed", extra={"round_id": round_id, "reason": reason})
        self._announce(body)
        self.open_planned(body.model_name)

    def _aggregate(self, round_id: str) -> None:
        body = self._set_state(round_id, RoundState.AGGREGATING)
        self._announce(body)
        with Session(self.engine) as session, session.begin():
            rows = session.scalars(
                select(RoundUpdateRow).where(RoundUpdateRow.round_id == round_id, RoundUpdateRow.status == "accepted")
            ).all()
            norms = {r.edge_id: r.norm for r in rows}
            scales = self.norm_policy.clip_scales(norms)
            for r in rows:
                if r.edge_id in scales:
                    # Kept, and the reason says by how much it was shrunk; the row keeps the norm it arrived with.
                    bound, factor = r.norm * scales[r.edge_id], self.norm_policy.clip_factor
                    r.reason = f"norm {r.norm:.4g} clipped to {bound:.4g} ({factor:g} x the round's median)"
                    log.warning(
                        "update clipped",
                        extra={"round_id": round_id, "edge_id": r.edge_id, "norm": r.norm, "clipped_to": bound},
                    )
            kept = [(r.edge_id, min(r.num_examples, self.max_examples_per_update)) for r in rows]
        strategy = self.strategies[body.model_name]
        base, _ = self._base(body.model_name, body.base_version)
        updates = (self._bounded(self.store.load(round_id, edge), scales.get(edge)) for edge, _ in kept)
        weights = strategy.aggregate(base, updates)
        broken = non_finite_tensors(weights)
        if broken:
            self._restore_strategy_state(body.model_name)
            self._fail(round_id, f"the aggregated weights are not finite in {len(broken)} tensors, e.g. {broken[:3]}")
            return
        version = self.registry.add_version(
            body.model_name,
            body.base_version,
            weights,
            round_id=round_id,
            strategy=strategy.name,
            participants=[edge for edge, _ in kept],
            num_examples=sum(n for _, n in kept),
        )
        self._save_strategy_state(body.model_name)
        published = self._set_state(
            round_id, RoundState.PUBLISHED, new_version=version.manifest.version, closed_at=self._clock()
        )
        self.store.drop_round(round_id)
        log.info(
            "round published",
            extra={"round_id": round_id, "version": version.manifest.version, "participants": len(kept)},
        )
        self._on_published(version)
        self._announce(published)
        self.open_planned(body.model_name)

    # -- queries -----------------------------------------------------------------------------------------------

    def round(self, round_id: str) -> tuple[RoundAnnouncementBody, str | None, int | None]:
        """(state as announced, failure reason, new version) of a round."""
        with Session(self.engine) as session:
            row = session.get(RoundRow, round_id)
            if row is None:
                raise KeyError(round_id)
            return self._body(row), row.reason, row.new_version

    def all_rounds(self) -> list[tuple[RoundAnnouncementBody, str | None, int | None, int]]:
        """(state, failure reason, new version, accepted updates) of every round, oldest first."""
        with Session(self.engine) as session:
            rows = session.scalars(select(RoundRow).order_by(RoundRow.opened_at, RoundRow.round_id)).all()
            return [(self._body(r), r.reason, r.new_version, self._accepted_count(session, r.round_id)) for r in rows]

    def round_updates(self, round_id: str) -> list[RoundUpdate]:
        """The updates a round received (accepted, or rejected at aggregation), oldest first."""
        with Session(self.engine) as session:
            if session.get(RoundRow, round_id) is None:
                raise KeyError(round_id)
            rows = session.scalars(
                select(RoundUpdateRow).where(RoundUpdateRow.round_id == round_id).order_by(RoundUpdateRow.received_at)
            ).all()
            updates = []
            for r in rows:
                metrics = json.loads(r.metrics_json)  # {"before", "after"}: migration 0002 rewrote older rows
                updates.append(
                    RoundUpdate(
                        edge_id=r.edge_id,
                        status=r.status,
                        reason=r.reason,
                        num_examples=r.num_examples,
                        norm=r.norm,
                        metrics_before=metrics["before"],
                        metrics_after=metrics["after"],
                        received_at=as_utc(r.received_at),
                    )
                )
            return updates

    def rejection_counts(self) -> dict[str, int]:
        with Session(self.engine) as session:
            rows = session.execute(select(RejectionRow.reason, func.count()).group_by(RejectionRow.reason)).all()
            return {reason: int(count) for reason, count in rows}

    def summaries(self) -> list[RoundSummary]:
        with Session(self.engine) as session:
            rows = session.scalars(select(RoundRow).where(RoundRow.state.in_(OPEN_STATES))).all()
            return [
                RoundSummary(
                    round_id=r.round_id,
                    model_name=r.model_name,
                    state=RoundState(r.state),
                    updates_received=self._accepted_count(session, r.round_id),
                )
                for r in rows
            ]

    def rejections(self) -> list[tuple[str, str | None, str, str]]:
        """(edge, round, reason, detail) of every refused update, oldest first."""
        with Session(self.engine) as session:
            return [
                (r.edge_id, r.round_id, r.reason, r.detail)
                for r in session.scalars(select(RejectionRow).order_by(RejectionRow.id)).all()
            ]

    def latest_round(self, model_name: str) -> str | None:
        with Session(self.engine) as session:
            return session.scalars(
                select(RoundRow.round_id)
                .where(RoundRow.model_name == model_name)
                .order_by(RoundRow.opened_at.desc(), RoundRow.round_id.desc())
            ).first()
