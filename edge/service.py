"""The edge agent process (``fedinspect edge run``): models, buffer, HTTP intake, events and status over MQTT.

Start-up loads the models (a missing or bad model stops the process with a clear error: systemd then shows it),
opens the buffer, starts the MQTT link without waiting for it (a broker that is down is reported, not fatal),
the event publisher and the HTTP server, then tells systemd READY=1. The watchdog is pinged only while inference
is healthy. SIGTERM stops intake, lets running inspections finish, sends what it can of the outbox, publishes the
retained "offline" status and closes the database.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from sqlalchemy import text

from edge.adaptation import model_to_consider
from edge.api import Readiness, create_app
from edge.buffer import EdgeBuffer
from edge.commands import COMMAND_LOG_PRUNE_INTERVAL_S, CommandExecutor
from edge.db import open_edge_database
from edge.events import EventPublisher
from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from edge.inference.errors import ModelLoadError
from edge.inference.pipeline import InspectionPipeline
from edge.inference.templates import TemplateStore
from edge.inference.watchdog import InferenceWatchdog
from edge.inspection import InspectionService
from edge.model_records import served_model_file
from edge.models import InstalledModel, ModelUpdater
from edge.sources import FolderSource, MqttImageSource
from edge.swap import ModelSwapper, SwapDecision
from edge.training.jobs import TrainingError
from edge.training.scheduler import TrainingScheduler
from edge.updates import UpdateUploader
from runtime.access import TokenStore, api_tokens_file
from runtime.exchange import TransferOutbox
from runtime.mqtt import MqttLink
from runtime.signing import KeyRing, SigningKey
from runtime.systemd import Notifier
from runtime.version import __version__
from runtime.web import pages_need_https, server_options
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, read_model_manifest
from schemas.config import EdgeConfig
from schemas.errors import FedinspectError
from schemas.manifests import Task
from schemas.messages import CommandBody, Role, RollbackCommand, StatusBody, TrainNowCommand, TransferStatusMessage

log = logging.getLogger(__name__)
Inferencer = TypeVar("Inferencer", Classifier, Detector)

DRAIN_TIMEOUT_S = 10.0


class EdgeService:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        data = config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        if config.models.classifier is None:
            raise ModelLoadError("models.classifier is not set in the edge config: nothing to serve")
        self.watchdog = InferenceWatchdog(config.inference.watchdog_timeout_s)
        cache = data / "cache"
        classifier = self._load(Classifier, config.models.classifier, cache)
        detector = self._load(Detector, config.models.detector, cache) if config.models.detector is not None else None
        self.pipeline = InspectionPipeline(classifier, detector, config.inspection)
        if self.pipeline.needs_template and config.inspection.templates_dir is None:
            raise ModelLoadError(
                "a served model compares each image with its golden template (input template 'composite'); "
                "set inspection.templates_dir to the folder of templates"
            )
        self.templates = TemplateStore(config.inspection.templates_dir, default=config.inspection.default_template)
        self.link = MqttLink(
            config.broker,
            role=Role.EDGE,
            node_id=config.edge_id,
            software_version=__version__,
            status_provider=self._status,
        )
        self.engine = open_edge_database(data / "buffer.db")
        self.buffer = EdgeBuffer(
            self.engine,
            data / "images",
            hard_limit_bytes=config.buffer.hard_limit_bytes,
            min_free_disk_bytes=config.buffer.min_free_disk_bytes,
        )
        self.publisher = EventPublisher(self.buffer, self.link)
        self.inspection = InspectionService(
            self.pipeline,
            self.buffer,
            edge_id=config.edge_id,
            intake=config.intake,
            review=config.review,
            event_topic=self.link.topics.edge_events(config.edge_id),
            publisher=self.publisher,
            templates=self.templates,
        )
        self.swapper = ModelSwapper(
            self.pipeline,
            self.buffer,
            config.inference,
            cache_dir=cache,
            tolerance=config.models.regression_tolerance,
            watchdog=self.watchdog,
            models_dir=data / "models",
        )
        self.last_swap: SwapDecision | None = None
        self.updater = (
            ModelUpdater(
                self.link,
                data,
                KeyRing.from_directory(config.models.hub_keys_dir),
                hub_id=config.models.hub_id,
                on_installed=self._on_model_installed,
                max_model_bytes=config.models.max_model_bytes,
                max_partial_transfers=config.models.max_partial_transfers,
                max_partial_bytes=config.models.max_partial_bytes,
                max_tensor_header_bytes=config.models.max_tensor_header_bytes,
            )
            if config.models.hub_keys_dir is not None
            else None
        )
        self.update_outbox: TransferOutbox | None = None
        self.training = self._training_scheduler(data)
        # Commands from the hub, each run at most once (persisted in the buffer's database).
        self.commands = CommandExecutor(
            self.link,
            self.engine,
            {"rollback": self._rollback, "train_now": self._train_now},
            # without a pinned hub key no command can be verified, so none is run
            hub_keys=KeyRing.from_directory(config.models.hub_keys_dir) if config.models.hub_keys_dir else KeyRing(),
            hub_id=config.models.hub_id,
        )
        self.folder = FolderSource(config.sources.folder, self.inspection) if config.sources.folder else None
        # Subscribed before the link starts, so the subscription is part of "connected".
        self.mqtt_images = (
            MqttImageSource(self.link, config.edge_id, self.inspection) if config.sources.mqtt_images else None
        )
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None

    # -- local training ----------------------------------------------------------------------------------------

    def _load(self, kind: type[Inferencer], configured: Path, cache: Path) -> Inferencer:
        """The configured model, or the newer global version this edge served before a restart."""
        model = kind.load(configured, self.config.inference, cache_dir=cache, watchdog=self.watchdog)
        served = served_model_file(self.config.data_dir / "models", model.name, model.version)
        if served is None:
            return model
        try:
            resumed = kind.load(served, self.config.inference, cache_dir=cache, watchdog=self.watchdog)
        except FedinspectError as exc:
            log.error("served model unusable; using the configured one", extra={"path": str(served), "error": str(exc)})
            return model
        log.info(
            "serving the model in use before the restart",
            extra={"model": resumed.name, "version": resumed.version, "configured_version": model.version},
        )
        return resumed

    def _training_scheduler(self, data: Path) -> TrainingScheduler | None:
        settings = self.config.training
        if not settings.enabled:
            return None
        if settings.signing_key_file is None:
            log.warning("local training is off: training.signing_key_file (the edge's update key) is not set")
            return None
        key = SigningKey.load(settings.signing_key_file, key_id=self.config.edge_id)
        outbox = self.update_outbox = TransferOutbox(self.link, self.engine, data / "updates-spool")
        self.link.subscribe(
            self.link.topics.edge_update_statuses(self.config.edge_id),
            outbox.handle_status,
            message_type=TransferStatusMessage,
        )
        return TrainingScheduler(
            settings,
            engine=self.engine,
            link=self.link,
            buffer=self.buffer,
            uploader=UpdateUploader(outbox, key, data / "updates-work"),
            work_dir=data / "training",
            served=self._served,
            base_bundle=self.base_bundle,
            load=self.inspection.rate,
            defect_class=self.config.inspection.defect_class,
            hub_id=self.config.models.hub_id,
        )

    def _served(self) -> dict[str, Task]:
        served = {self.pipeline.classifier.name: Task.CLASSIFY}
        if self.pipeline.detector is not None:
            served[self.pipeline.detector.name] = Task.DETECT
        return served

    def base_bundle(self, name: str, version: int) -> Path | None:
        """Folder with manifest.json and weights.safetensors of version ``version`` of ``name``, if this edge has it.

        Installed global versions live under data_dir/models; the bundle the edge was configured with counts too
        (version 0 usually arrives that way, with the operator's deployment).
        """
        candidates = [self.config.data_dir / "models" / name / str(version)]
        for configured in (self.config.models.classifier, self.config.models.detector):
            if configured is not None:
                candidates.append(configured.parent)
        for folder in candidates:
            try:
                manifest = read_model_manifest({MANIFEST_FILE: folder / MANIFEST_FILE})
            except (OSError, FedinspectError, ValueError):
                continue
            if (manifest.name, manifest.version) == (name, version) and (folder / WEIGHTS_FILE).is_file():
                return folder
        return None

    def _train_now(self, command: CommandBody) -> dict[str, Any]:
        assert isinstance(command, TrainNowCommand)
        if self.training is None:
            raise TrainingError("local training is off on this edge (training.enabled / training.signing_key_file)")
        return self.training.train_now(command)

    # -- state for /readyz, /metrics and the retained status ----------------------------------------------------

    def _models(self) -> dict[str, dict[str, Any]]:
        inferencers: list[Classifier | Detector] = [self.pipeline.classifier]
        if self.pipeline.detector is not None:
            inferencers.append(self.pipeline.detector)
        return {
            i.name: {"version": i.version, "task": i.metadata.task.value, "provider": i.model.providers.active}
            for i in inferencers
        }

    def _database_ok(self) -> bool:
        try:
            with self.engine.begin() as connection:
                connection.execute(text("CREATE TEMP TABLE IF NOT EXISTS _probe(x INTEGER)"))
            return True
        except Exception as exc:  # any database failure makes the edge not ready
            self.last_error = f"database: {exc}"
            return False

    def readiness(self) -> Readiness:
        watchdog = self.watchdog.status()
        return Readiness(
            models=self._models(),
            database_ok=self._database_ok(),
            watchdog_ok=watchdog.healthy,
            watchdog_reason=watchdog.reason,
            broker_connected=self.link.connected,
            storage_problem=self.buffer.images.storage_problem(),
        )

    def _status(self) -> StatusBody:
        return StatusBody(
            state="online",
            role=Role.EDGE,
            software_version=__version__,
            model_versions=self.pipeline.model_versions,
            execution_provider=self.pipeline.classifier.model.providers.active,
            backlogs={"outbox": self.buffer.outbox.backlog(), "review": self.buffer.samples.review_backlog()},
            last_error=self.last_error or self.watchdog.status().reason,
        )

    # -- new global models ------------------------------------------------------------------------------------------

    def _on_model_installed(self, installed: InstalledModel) -> None:
        """A verified bundle arrived: swap it in unless it regresses on the local holdout (then say why)."""
        manifest = installed.manifest
        if MODEL_FILE not in manifest.files or manifest.name not in self.pipeline.model_versions:
            log.info("installed bundle not served here", extra={"model": manifest.name, "version": manifest.version})
            return
        try:
            model_file, adapted_on = model_to_consider(
                installed,
                self.config.models,
                self.buffer.samples,
                adapted_dir=self.config.data_dir / "models-local",
                threads=self.config.training.threads,
            )
            decision = self.swapper.consider(model_file)
            if adapted_on:
                decision = replace(
                    decision, reason=f"{decision.reason}; BatchNorm statistics of {adapted_on} local images"
                )
        except FedinspectError as exc:
            self.last_error = f"model {manifest.name} v{manifest.version} not used: {exc}"
            log.error(
                "new model not usable", extra={"model": manifest.name, "version": manifest.version, "error": str(exc)}
            )
            return
        self.last_swap = decision
        if not decision.swapped:
            self.last_error = f"model {decision.model} v{decision.to_version} not used: {decision.reason}"
        if self.link.connected:
            try:
                self.link.publish_status()
            except Exception as exc:  # status is best effort
                log.warning("status not published", extra={"error": str(exc)})

    def _rollback(self, command: CommandBody) -> dict[str, Any]:
        """The hub's rollback command: serve again the model the last swap of that line replaced."""
        assert isinstance(command, RollbackCommand)
        served = self._served()
        if command.model_name not in served:
            raise ModelLoadError(f"this edge does not serve {command.model_name!r}")
        task = served[command.model_name]
        previous = self.swapper.previous_version(task)
        if command.to_version is not None and previous is not None and command.to_version != previous:
            raise ModelLoadError(
                f"version {command.to_version} of {command.model_name} is not available here; "
                f"the previous model is version {previous}"
            )
        decision = self.swapper.rollback(task)
        return {"model": decision.model, "from_version": decision.from_version, "to_version": decision.to_version}

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.updater is not None:
            self.updater.start()
        self.link.start()
        self.publisher.start()
        if self.update_outbox is not None:
            self.update_outbox.start()
        if self.training is not None:
            self.training.start()
        http = uvicorn.Config(
            create_app(
                self.inspection,
                readiness=self.readiness,
                tokens=TokenStore(api_tokens_file(self.config.http, self.config.data_dir)),
                trusted_hosts=self.config.http.trusted_hosts,
                training=self.training.status if self.training is not None else None,
                training_runs=self.training.runs if self.training is not None else None,
                https_only=pages_need_https(self.config.http),
            ),
            **server_options(self.config.http),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
        )
        self._http = uvicorn.Server(http)
        self._http_thread = threading.Thread(target=self._http.run, name="edge-http", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 10
        while not self._http.started and self._http_thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._http.started:
            raise OSError(f"HTTP server did not start on {self.config.http.host}:{self.config.http.port}")
        if self.folder is not None:
            self.folder.start()
        log.info(
            "edge ready",
            extra={
                "edge_id": self.config.edge_id,
                "address": f"{self.config.http.host}:{self.config.http.port}",
                "models": self._models(),
            },
        )

    def run(self) -> None:
        """Serve until ``stop()``."""
        self.start()
        systemd = Notifier()
        systemd.ready(f"serving {', '.join(self._models())}")
        interval = min(self.config.status_interval_s, systemd.watchdog_interval_s or 1.0, 1.0)
        last_status = last_quota = time.monotonic()
        last_prune = last_status - COMMAND_LOG_PRUNE_INTERVAL_S  # first prune at the first tick
        while not self._stop.wait(interval):
            if time.monotonic() - last_prune >= COMMAND_LOG_PRUNE_INTERVAL_S:
                last_prune = time.monotonic()
                self._prune_command_log()
            if time.monotonic() - last_quota >= self.config.buffer.quota_check_interval_s:
                last_quota = time.monotonic()
                try:
                    self.buffer.images.enforce_quota(self.config.buffer.max_image_bytes)
                except Exception as exc:  # a failed eviction must not stop inspection; it is reported
                    self.last_error = f"quota: {exc}"
                    log.exception("disk quota enforcement failed")
            if self.watchdog.status().healthy:
                systemd.watchdog()  # no ping while inference hangs: systemd restarts the agent
            if time.monotonic() - last_status >= self.config.status_interval_s and self.link.connected:
                last_status = time.monotonic()
                try:
                    self.link.publish_status()
                except Exception as exc:  # status is best effort; the next refresh tries again
                    log.warning("status not published", extra={"error": str(exc)})
        systemd.stopping()
        self.close()

    def _prune_command_log(self) -> None:
        try:
            pruned = self.commands.prune()
        except Exception:  # a failed prune must not stop inspection; the next one tries again
            log.exception("command log prune failed")
            return
        if pruned:
            log.info("command log pruned", extra={"commands": pruned})

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop intake, finish running inspections, flush what the broker takes of the outbox, close."""
        if self.folder is not None:
            self.folder.stop()
        if self._http is not None and self._http_thread is not None:
            self._http.should_exit = True  # uvicorn stops accepting and finishes requests in progress
            self._http_thread.join(timeout=DRAIN_TIMEOUT_S)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.link.connected and self.buffer.outbox.backlog() and time.monotonic() < deadline:
            self.publisher.notify()
            time.sleep(0.05)
        self.publisher.stop()
        self.commands.close()
        if self.training is not None:
            self.training.close()
        if self.update_outbox is not None:
            self.update_outbox.stop()
        if self.updater is not None:
            self.updater.close()
        self.link.stop()
        self.engine.dispose()
        log.info("edge stopped", extra={"edge_id": self.config.edge_id, "outbox_backlog": self.buffer.outbox.backlog()})
