"""The edge API's body limit: oversized bodies are refused with 413 before a form parser spools them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from runtime.http_access import BodyLimit, BodyTooLargeError

LIMIT = 64 * 1024


@pytest.fixture
def seen() -> list[int]:
    return []


@pytest.fixture
def client(seen: list[int]) -> Iterator[TestClient]:
    async def upload(request: Request) -> JSONResponse:
        try:
            form = await request.form()
        except BodyTooLargeError:
            raise
        except Exception:  # as the edge's handlers do: a parser error is the client's fault
            return JSONResponse({"reason": "bad_form"}, status_code=400)
        files = [item for item in form.getlist("file") if not isinstance(item, str)]
        total = 0
        for item in files:
            total += len(await item.read())
        seen.append(total)
        return JSONResponse({"bytes": seen[-1]})

    # installed as the edge's create_app installs it: a user middleware inside Starlette's error middleware
    app = Starlette(
        routes=[Route("/upload", upload, methods=["POST"])],
        middleware=[Middleware(BodyLimit, limit_for=lambda path: LIMIT)],
    )
    with TestClient(app) as test_client:
        yield test_client


def test_a_body_within_the_limit_reaches_the_handler(client: TestClient, seen: list[int]) -> None:
    answer = client.post("/upload", files={"file": ("a.bin", b"x" * 1000)})
    assert answer.status_code == 200 and answer.json() == {"bytes": 1000} and seen == [1000]


def test_a_declared_length_over_the_limit_is_refused_before_the_handler(client: TestClient, seen: list[int]) -> None:
    answer = client.post("/upload", files={"file": ("big.bin", b"x" * (LIMIT + 1))})
    assert answer.status_code == 413 and answer.json()["reason"] == "too_large"
    assert str(LIMIT) in answer.json()["detail"] and seen == []


def test_a_streamed_body_without_length_is_cut_off_at_the_limit(client: TestClient, seen: list[int]) -> None:
    boundary = b"fedinspect"

    def body() -> Iterator[bytes]:
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="s.bin"\r\n\r\n'
        for _ in range(64):  # 4 MiB in all, far past the limit
            yield b"x" * (64 * 1024)
        yield b"\r\n--" + boundary + b"--\r\n"

    answer = client.post(
        "/upload", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary.decode()}"}
    )
    assert answer.status_code == 413 and answer.json()["reason"] == "too_large"
    assert seen == [], "the handler never got the form"
