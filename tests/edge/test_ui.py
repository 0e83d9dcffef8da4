"""The edge's web pages (edge.ui, runtime.web): login, roles, CSRF and HTTPS in process, and an operator labeling
in a real browser (Debian's chromium through Playwright) against a real server."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge.api import Readiness, create_app
from edge.buffer.labels import is_holdout
from edge.inspection import InspectionService
from edge.training.scheduler import TrainingStatus
from fedinspect.devbroker import free_port
from runtime.access import ApiRole, TokenStore
from runtime.web_sessions import CSRF_HEADER, SESSION_COOKIE
from schemas.config import HttpConfig
from tests.conftest import ARTEFACTS_DIR
from tests.support.access import LOCAL_BASE_URL, bearer
from tests.support.models import blob_samples
from tests.support.processes import serving

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")


def readiness() -> Readiness:
    return Readiness(models={}, database_ok=True, watchdog_ok=True, watchdog_reason=None, broker_connected=False)


def png(image: object) -> bytes:
    return bytes(cv2.imencode(".png", image)[1])


@pytest.fixture
def tokens(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "api-tokens.json")


def app_for(service: InspectionService, tokens: TokenStore, *, https_only: bool = False) -> FastAPI:
    return create_app(
        service, readiness=readiness, tokens=tokens, trusted_hosts=HttpConfig().trusted_hosts, https_only=https_only
    )


def fill_queue(client: TestClient, token: str, count: int = 6) -> list[dict[str, object]]:
    images, _ = blob_samples(count, seed=61)
    for image in images:
        answer = client.post("/v1/inspect", content=png(image), headers={"content-type": "image/png", **bearer(token)})
        assert answer.status_code == 200, answer.text
    pending = client.get("/v1/review", headers=bearer(token)).json()
    assert pending, "the blob images leave something to review"
    return list(pending)


def log_in(client: TestClient, token: str) -> str:
    """Logs the client in; returns the CSRF token of its session, read from the page as the script reads it."""
    answer = client.post("/ui/login", data={"token": token, "next": "/ui/review"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/review"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/ui/review")
    assert page.status_code == 200
    marker = '<meta name="csrf-token" content="'
    return page.text.split(marker, 1)[1].split('"', 1)[0]


def stored_labels(service: InspectionService, sample_id: str) -> list[tuple[str, list[dict[str, Any]], str]]:
    database = Path(str(service.buffer.samples.engine.url.database))
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT verdict, boxes_json, author FROM labels WHERE sample_id = ? ORDER BY id", (sample_id,)
        ).fetchall()
    return [(verdict, json.loads(boxes), author) for verdict, boxes, author in rows]


def test_a_visitor_is_sent_to_login_and_a_bad_token_is_refused(service: InspectionService, tokens: TokenStore) -> None:
    with TestClient(app_for(service, tokens), base_url=LOCAL_BASE_URL) as client:
        assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/review"
        first = client.get("/ui/review", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/ui/login?next=/ui/review"
        refused = client.post("/ui/login", data={"token": "fi_not-a-token"}, follow_redirects=False)
        assert refused.status_code == 401 and "not valid here" in refused.text
        assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")
        away = client.post(
            "/ui/login",
            data={"token": tokens.add("anna", ApiRole.VIEWER), "next": "//evil.example/x"},
            follow_redirects=False,
        )
        assert away.headers["location"] == "/ui/review", "login never redirects off this site"


def test_an_operator_labels_through_the_session_with_its_csrf_token(
    service: InspectionService, tokens: TokenStore
) -> None:
    operator = tokens.add("anna", ApiRole.OPERATOR)
    with TestClient(app_for(service, tokens), base_url=LOCAL_BASE_URL) as client:
        item = fill_queue(client, operator)[0]
        csrf = log_in(client, operator)
        queue = client.get("/ui/review")
        assert f'data-sample="{item["sample_id"]}"' in queue.text
        assert queue.headers["content-security-policy"].startswith("default-src 'self'")
        page = client.get(f"/ui/review/{item['sample_id']}")
        assert page.status_code == 200 and 'id="defective"' in page.text
        body = {"verdict": "defective", "boxes": [{"x1": 5, "y1": 6, "x2": 20, "y2": 30, "class_name": "ellipse"}]}
        path = f"/v1/samples/{item['sample_id']}/label"
        forged = client.post(path, json=body)  # what another site's script or form can send: the cookie, no token
        assert forged.status_code == 403 and forged.json()["reason"] == "csrf"
        wrong = client.post(path, json=body, headers={CSRF_HEADER: "guessed"})
        assert wrong.status_code == 403
        cross_site_form = client.post(path, data={"verdict": "good"})
        assert cross_site_form.status_code == 403
        assert stored_labels(service, str(item["sample_id"])) == []
        saved = client.post(path, json=body | {"author": "somebody else"}, headers={CSRF_HEADER: csrf})
        assert saved.status_code == 200, saved.text
        assert stored_labels(service, str(item["sample_id"])) == [("defective", body["boxes"], "anna")]
        logout_without_token = client.post("/ui/logout", data={}, follow_redirects=False)
        assert logout_without_token.status_code == 403
        assert client.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
        assert client.get("/ui/review", follow_redirects=False).status_code == 303, "the session ended"


def test_a_viewer_sees_but_cannot_label_and_a_revoked_login_ends(
    service: InspectionService, tokens: TokenStore
) -> None:
    operator, viewer = tokens.add("anna", ApiRole.OPERATOR), tokens.add("ben", ApiRole.VIEWER)
    with TestClient(app_for(service, tokens), base_url=LOCAL_BASE_URL) as client:
        item = fill_queue(client, operator)[0]
        csrf = log_in(client, viewer)
        page = client.get(f"/ui/review/{item['sample_id']}")
        assert page.status_code == 200 and 'id="read-only"' in page.text
        assert 'id="confirm"' not in page.text and 'id="defective"' not in page.text
        label = client.post(
            f"/v1/samples/{item['sample_id']}/label", json={"verdict": "good"}, headers={CSRF_HEADER: csrf}
        )
        assert label.status_code == 403 and "needs the operator role" in label.json()["detail"]
        assert tokens.revoke("ben")
        assert client.get("/ui/review", follow_redirects=False).status_code == 303
        assert client.get("/v1/review").status_code == 401


def test_pages_bound_beyond_loopback_refuse_plain_http(service: InspectionService, tokens: TokenStore) -> None:
    token = tokens.add("anna", ApiRole.OPERATOR)
    with TestClient(app_for(service, tokens, https_only=True), base_url=LOCAL_BASE_URL) as client:
        for path in ("/ui/login", "/ui/review"):
            answer = client.get(path, follow_redirects=False)
            assert answer.status_code == 403 and "HTTPS only" in answer.text
        assert client.post("/ui/login", data={"token": token}, follow_redirects=False).status_code == 403
    with TestClient(app_for(service, tokens, https_only=True), base_url="https://localhost") as client:
        assert client.get("/ui/login").status_code == 200
        answer = client.post("/ui/login", data={"token": token}, follow_redirects=False)
        assert answer.status_code == 303 and "secure" in answer.headers["set-cookie"].lower()


def test_the_live_view_shows_the_latest_inspections_with_boxes_verdicts_and_model_versions(
    service: InspectionService, tokens: TokenStore
) -> None:
    operator = tokens.add("anna", ApiRole.OPERATOR)
    with TestClient(app_for(service, tokens), base_url=LOCAL_BASE_URL) as client:
        log_in(client, tokens.add("ben", ApiRole.VIEWER))
        assert 'id="empty"' in client.get("/ui/live").text
        images, _ = blob_samples(5, seed=62)
        inspected = []
        for image in images:
            answer = client.post(
                "/v1/inspect", content=png(image), headers={"content-type": "image/png", **bearer(operator)}
            )
            inspected.append(answer.json())
        page = client.get("/ui/live").text
    shown = [chunk.split('"', 1)[0] for chunk in page.split('data-sample="')[1:]]
    assert shown == [result["sample_id"] for result in reversed(inspected)], "the newest first"
    assert page.count('<rect class="box"') == sum(len(result["boxes"]) for result in inspected) > 0
    for result in inspected:
        verdict = result["verdict"]
        assert f'data-sample="{result["sample_id"]}" data-verdict="{verdict}"' in page
    for name, version in service.pipeline.model_versions.items():
        assert f"{name} v{version}" in page
    assert '<meta http-equiv="refresh"' in page


TRAINING_NOW = TrainingStatus("run-3", "pcb-classifier", 2, 5, {"uploaded": 1}, 41.0, None)


@pytest.mark.parametrize(
    ("training", "said"),
    [(None, "Local training is off"), (TRAINING_NOW, "Training pcb-classifier now (run-3), epoch\n  2 of 5.")],
)
def test_the_status_page_shows_health_models_labels_to_train_and_the_last_runs(
    service: InspectionService, tokens: TokenStore, training: TrainingStatus | None, said: str
) -> None:
    operator = tokens.add("anna", ApiRole.OPERATOR)
    models = {"pcb-classifier": {"version": 3, "task": "classify", "provider": "CPUExecutionProvider"}}
    runs = [
        {
            "run_id": "run-2",
            "model": "pcb-classifier",
            "round_id": "pcb-classifier-r0004",
            "base_version": 3,
            "trigger": "round",
            "state": "uploaded",
            "started_at": "2026-12-04T05:00:00+00:00",
            "detail": None,
            "num_examples": 120,
            "metrics": {"before": {"accuracy": 0.91}, "after": {"accuracy": 0.97}},
        }
    ]
    app = create_app(
        service,
        readiness=lambda: Readiness(
            models=models, database_ok=True, watchdog_ok=True, watchdog_reason=None, broker_connected=False
        ),
        tokens=tokens,
        trusted_hosts=HttpConfig().trusted_hosts,
        training=(lambda: training) if training is not None else None,
        training_runs=lambda: runs,
    )
    with TestClient(app, base_url=LOCAL_BASE_URL) as client:
        queued = [str(i["sample_id"]) for i in fill_queue(client, operator, count=6)]
        label = {"verdict": "good", "boxes": []}
        for sample_id in queued:
            assert client.post(f"/v1/samples/{sample_id}/label", json=label, headers=bearer(operator)).is_success
        # a holdout label is never trained on: only the training side of the split counts
        untrained = sum(not is_holdout(sample_id) for sample_id in queued)
        log_in(client, operator)
        page = client.get("/ui/status").text
    assert 'id="ready">ready<' in page
    assert 'id="broker">disconnected<' in page
    assert '<tr data-model="pcb-classifier">' in page and '<td class="version">v3</td>' in page
    assert "CPUExecutionProvider" in page
    assert f'<b id="untrained">{untrained}</b>' in page and f"of {len(queued)} labeled samples" in page
    assert 'data-run="run-2"' in page and "accuracy 0.910" in page and '<td class="after">accuracy 0.970</td>' in page
    assert said in page


def test_next_walks_the_queue_in_the_order_the_queue_page_lists_it(
    service: InspectionService, tokens: TokenStore
) -> None:
    operator = tokens.add("anna", ApiRole.OPERATOR)
    with TestClient(app_for(service, tokens), base_url=LOCAL_BASE_URL) as client:
        fill_queue(client, operator, count=8)
        log_in(client, operator)
        queue = client.get("/ui/review").text
        listed = [chunk.split('"', 1)[0] for chunk in queue.split('data-sample="')[1:]]
        assert len(listed) >= 2
        following = []
        for sample_id in listed:
            page = client.get(f"/ui/review/{sample_id}").text
            data = json.loads(page.split('<script type="application/json" id="sample">', 1)[1].split("</script>", 1)[0])
            following.append(data["next"])
    assert following == listed[1:] + listed[:1], "each item's next is the one after it, the last wraps around"


# -- a real browser -------------------------------------------------------------------------------------------


@pytest.fixture
def served(service: InspectionService, tokens: TokenStore) -> Iterator[str]:
    """The edge's app on a real uvicorn server on loopback; yields its base URL."""
    port = free_port()
    with serving(app_for(service, tokens), host="127.0.0.1", port=port):
        yield f"http://127.0.0.1:{port}"


def test_an_operator_draws_a_box_names_its_class_and_saves_it_in_a_real_browser(
    service: InspectionService, tokens: TokenStore, served: str, browser: Any
) -> None:
    operator = tokens.add("anna", ApiRole.OPERATOR)
    with TestClient(app_for(service, tokens), base_url=LOCAL_BASE_URL) as client:
        item = fill_queue(client, operator)[0]
    sample_id = str(item["sample_id"])
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{served}/ui/review")
    assert page.url.startswith(f"{served}/ui/login")
    page.fill("#token", operator)
    page.click("#login")
    page.wait_for_url(f"{served}/ui/review")
    ARTEFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTEFACTS_DIR / "edge-review-queue.png"), full_page=True)
    page.click(f'a[data-sample="{sample_id}"]')
    page.wait_for_url(f"{served}/ui/review/{sample_id}")
    canvas = page.locator("#board")
    canvas.wait_for()
    page.wait_for_selector("#board[width]", state="attached")  # sized by the script (the page's CSP bars eval)
    # the blob images are 64 px, shown 8x: remove the predicted boxes, then draw (8, 10)-(40, 50) in image pixels
    while page.locator(".delete-box").count():
        page.locator(".delete-box").first.click()
    box = canvas.bounding_box()
    assert box is not None
    scale = box["width"] / 64
    page.select_option("#new-class", "rect")
    page.mouse.move(box["x"] + 8 * scale, box["y"] + 10 * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + 24 * scale, box["y"] + 30 * scale, steps=5)
    page.mouse.move(box["x"] + 40 * scale, box["y"] + 50 * scale, steps=5)
    page.mouse.up()
    page.locator(".box-class").first.select_option("ellipse")  # and name its class on the list
    page.click("#defective")
    page.wait_for_selector("#saved:text-matches('^Saved')")
    page.screenshot(path=str(ARTEFACTS_DIR / "edge-review-item.png"), full_page=True)
    [(verdict, boxes, author)] = stored_labels(service, sample_id)
    assert verdict == "defective" and author == "anna" and len(boxes) == 1
    assert boxes[0]["class_name"] == "ellipse"
    for key, expected in (("x1", 8), ("y1", 10), ("x2", 40), ("y2", 50)):
        assert abs(float(boxes[0][key]) - expected) <= 1, (key, boxes[0])  # within a pixel, in image pixels
    assert requests and all(url.startswith(served) for url in requests), "no request leaves the machine"


def test_a_viewer_gets_no_label_buttons_in_a_real_browser(
    service: InspectionService, tokens: TokenStore, served: str, browser: Any
) -> None:
    operator, viewer = tokens.add("anna", ApiRole.OPERATOR), tokens.add("ben", ApiRole.VIEWER)
    with TestClient(app_for(service, tokens), base_url=LOCAL_BASE_URL) as client:
        sample_id = str(fill_queue(client, operator)[0]["sample_id"])
    page = browser.new_page()
    page.goto(f"{served}/ui/login")
    page.fill("#token", viewer)
    page.click("#login")
    page.goto(f"{served}/ui/review/{sample_id}")
    assert page.locator("#read-only").is_visible()
    assert page.locator("#confirm").count() == 0 and page.locator("#defective").count() == 0
    status = page.evaluate(
        """async (id) => (await fetch(`/v1/samples/${id}/label`, {method: 'POST', headers: {'Content-Type':
        'application/json', 'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content},
        body: JSON.stringify({verdict: 'good'})})).status""",
        sample_id,
    )
    assert status == 403
    assert stored_labels(service, sample_id) == []
    images: list[int] = []
    page.on("response", lambda response: images.append(response.status) if "/image" in response.url else None)
    page.goto(f"{served}/ui/live")
    page.wait_for_load_state("networkidle")
    assert page.locator(f'a.thumb[data-sample="{sample_id}"] svg image').count() == 1
    assert images and set(images) == {200}, "the thumbnails' images load with the viewer's session"
    ARTEFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTEFACTS_DIR / "edge-live.png"), full_page=True)
    page.click("nav a:text('Status')")
    page.wait_for_url(f"{served}/ui/status")
    assert page.locator("#ready").inner_text() in {"ready", "not ready"}
    page.screenshot(path=str(ARTEFACTS_DIR / "edge-status.png"), full_page=True)


def test_a_form_on_another_site_cannot_label_with_the_operators_session_in_a_real_browser(
    service: InspectionService, tokens: TokenStore, served: str, browser: Any
) -> None:
    """A page served from another origin (another port on this host: the same site, so the browser sends the
    session cookie) posts a label form to the edge; without the session's CSRF token it is refused."""
    import http.server
    import threading

    operator = tokens.add("anna", ApiRole.OPERATOR)
    with TestClient(app_for(service, tokens), base_url=LOCAL_BASE_URL) as client:
        sample_id = str(fill_queue(client, operator)[0]["sample_id"])
    target = f"{served}/v1/samples/{sample_id}/label"
    hostile = (
        f'<form id="f" method="post" action="{target}"><input name="verdict" value="good"></form>'
        "<script>document.getElementById('f').submit()</script>"
    ).encode()

    class HostilePage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(hostile)

        def log_message(self, *args: Any) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), HostilePage)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        page.goto(f"{served}/ui/login")
        page.fill("#token", operator)
        page.click("#login")
        page.wait_for_url(f"{served}/ui/review")
        with page.expect_response(target) as answered:
            page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        response = answered.value
        assert SESSION_COOKIE in response.request.all_headers().get("cookie", ""), "the browser sent the session"
        assert response.status == 403 and '"reason":"csrf"' in response.text()
    finally:
        other.shutdown()
    assert stored_labels(service, sample_id) == [], "nothing was labeled"
