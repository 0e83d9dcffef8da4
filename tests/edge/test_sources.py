"""The watched folder: each new image once, also across restarts; bad files refused once; partial files wait."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from edge.buffer import EdgeBuffer
from edge.db import open_edge_database
from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from edge.inference.pipeline import InspectionPipeline
from edge.inference.templates import TemplateStore
from edge.inspection import InspectionService
from edge.sources import FolderSource
from edge.tables import SampleRow
from schemas.bundle import MODEL_FILE
from schemas.config import FolderSourceConfig, InferenceConfig, InspectionConfig, IntakeConfig, ReviewConfig
from tests.support.models import blob_samples

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")


def make_source(classifier_bundle: Path, root: Path, **folder: object) -> FolderSource:
    classifier = Classifier.load(classifier_bundle / MODEL_FILE, InferenceConfig(), cache_dir=root / "cache")
    buffer = EdgeBuffer(open_edge_database(root / "buffer.db"), root / "images")
    service = InspectionService(
        InspectionPipeline(classifier, None, InspectionConfig()),
        buffer,
        edge_id="line-1",
        intake=IntakeConfig(max_image_bytes=50_000),
        review=ReviewConfig(),
        event_topic="t/v1/edge/line-1/events",
    )
    options: dict[str, object] = {"settle_s": 0, **folder}
    return FolderSource(FolderSourceConfig.model_validate({"path": root / "incoming", **options}), service)


def write_old(path: Path, data: bytes, age_s: float = 5.0) -> None:
    path.write_bytes(data)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_each_image_once_even_after_a_restart(classifier_bundle: Path, tmp_path: Path) -> None:
    source = make_source(classifier_bundle, tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    images, _ = blob_samples(3, seed=51)
    for index, image in enumerate(images):
        write_old(incoming / f"board-{index}.png", bytes(cv2.imencode(".png", image)[1]), age_s=10 - index)
    (incoming / "notes.txt").write_text("not an image")
    (incoming / ".partial.png").write_bytes(b"hidden temp file")
    assert source.scan_once() == 3
    assert source.service.buffer.samples.count() == 3 and source.service.buffer.outbox.backlog() == 3
    assert source.scan_once() == 0, "nothing new"

    restarted = make_source(classifier_bundle, tmp_path)
    assert restarted.scan_once() == 0, "a restart does not inspect the same files again"
    write_old(incoming / "board-1.png", bytes(cv2.imencode(".png", images[0])[1]), age_s=1)  # replaced file
    assert restarted.scan_once() == 1
    assert restarted.service.buffer.samples.count() == 4


def test_bad_files_are_refused_once_and_unsettled_files_wait(classifier_bundle: Path, tmp_path: Path) -> None:
    source = make_source(classifier_bundle, tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_old(incoming / "corrupt.jpg", b"\xff\xd8\xff garbage")
    write_old(incoming / "huge.png", b"\x00" * 60_000)
    assert source.scan_once() == 2
    assert source.refused == 2 and source.service.buffer.samples.count() == 0
    assert source.scan_once() == 0, "a refused file is not tried again"
    assert source.service.counts()[1] == {"undecodable": 1, "too_large": 1}

    settling = make_source(classifier_bundle, tmp_path / "second", settle_s=30)
    (tmp_path / "second" / "incoming").mkdir(parents=True)
    (tmp_path / "second" / "incoming" / "fresh.png").write_bytes(
        bytes(cv2.imencode(".png", np.zeros((16, 16), np.uint8))[1])
    )
    assert settling.scan_once() == 0, "a file written just now may still be being written"


def test_images_wait_for_a_missing_template_and_are_inspected_once_it_exists(
    classifier_bundle: Path, composite_detector_bundle: Path, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    config = InferenceConfig()
    service = InspectionService(
        InspectionPipeline(
            Classifier.load(classifier_bundle / MODEL_FILE, config, cache_dir=tmp_path),
            Detector.load(composite_detector_bundle / MODEL_FILE, config, cache_dir=tmp_path),
            InspectionConfig(templates_dir=templates),
        ),
        EdgeBuffer(open_edge_database(tmp_path / "buffer.db"), tmp_path / "images"),
        edge_id="line-1",
        intake=IntakeConfig(),
        review=ReviewConfig(),
        event_topic="t/v1/edge/line-1/events",
        templates=TemplateStore(templates),
    )
    folder = FolderSourceConfig(path=tmp_path / "incoming", settle_s=0, template="board-a")
    source = FolderSource(folder, service)
    folder.path.mkdir()
    images, _ = blob_samples(2, seed=52)
    write_old(folder.path / "board-1.png", bytes(cv2.imencode(".png", images[1])[1]))
    assert source.scan_once() == 0 and source.refused == 0
    assert source.waiting_for is not None and "no template 'board-a'" in source.waiting_for
    assert source.scan_once() == 0, "still waiting, and the file is not marked refused"
    cv2.imwrite(str(templates / "board-a.png"), images[0])
    assert source.scan_once() == 1 and source.waiting_for is None
    with Session(service.buffer.engine) as session:
        assert list(session.scalars(select(SampleRow.template_id))) == ["board-a"], "kept with its template"
