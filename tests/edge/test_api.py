"""The edge HTTP API with real ONNX models and a real SQLite buffer: results, refusals, back-pressure, metrics."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edge.api import Readiness, create_app
from edge.buffer import EdgeBuffer
from edge.db import open_edge_database
from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from edge.inference.pipeline import InspectionPipeline
from edge.inference.templates import TemplateStore
from edge.inspection import InspectionService
from runtime.access import ApiRole
from schemas.bundle import MODEL_FILE
from schemas.config import HttpConfig, InferenceConfig, InspectionConfig, IntakeConfig, ReviewConfig
from tests.support.access import LOCAL_BASE_URL, api_routes, bearer, token_for
from tests.support.images import png_claiming
from tests.support.models import blob_samples

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")


def png(image: np.ndarray) -> bytes:
    return bytes(cv2.imencode(".png", image)[1])


def readiness() -> Readiness:
    return Readiness(
        models={"pcb-classifier": {"version": 0, "provider": "CPUExecutionProvider"}},
        database_ok=True,
        watchdog_ok=True,
        watchdog_reason=None,
        broker_connected=False,
    )


def api_client(service: InspectionService, tokens_file: Path, role: ApiRole = ApiRole.OPERATOR) -> TestClient:
    """A test client of the edge's API, holding a token of ``role``."""
    tokens, token = token_for(tokens_file, role, name=f"qa-{role.value}")
    app = create_app(service, readiness=readiness, tokens=tokens, trusted_hosts=HttpConfig().trusted_hosts)
    return TestClient(app, base_url=LOCAL_BASE_URL, headers=bearer(token))


@pytest.fixture
def client(service: InspectionService, tmp_path: Path) -> Iterator[TestClient]:
    with api_client(service, tmp_path / "api-tokens.json") as test_client:
        yield test_client


def test_raw_and_multipart_uploads_give_a_stored_result(client: TestClient, service: InspectionService) -> None:
    images, _ = blob_samples(2, seed=21)
    raw = client.post("/v1/inspect", content=png(images[1]), headers={"content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["verdict"] in ("good", "defective") and body["source"] == "http"
    assert body["image_width"] == 64 and body["model_versions"] == {"pcb-classifier": 0, "pcb-detector": 0}
    form = client.post("/v1/inspect", files={"image": ("board.png", png(images[0]), "image/png")})
    assert form.status_code == 200, form.text
    assert service.buffer.samples.count() == 2 and service.buffer.outbox.backlog() == 2
    assert service.buffer.images.path(body["image_sha256"]).read_bytes() == png(images[1])


@pytest.mark.parametrize(
    ("content", "content_type", "status", "reason"),
    [
        (b"", "image/png", 400, "empty"),
        (b"just some text, not an image", "image/jpeg", 422, "undecodable"),
        ("truncated-jpeg", "image/jpeg", 422, "undecodable"),
        ("huge-header", "image/png", 422, "undecodable"),
        (b"\x00" * 300_000, "application/octet-stream", 413, "too_large"),
        (b"hello", "text/plain", 415, "content_type"),
    ],
)
def test_bad_inputs_get_a_clear_4xx_and_the_next_image_still_works(
    client: TestClient, service: InspectionService, content: bytes | str, content_type: str, status: int, reason: str
) -> None:
    if content == "truncated-jpeg":
        full = bytes(cv2.imencode(".jpg", blob_samples(1, seed=3)[0][0])[1])
        content = full[:40]
    elif content == "huge-header":
        content = png_claiming(30000, 30000)
    assert isinstance(content, bytes)
    response = client.post("/v1/inspect", content=content, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["reason"] == reason and response.json()["detail"]
    assert service.buffer.samples.count() == 0, "nothing stored for a refused input"
    assert service.counts()[1][reason] == 1
    good = client.post("/v1/inspect", content=png(blob_samples(1, seed=4)[0][0]), headers={"content-type": "image/png"})
    assert good.status_code == 200 and service.buffer.samples.count() == 1


def test_full_intake_answers_503_with_retry_after(client: TestClient, service: InspectionService) -> None:
    for _ in range(2):  # take both slots, as two long inspections would
        assert service._slots.acquire(blocking=False)
    try:
        busy = client.post(
            "/v1/inspect", content=png(np.zeros((8, 8), np.uint8)), headers={"content-type": "image/png"}
        )
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    finally:
        service._slots.release()
        service._slots.release()
    assert (
        client.post(
            "/v1/inspect", content=png(np.zeros((8, 8), np.uint8)), headers={"content-type": "image/png"}
        ).status_code
        == 200
    )


def test_health_readiness_metrics_and_openapi(client: TestClient, service: InspectionService, tmp_path: Path) -> None:
    client.post("/v1/inspect", content=png(blob_samples(1, seed=5)[0][0]), headers={"content-type": "image/png"})
    client.post("/v1/inspect", content=b"", headers={"content-type": "image/png"})
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["broker_connected"] is False
    text = client.get("/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    images = {
        s.labels["verdict"]: s.value for s in families["fedinspect_edge_images"].samples if s.name.endswith("_total")
    }
    assert sum(images.values()) == 1
    refused = {
        s.labels["reason"]: s.value
        for s in families["fedinspect_edge_inputs_refused"].samples
        if s.name.endswith("_total")
    }
    assert refused == {"empty": 1}
    assert families["fedinspect_edge_outbox_backlog"].samples[0].value == 1
    assert families["fedinspect_edge_buffer_image_bytes"].samples[0].value > 0
    stage_counts = {
        s.labels["stage"]: s.value
        for s in families["fedinspect_edge_stage_seconds"].samples
        if s.name.endswith("_count")
    }
    assert stage_counts["classify"] == stage_counts["total"] == stage_counts["decode"] == 1
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (apt-get install prometheus; .ci/run does it)")
    else:
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    spec = client.get("/openapi.json").json()
    assert "/v1/inspect" in spec["paths"]


def test_concurrent_uploads_are_all_stored(client: TestClient, service: InspectionService) -> None:
    images, _ = blob_samples(6, seed=9)
    statuses: list[int] = []
    lock = threading.Lock()

    def upload(image: np.ndarray) -> None:
        response = client.post("/v1/inspect", content=png(image), headers={"content-type": "image/png"})
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=upload, args=(image,)) for image in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {200, 503}
    assert service.buffer.samples.count() == statuses.count(200)


def test_review_queue_image_with_boxes_and_labels(client: TestClient, service: InspectionService) -> None:
    images, _ = blob_samples(6, seed=61)
    for image in images:
        assert client.post("/v1/inspect", content=png(image), headers={"content-type": "image/png"}).status_code == 200
    pending = client.get("/v1/review").json()
    assert len(pending) == service.buffer.samples.review_backlog() > 0
    assert {item["severity"] for item in pending} <= {"alert", "uncertain"}
    item = pending[0]
    picture = client.get(f"/v1/samples/{item['sample_id']}/image")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    drawn = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_COLOR)
    plain = cv2.imdecode(
        np.frombuffer(client.get(f"/v1/samples/{item['sample_id']}/image?boxes=false").content, np.uint8),
        cv2.IMREAD_COLOR,
    )
    assert drawn.shape == plain.shape == (64, 64, 3)
    if item["boxes"]:
        assert not np.array_equal(drawn, plain), "predicted boxes are drawn"

    corrected = client.post(
        f"/v1/samples/{item['sample_id']}/label",
        json={
            "verdict": "defective",
            "boxes": [{"x1": 5, "y1": 5, "x2": 20, "y2": 30, "class_name": "ellipse"}],
            "author": "operator-1",
        },
    )
    assert corrected.status_code == 200, corrected.text
    assert service.buffer.labels.labeled_count() == 1
    assert item["sample_id"] not in [i["sample_id"] for i in client.get("/v1/review").json()]

    bad = client.post(
        f"/v1/samples/{item['sample_id']}/label",
        json={
            "verdict": "defective",
            "boxes": [{"x1": 30, "y1": 5, "x2": 20, "y2": 90, "class_name": "scratch"}],
            "author": "operator-1",
        },
    )
    assert bad.status_code == 422
    assert "corners out of order" in bad.json()["detail"] and "unknown class 'scratch'" in bad.json()["detail"]
    assert "outside the 64x64 image" in bad.json()["detail"]
    good_with_boxes = client.post(
        f"/v1/samples/{item['sample_id']}/label",
        json={"verdict": "good", "boxes": [{"x1": 1, "y1": 1, "x2": 2, "y2": 2, "class_name": "rect"}], "author": "a"},
    )
    assert good_with_boxes.status_code == 422
    missing = client.post("/v1/samples/s-doesnotexist/label", json={"verdict": "good", "author": "a"})
    assert missing.status_code == 404 and missing.json()["reason"] == "unknown_sample"
    assert client.get("/v1/samples/s-doesnotexist/image").status_code == 404
    assert service.buffer.labels.labeled_count() == 1, "refused labels store nothing"


def test_bulk_label_import_takes_each_file_on_its_own(client: TestClient, service: InspectionService) -> None:
    images, _ = blob_samples(4, seed=71)
    files = [
        ("images", ("a.png", png(images[0]), "image/png")),
        ("images", ("b.png", png(images[1]), "image/png")),
        ("images", ("c.png", png(images[2]), "image/png")),
        ("images", ("d.png", b"not an image", "image/png")),
        ("images", ("e.png", png(images[3]), "image/png")),
        ("labels", ("a.txt", b"1 0.5 0.5 0.25 0.25\n", "text/plain")),
        ("labels", ("b.txt", b"", "text/plain")),
        ("labels", ("d.txt", b"", "text/plain")),
        ("labels", ("e.txt", b"7 0.5 0.5 0.1 0.1\n", "text/plain")),
    ]
    response = client.post("/v1/labels/import", data={"format": "yolo", "author": "qa-lead"}, files=files)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["imported"] == 2 and len(report["sample_ids"]) == 2
    reasons = {item["file"]: item["reason"] for item in report["refused"]}
    assert set(reasons) == {"c.png", "d.png", "e.png"}
    assert "no label file c.txt" in reasons["c.png"] and "not a decodable image" in reasons["d.png"]
    assert "e.txt line 1: class 7" in reasons["e.png"]
    assert service.buffer.labels.labeled_count() == 2 and service.buffer.outbox.backlog() == 0, "imports send no events"
    pair = client.post(
        "/v1/labels/import",
        data={"format": "yolo", "author": "qa"},
        files=[
            ("images", ("board7_temp.png", png(images[2]), "image/png")),
            ("images", ("board7_test.png", png(images[3]), "image/png")),
            ("labels", ("board7_temp.txt", b"", "text/plain")),
            ("labels", ("board7_test.txt", b"1 0.5 0.5 0.25 0.25\n", "text/plain")),
        ],
    )
    assert pair.json()["imported"] == 2
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from edge.tables import SampleRow

    with Session(service.buffer.engine) as session:
        query = select(SampleRow.split_key).where(SampleRow.sample_id.in_(pair.json()["sample_ids"]))
        keys = list(session.scalars(query))
    assert keys == ["import:board7", "import:board7"], "a board's template and test image share their holdout side"

    deeppcb = client.post(
        "/v1/labels/import",
        data={"format": "deeppcb", "author": "qa"},
        files=[
            ("images", ("0001_test.png", png(images[0]), "image/png")),
            ("labels", ("0001.txt", b"1 1 10 10 1\n", "text/plain")),
        ],
    )
    assert deeppcb.status_code == 200
    assert "'open' is not a detector class" in deeppcb.json()["refused"][0]["reason"]
    bad = client.post("/v1/labels/import", data={"format": "coco", "author": "qa"}, files=files[:1])
    assert bad.status_code == 400 and bad.json()["reason"] == "bad_form"


def test_label_import_refuses_image_bombs_and_decodes_within_the_intake_slots(
    client: TestClient, service: InspectionService
) -> None:
    import threading

    images, _ = blob_samples(1, seed=72)
    bomb = png_claiming(10000, 10000, depth=16, colour=6)  # under the pixel cap; 800 MB decoded
    files = [
        ("images", ("bomb.png", bomb, "image/png")),
        ("images", ("ok.png", png(images[0]), "image/png")),
        ("labels", ("bomb.txt", b"", "text/plain")),
        ("labels", ("ok.txt", b"", "text/plain")),
    ]
    for _ in range(2):  # every intake slot busy, as two long inspections would keep them
        assert service._slots.acquire(blocking=False)
    answers: list[dict[str, object]] = []
    worker = threading.Thread(
        target=lambda: answers.append(
            client.post("/v1/labels/import", data={"format": "yolo", "author": "qa"}, files=files).json()
        )
    )
    worker.start()
    worker.join(timeout=1.0)
    assert worker.is_alive() and not answers, "the import waits for a slot instead of decoding beside them"
    service._slots.release()
    worker.join(timeout=30)
    service._slots.release()
    assert answers and answers[0]["imported"] == 1
    refused = answers[0]["refused"]
    assert isinstance(refused, list) and refused[0]["file"] == "bomb.png"
    assert "intake.max_decoded_bytes" in refused[0]["reason"]


def test_a_full_buffer_answers_507_and_reports_it_in_readiness(client: TestClient, service: InspectionService) -> None:
    service.buffer.images.hard_limit_bytes = 100  # as if the review queue had filled the hard cap
    image = png(blob_samples(1, seed=74)[0][0])
    answer = client.post("/v1/inspect", content=image, headers={"content-type": "image/png"})
    assert answer.status_code == 507 and answer.json()["reason"] == "buffer_full"
    assert "buffer.refuse_above_bytes (100)" in answer.json()["detail"]
    assert service.buffer.samples.count() == 0 and service.counts()[1]["buffer_full"] == 1
    metrics = client.get("/metrics").text
    assert 'fedinspect_edge_inputs_refused_total{reason="buffer_full"} 1.0' in metrics
    problem = service.buffer.images.storage_problem()
    state = Readiness(
        models={"pcb-classifier": {"version": 0}},
        database_ok=True,
        watchdog_ok=True,
        watchdog_reason=None,
        broker_connected=True,
        storage_problem=service.buffer.images.storage_problem(len(image)),
    )
    assert problem is None and state.storage_problem is not None and not state.ready
    service.buffer.images.hard_limit_bytes = None
    assert client.post("/v1/inspect", content=image, headers={"content-type": "image/png"}).status_code == 200


def test_bodies_over_their_limits_are_refused_before_anything_is_stored(
    client: TestClient, service: InspectionService
) -> None:
    # an import is bounded as a whole (intake.max_import_bytes, 1 MiB here), not only file by file
    images, _ = blob_samples(1, seed=73)
    many = [("images", (f"{i}.png", png(images[0]) + b"\x00" * 150_000, "image/png")) for i in range(8)]
    answer = client.post("/v1/labels/import", data={"format": "yolo", "author": "qa"}, files=many)
    assert answer.status_code == 413 and answer.json()["reason"] == "too_large"
    assert "1048576" in answer.json()["detail"]
    # an inspection's multipart body is bounded by max_image_bytes plus the form's own bytes
    large = client.post("/v1/inspect", files={"image": ("big.png", b"\x00" * 300_000, "image/png")})
    assert large.status_code == 413
    assert client.post("/v1/samples/x/label", content=b"{" + b" " * (2 * 1024**2) + b"}").status_code == 413
    assert service.buffer.samples.count() == 0 and service.buffer.labels.labeled_count() == 0


@pytest.fixture
def composite_client(
    classifier_bundle: Path, composite_detector_bundle: Path, tmp_path: Path
) -> Iterator[tuple[TestClient, InspectionService, Path]]:
    """An edge whose detector compares each image with its golden template, templates in tmp_path/templates."""
    templates = tmp_path / "templates"
    templates.mkdir()
    config = InferenceConfig()
    pipeline = InspectionPipeline(
        Classifier.load(classifier_bundle / MODEL_FILE, config, cache_dir=tmp_path),
        Detector.load(composite_detector_bundle / MODEL_FILE, config, cache_dir=tmp_path),
        InspectionConfig(templates_dir=templates),
    )
    service = InspectionService(
        pipeline,
        EdgeBuffer(open_edge_database(tmp_path / "buffer.db"), tmp_path / "images"),
        edge_id="line-1",
        intake=IntakeConfig(max_image_bytes=200_000, max_pending=2, max_import_bytes=1024**2),
        review=ReviewConfig(),
        event_topic="t/v1/edge/line-1/events",
        templates=TemplateStore(templates),
    )
    with api_client(service, tmp_path / "api-tokens.json") as test_client:
        yield test_client, service, templates


def test_an_image_is_inspected_against_the_template_it_names_and_kept_with_it(
    composite_client: tuple[TestClient, InspectionService, Path],
) -> None:
    client, service, templates = composite_client
    images, _ = blob_samples(2, seed=81)
    golden = png(images[0])
    (templates / "board-a.png").write_bytes(golden)
    upload = png(images[1])
    png_type = {"content-type": "image/png"}
    refusals = {
        "": ("no_template", "compares each image with its golden template, and this image names none"),
        "?template=board-b": ("unknown_template", "no template 'board-b' in"),
        "?template=..%2Fsecrets": ("unknown_template", "template id '../secrets' is not valid"),
    }
    for query, (reason, message) in refusals.items():
        refused = client.post(f"/v1/inspect{query}", content=upload, headers=png_type)
        assert refused.status_code == 422 and refused.json()["reason"] == reason, refused.text
        assert message in refused.json()["detail"]
    (templates / "small.png").write_bytes(png(images[0][:32]))
    mismatch = client.post("/v1/inspect?template=small", content=upload, headers=png_type)
    assert mismatch.status_code == 422 and mismatch.json()["reason"] == "template_mismatch"
    assert "image 64x64 and its template 64x32 differ in size" in mismatch.json()["detail"]
    assert service.buffer.samples.count() == 0, "nothing is stored for a refused image"
    assert service.counts()[1] == {"no_template": 1, "unknown_template": 2, "template_mismatch": 1}

    answer = client.post("/v1/inspect?template=board-a", content=upload, headers=png_type)
    assert answer.status_code == 200, answer.text
    sample_id = answer.json()["sample_id"]
    (templates / "board-a.png").write_bytes(png(images[1]))  # the plant replaces the template later
    service.buffer.labels.add(sample_id, verdict="good", boxes=[], source="operator", author="qa")
    [labeled] = service.buffer.labels.labeled_samples()
    assert labeled.template_path is not None and labeled.template_path.read_bytes() == golden, (
        "training compares with the template the inspection used"
    )


def test_imported_images_are_stored_with_their_templates(
    composite_client: tuple[TestClient, InspectionService, Path],
) -> None:
    client, service, templates = composite_client
    images, _ = blob_samples(3, seed=82)
    (templates / "board-a.png").write_bytes(png(images[2]))
    board = [("images", ("a.png", png(images[0]), "image/png")), ("labels", ("a.txt", b"", "text/plain"))]
    unnamed = client.post("/v1/labels/import", data={"format": "yolo", "author": "qa"}, files=board)
    assert unnamed.json()["imported"] == 0
    assert "the served models compare with golden templates" in unnamed.json()["refused"][0]["reason"]
    named = client.post(
        "/v1/labels/import", data={"format": "yolo", "author": "qa", "template": "board-a"}, files=board
    )
    assert named.json()["imported"] == 1, named.text
    pair = client.post(
        "/v1/labels/import",
        data={"format": "deeppcb", "author": "qa"},
        files=[
            ("images", ("0002_temp.png", png(images[1]), "image/png")),
            ("images", ("0002_test.png", png(images[0]), "image/png")),
            ("labels", ("0002.txt", b"", "text/plain")),
        ],
    )
    assert pair.json()["imported"] == 2, pair.text
    templates_of = {s.sample_id: s.template_path for s in service.buffer.labels.labeled_samples()}
    [named_id] = named.json()["sample_ids"]
    named_template = templates_of[named_id]
    assert named_template is not None and named_template.read_bytes() == png(images[2])
    for sample_id in pair.json()["sample_ids"]:
        path = templates_of[sample_id]
        assert path is not None and path.read_bytes() == png(images[1]), "a DeepPCB pair's own template"


def test_every_api_path_but_the_probes_needs_a_token_of_its_role(service: InspectionService, tmp_path: Path) -> None:
    from runtime.access import OPEN_PATHS

    with api_client(service, tmp_path / "api-tokens.json", ApiRole.VIEWER) as viewer:
        routes = api_routes(viewer.app)
        assert {path for _, path in routes} >= OPEN_PATHS | {"/v1/inspect", "/v1/review", "/v1/labels/import"}
        stranger = TestClient(viewer.app, base_url=LOCAL_BASE_URL)
        for method, template in routes:
            path = template.replace("{sample_id}", "s-unknown")
            anonymous = stranger.request(method, path)
            if template in OPEN_PATHS:
                assert anonymous.status_code == 200, (method, path)
                continue
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert anonymous.headers["www-authenticate"] == "Bearer"
            forged = stranger.request(method, path, headers=bearer("fi_not-a-token"))
            assert forged.status_code == 401, (method, path)
            as_viewer = viewer.request(method, path)
            if method == "GET":
                assert as_viewer.status_code in (200, 404), (method, path, as_viewer.text)
            else:  # inspecting, labeling and importing are the operator's
                assert as_viewer.status_code == 403, (method, path, as_viewer.text)
                assert "needs the operator role; qa-viewer is a viewer" in as_viewer.text
        # a page that reached the loopback API through DNS rebinding addresses it by its own name
        rebound = viewer.get("/v1/review", headers={"host": "attacker.example:8080"})
        assert rebound.status_code == 400
        assert viewer.get("/v1/review", headers={"host": "127.0.0.1:8080"}).status_code == 200
    # a revoked token stops working at once, in the running app
    tokens, token = token_for(tmp_path / "other-tokens.json", ApiRole.OPERATOR, name="line-camera")
    app = create_app(service, readiness=readiness, tokens=tokens, trusted_hosts=HttpConfig().trusted_hosts)
    with TestClient(app, base_url=LOCAL_BASE_URL, headers=bearer(token)) as camera:
        assert camera.get("/v1/review").status_code == 200
        assert tokens.revoke("line-camera")
        assert camera.get("/v1/review").status_code == 401
