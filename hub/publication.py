"""Publication of new global versions off the round lock: one worker exports, signs and broadcasts each version.

Aggregation commits a version to the registry and hands it to ``PublicationQueue.submit``, which returns at once:
neither the transfer worker that completed a round nor the main loop's tick, which pings systemd's watchdog, waits
for an ONNX export (a child process that may run for ``export_timeout_s``) or a chunk broadcast. Only a line's
newest version is worth sending: edges install versions forward only and the publisher answers fetches for the
newest alone, so a queued version that a newer one of its line overtakes is dropped. A hub stopped between
aggregation and broadcast loses nothing: at start the service queues every line whose newest version was never
published (``HubService.queue_unpublished``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hub.registry import ModelRegistry, ModelVersion
from schemas.bundle import MODEL_FILE
from schemas.errors import LinkError

log = logging.getLogger(__name__)


class PublicationQueue:
    """Versions waiting to be published, a line's newest only, and the one thread that publishes them in the
    order their lines were queued. ``publish`` exports, signs and broadcasts one version; what it raises is logged
    and the worker goes on with the next (the edges keep serving the version they have), except a ``LinkError``
    (the broker unreachable): that version is tried again after ``retry_after_s`` unless a newer one came."""

    def __init__(self, publish: Callable[[ModelVersion], None], *, retry_after_s: float = 30.0) -> None:
        self._publish = publish
        self._retry_after_s = retry_after_s
        self._pending: dict[str, ModelVersion] = {}  # line -> its newest unpublished version (insertion-ordered)
        self._busy: str | None = None  # "line vN" being published
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="hub-publication", daemon=True)
        self._thread.start()

    def submit(self, version: ModelVersion) -> None:
        """Queue ``version`` for publication (replacing an older queued version of its line); returns at once."""
        name, number = version.manifest.name, version.manifest.version
        with self._changed:
            if self._stopping:
                log.warning(
                    "model version not queued: the hub is stopping; it is published at the next start",
                    extra={"model": name, "version": number},
                )
                return
            queued = self._pending.get(name)
            if queued is not None and queued.manifest.version >= number:
                return
            if queued is not None:
                log.info(
                    "queued model version overtaken before publication",
                    extra={"model": name, "version": queued.manifest.version, "newer": number},
                )
            self._pending[name] = version
            self._changed.notify_all()
        log.info("model version queued for publication", extra={"model": name, "version": number})

    def pending(self) -> int:
        """Versions queued or being published now."""
        with self._changed:
            return len(self._pending) + (self._busy is not None)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or being published; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._pending or self._busy is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking versions and wait up to ``timeout_s`` for the one being published; what is still queued is
        published at the next start."""
        with self._changed:
            self._stopping = True
            left = [f"{v.manifest.name} v{v.manifest.version}" for v in self._pending.values()]
            self._pending.clear()
            self._changed.notify_all()
        if left:
            log.warning("model versions left unpublished at stop; published at the next start", extra={"left": left})
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("publication still running at stop", extra={"version": self._busy})

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return
                name = next(iter(self._pending))
                version = self._pending.pop(name)
                self._busy = f"{name} v{version.manifest.version}"
            started = time.monotonic()
            try:
                self._publish(version)
            except LinkError as exc:
                log.warning(
                    "model version not published: broker unreachable; trying again",
                    extra={"model": name, "version": version.manifest.version, "error": str(exc)},
                )
                self._retry_later(version)
            except Exception:
                log.exception("model version not published", extra={"model": name, "version": version.manifest.version})
            else:
                log.info(
                    "model version publication done",
                    extra={
                        "model": name,
                        "version": version.manifest.version,
                        "seconds": round(time.monotonic() - started, 3),
                    },
                )
            finally:
                with self._changed:
                    self._busy = None
                    self._changed.notify_all()

    def _retry_later(self, version: ModelVersion) -> None:
        with self._changed:  # still counted busy: wait_idle does not return while a retry is due
            self._changed.wait_for(lambda: self._stopping, self._retry_after_s)
            if not self._stopping:
                self._pending.setdefault(version.manifest.name, version)  # a newer version queued meanwhile wins
                self._changed.notify_all()


def export_version_onnx(
    registry: ModelRegistry, version: ModelVersion, work_dir: Path, *, timeout_s: float
) -> ModelVersion | None:
    """Export a registered version's model.onnx in a child process and attach it; None (logged) when it fails."""
    import shutil

    from exporters.errors import ExportError
    from exporters.rebuild import export_in_child

    name, number = version.manifest.name, version.manifest.version
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir = work_dir / f"{name}-v{number}"
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        exported = export_in_child(version.manifest, version.weights_path, out_dir, timeout_s=timeout_s)
        if exported.export is None:
            raise ExportError(f"{name} v{number}: the exporter reported no parity figure")
        return registry.attach_onnx(name, number, out_dir / MODEL_FILE, exported.export)
    except ExportError as exc:
        log.error(
            "model version not exported; not published", extra={"model": name, "version": number, "error": str(exc)}
        )
        return None
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
