"""The hub process (``fedinspect hub run``): rounds, update intake, registry and model distribution over MQTT."""

from __future__ import annotations

import logging
import threading

import uvicorn

from hub.api import create_app
from hub.commands import CommandSender
from hub.db import open_hub_database
from hub.edges import EdgeDirectory
from hub.models import ModelPublisher, model_transfer_id
from hub.publication import PublicationQueue, export_version_onnx
from hub.registry import ModelRegistry, ModelVersion
from hub.rounds import RoundManager
from hub.strategies import line_strategies
from hub.update_store import UpdateStore
from hub.updates import UpdateInbox
from hub.validation import NormPolicy
from runtime.access import TokenStore, api_tokens_file
from runtime.mqtt import MqttLink
from runtime.signing import KeyRing, SigningKey
from runtime.systemd import Notifier
from runtime.version import __version__
from runtime.web import pages_need_https, server_options
from schemas.bundle import MODEL_FILE
from schemas.config import HubConfig
from schemas.errors import LinkError, RejectedError
from schemas.messages import Role, RoundAnnouncementBody, RoundAnnouncementMessage, StatusBody

log = logging.getLogger(__name__)


class HubService:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        data = config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        engine = open_hub_database(config)
        self.link = MqttLink(
            config.broker,
            role=Role.HUB,
            node_id=config.hub_id,
            software_version=__version__,
            status_provider=self._status,
        )
        self.registry = ModelRegistry(engine, data / "artifacts")
        key_file = config.signing_key_file or data / "keys" / f"{config.hub_id}.key"
        signing_key = SigningKey.load(key_file, key_id=config.hub_id)  # signs global models and commands
        self.publisher = ModelPublisher(self.link, signing_key, data / "published", engine)
        # Aggregation and rollback only queue a version; exporting and broadcasting it never holds the round lock.
        self.publications = PublicationQueue(self._publish)
        plans = {plan.model_name: plan for plan in config.rounds}
        self.rounds = RoundManager(
            engine,
            self.registry,
            UpdateStore(data / "updates"),
            line_strategies(config),
            announce=self._announce,
            on_published=self.publications.submit,
            plans=plans,
            norm_policy=NormPolicy(
                clip_factor=config.aggregation.clip_factor,
                max_relative_norm=config.aggregation.max_relative_norm,
                max_update_norm=config.aggregation.max_update_norm,
            ),
            max_examples_per_update=config.aggregation.max_examples_per_update,
            state_dir=data / "state",
        )
        enrolled = config.enrolled_keys_dir or data / "keys" / "edges"
        self.inbox = UpdateInbox(
            self.link,
            data,
            KeyRing.from_directory(enrolled),
            self.rounds.submit,
            intake=config.update_intake,
            base_specs=self.registry.tensor_specs,
            on_rejected=self._rejected,
        )
        self.edges = EdgeDirectory(self.link)
        self.commands = CommandSender(self.link, signing_key)
        self._stop = threading.Event()
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None

    def _status(self) -> StatusBody:
        versions = {
            p.model_name: v for p in self.config.rounds if (v := self.registry.latest_version(p.model_name)) is not None
        }
        return StatusBody(
            state="online",
            role=Role.HUB,
            software_version=__version__,
            model_versions=versions,
            rounds=self.rounds.summaries(),
            backlogs={
                "partial_updates": len(self.inbox.assembler.idle_partials(0.0)),
                "publications": self.publications.pending(),
            },
        )

    def _announce(self, body: RoundAnnouncementBody) -> None:
        try:
            self.link.publish(
                self.link.topics.round(body.model_name),
                RoundAnnouncementMessage(sender=self.config.hub_id, body=body),
                retain=True,
            )
        except LinkError as exc:
            log.warning("round announcement not sent", extra={"round_id": body.round_id, "error": str(exc)})

    def _publish(self, version: ModelVersion) -> None:
        """Export (where the line serves ONNX), sign and broadcast ``version``: the publication worker's job."""
        name, number = version.manifest.name, version.manifest.version
        if MODEL_FILE not in version.manifest.files and self.registry.serves_onnx(name):
            exported = export_version_onnx(
                self.registry, version, self.config.data_dir / "export-work", timeout_s=self.config.export_timeout_s
            )
            if exported is None:
                return  # logged; edges keep serving the version they have
            version = exported
        work = self.config.data_dir / "publish-work"
        files = self.registry.export_bundle_files(name, number, work)
        self.publisher.publish(version.manifest, files)

    def rollback(self, name: str, to_version: int) -> ModelVersion:
        """Make an earlier version current again: a new version with its weights, queued to be signed and
        distributed."""
        version = self.registry.rollback(name, to_version)
        log.warning(
            "model rolled back",
            extra={"model": name, "to_version": to_version, "new_version": version.manifest.version},
        )
        self.publications.submit(version)
        return version

    def queue_unpublished(self) -> list[str]:
        """Queue every line whose newest version (after version 0, which edges get with their install) was never
        published: one a stop or crash caught between aggregation and broadcast. Returns "line vN" of each."""
        queued = []
        for name in self.registry.model_names():
            newest = self.registry.latest_version(name)
            if newest and not self.publisher.has_published(model_transfer_id(name, newest)):
                self.publications.submit(self.registry.get(name, newest))
                queued.append(f"{name} v{newest}")
        if queued:
            log.warning("publishing versions a previous run registered but never sent", extra={"versions": queued})
        return queued

    def _rejected(self, edge_id: str, transfer_id: str, error: RejectedError) -> None:
        self.rounds.record_rejection(edge_id, error, transfer_id=transfer_id)

    def start(self) -> None:
        self.link.start()
        self.inbox.start()
        http = uvicorn.Config(
            create_app(
                self,
                tokens=TokenStore(api_tokens_file(self.config.http, self.config.data_dir)),
                trusted_hosts=self.config.http.trusted_hosts,
                https_only=pages_need_https(self.config.http),
            ),
            **server_options(self.config.http),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",  # no websockets endpoints; avoids importing the websockets stack
        )
        self._http = uvicorn.Server(http)
        self._http_thread = threading.Thread(target=self._http.run, name="hub-http", daemon=True)
        self._http_thread.start()
        log.info("hub api listening", extra={"address": f"{self.config.http.host}:{self.config.http.port}"})

    def run(self) -> None:
        """Serve until ``stop()``: open planned rounds, then enforce deadlines every tick."""
        self.start()
        try:
            self.link.wait_connected(timeout=self.config.broker.keepalive_s * 2)
        except LinkError as exc:
            log.warning("broker not reachable yet; continuing and retrying", extra={"error": str(exc)})
        self.rounds.tick()  # finish what a previous run left (interrupted aggregation, passed deadlines)
        self.queue_unpublished()
        for plan in self.config.rounds:
            self.rounds.open_planned(plan.model_name)
        systemd = Notifier()
        systemd.ready(f"serving {len(self.config.rounds)} model line(s)")
        interval = min(self.config.tick_interval_s, systemd.watchdog_interval_s or self.config.tick_interval_s)
        while not self._stop.wait(interval):
            try:
                self.rounds.tick()
            except Exception:
                log.exception("round tick failed")
                continue  # no watchdog ping: systemd restarts a hub whose loop keeps failing
            systemd.watchdog()
        systemd.stopping()
        self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._http is not None and self._http_thread is not None:
            self._http.should_exit = True
            self._http_thread.join(timeout=10)
        self.inbox.close()
        self.publications.close()
        self.publisher.close()
        self.link.stop()
