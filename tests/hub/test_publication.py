"""The publication queue: one worker, a line's newest version only, failures logged, broker outages retried."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hub.publication import PublicationQueue
from hub.registry import ModelVersion
from schemas.errors import LinkError
from tests.schemas import samples


def version(number: int, name: str = "pcb-detector") -> ModelVersion:
    manifest = samples.model_manifest().model_copy(update={"name": name, "version": number})
    return ModelVersion(manifest, None, None, [], 0, {}, Path("unused"))


def published_as(versions: list[ModelVersion]) -> list[tuple[str, int]]:
    return [(v.manifest.name, v.manifest.version) for v in versions]


class Recorder:
    """A publish callable that records what it was given and can be held on the first call."""

    def __init__(self) -> None:
        self.published: list[ModelVersion] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, v: ModelVersion) -> None:
        self.started.set()
        assert self.release.wait(10)
        self.published.append(v)


def test_submit_returns_while_a_publication_runs_and_a_newer_version_overtakes_a_queued_one() -> None:
    recorder = Recorder()
    recorder.release.clear()
    queue = PublicationQueue(recorder)
    try:
        queue.submit(version(1))
        assert recorder.started.wait(5)
        began = time.monotonic()
        queue.submit(version(2))  # v1 is being published: these only queue
        queue.submit(version(3))
        queue.submit(version(2))  # older than the queued v3: ignored
        queue.submit(version(1, name="pcb-classifier"))
        assert time.monotonic() - began < 0.5
        assert queue.pending() == 3  # v1 in progress, v3 of the detector, v1 of the classifier
        recorder.release.set()
        assert queue.wait_idle(10)
        assert published_as(recorder.published) == [("pcb-detector", 1), ("pcb-detector", 3), ("pcb-classifier", 1)]
        assert queue.pending() == 0
    finally:
        queue.close()


def test_a_failed_publication_is_logged_and_the_next_version_is_published(caplog: pytest.LogCaptureFixture) -> None:
    published: list[ModelVersion] = []

    def publish(v: ModelVersion) -> None:
        if v.manifest.name == "broken":
            raise ValueError("export exploded")
        published.append(v)

    queue = PublicationQueue(publish)
    try:
        queue.submit(version(4, name="broken"))
        queue.submit(version(1))
        assert queue.wait_idle(10)
        assert published_as(published) == [("pcb-detector", 1)]
        failed = [r for r in caplog.records if r.getMessage() == "model version not published"]
        assert [(r.model, r.version) for r in failed] == [("broken", 4)]  # type: ignore[attr-defined]
    finally:
        queue.close()


def test_a_broker_outage_is_retried_until_the_version_is_sent() -> None:
    attempts: list[int] = []

    def publish(v: ModelVersion) -> None:
        attempts.append(v.manifest.version)
        if len(attempts) < 3:
            raise LinkError("broker unreachable")

    queue = PublicationQueue(publish, retry_after_s=0.05)
    try:
        queue.submit(version(5))
        assert queue.wait_idle(10)
        assert attempts == [5, 5, 5]
    finally:
        queue.close()


def test_close_drops_what_is_queued_and_refuses_more(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    recorder.release.clear()
    queue = PublicationQueue(recorder)
    queue.submit(version(1))
    assert recorder.started.wait(5)
    queue.submit(version(2, name="pcb-classifier"))
    releaser = threading.Timer(0.2, recorder.release.set)
    releaser.start()
    queue.close(timeout_s=10)  # waits for v1, which is being published; the classifier's v2 is left
    queue.submit(version(3))
    assert published_as(recorder.published) == [("pcb-detector", 1)]
    assert any(r.getMessage().startswith("model versions left unpublished at stop") for r in caplog.records)
    assert any(r.getMessage().startswith("model version not queued: the hub is stopping") for r in caplog.records)
