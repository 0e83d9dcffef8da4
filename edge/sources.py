"""Image sources besides HTTP: a watched folder (each new image inspected once, also across restarts) and an
MQTT topic carrying raw image bytes.

A file counts as new until the buffer records it as handled, in the same transaction as its inspection; a file
that cannot be inspected (corrupt, too large) is recorded with the reason and not tried again. A file replaced
under the same name (other size or modification time) is a new file. Files still being written (changed within
``settle_s``) wait for the next scan. Images that need a golden template the edge cannot find (none named, an
unknown id, an unreadable template file) are not refused: the folder waits, logs why once, and goes on when the
templates folder or the configuration is mended. The folder's images use ``sources.folder.template`` (else
``inspection.default_template``); MQTT images use the default template.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edge.buffer.samples import SeenFile
from edge.inspection import TEMPLATE_SETUP_REASONS, BusyError, InspectionService, IntakeError
from runtime.mqtt import MqttLink, ReceivedMessage
from schemas.config import FolderSourceConfig

log = logging.getLogger(__name__)


class FolderSource:
    def __init__(self, config: FolderSourceConfig, service: InspectionService) -> None:
        self.config = config
        self.service = service
        self.inspected = 0
        self.refused = 0
        self._extensions = {e.lower() for e in config.extensions}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.waiting_for: str | None = None
        """Why the folder is not being inspected (a missing template), until that is mended."""

    def start(self) -> None:
        self.config.path.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="folder-source", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
            except OSError as exc:  # the folder vanished or is unreadable: say so and keep watching
                log.error("folder scan failed", extra={"folder": str(self.config.path), "error": str(exc)})
            self._stop.wait(self.config.poll_interval_s)

    def _candidates(self) -> list[tuple[Path, SeenFile]]:
        now = time.time()
        found = []
        for path in self.config.path.iterdir():
            if path.name.startswith(".") or path.suffix.lower() not in self._extensions:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # removed between listing and stat
            if not path.is_file() or now - stat.st_mtime < self.config.settle_s:
                continue
            found.append((path, SeenFile(str(path.resolve()), stat.st_size, stat.st_mtime_ns)))
        return sorted(found, key=lambda item: (item[1].mtime_ns, item[1].path))

    def _wait_for(self, reason: str | None) -> None:
        if reason != self.waiting_for:  # logged once per change, not at every poll
            if reason is None:
                log.info("folder inspection resumed", extra={"folder": str(self.config.path)})
            else:
                log.error(
                    "folder images wait for their template", extra={"folder": str(self.config.path), "error": reason}
                )
        self.waiting_for = reason

    def scan_once(self) -> int:
        """Inspect every new, settled image in the folder, oldest first; returns how many were handled."""
        handled = 0
        candidates = self._candidates()
        known = self.service.buffer.samples.already_seen([seen for _, seen in candidates])
        for path, seen in candidates:
            if self._stop.is_set():
                break
            if seen.path in known:
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("image file unreadable", extra={"file": str(path), "error": str(exc)})
                continue
            try:
                inspected = self.service.inspect(
                    data, source="folder", name=path.name, seen=seen, template=self.config.template
                )
            except BusyError:
                break  # HTTP has the intake full; the next scan continues here
            except IntakeError as exc:
                if exc.reason in TEMPLATE_SETUP_REASONS:
                    # the templates folder or the configuration is wrong, not the file: keep it for later scans
                    self._wait_for(str(exc))
                    break
                self.service.buffer.samples.mark_refused(seen, str(exc))
                self.refused += 1
            else:
                self._wait_for(None)
                self.inspected += 1
                log.debug("folder image inspected", extra={"file": str(path), "sample_id": inspected.stored.sample_id})
            handled += 1
        return handled


class MqttImageSource:
    """Inspects raw image bytes published on ``edge/{id}/images``; refusals are counted and logged (no reply)."""

    def __init__(self, link: MqttLink, edge_id: str, service: InspectionService) -> None:
        self.service = service
        self.topic = link.topics.edge_images(edge_id)
        link.subscribe(self.topic, self._on_image)

    def _on_image(self, message: ReceivedMessage[bytes]) -> None:
        try:
            inspected = self.service.inspect(message.payload, source="mqtt", name=message.topic)
        except (IntakeError, BusyError) as exc:
            log.warning("mqtt image not inspected", extra={"topic": message.topic, "error": str(exc)})
            return
        log.debug("mqtt image inspected", extra={"sample_id": inspected.stored.sample_id})
