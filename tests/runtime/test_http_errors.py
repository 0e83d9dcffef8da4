"""One error body for every refusal of both APIs: raised errors, FastAPI's own (unknown route, wrong method,
invalid request), the body limit and the host check all answer ``{"detail": str, "reason": str}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from hub.api import create_app as create_hub_app
from runtime.access import ApiRole
from runtime.http_access import BodyLimit, trusted_host_middleware
from runtime.http_errors import ApiError, install_error_handlers
from schemas.config import HttpConfig
from tests.support.access import LOCAL_BASE_URL, bearer, token_for


class Thing(BaseModel):
    size: int = Field(gt=0)


def small_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit_for=lambda _path: 100)
    trusted_host_middleware(app, ["localhost"])

    @app.get("/busy")
    def busy() -> None:
        raise ApiError(503, "busy", "the intake is full", headers={"Retry-After": "2"})

    @app.get("/plain")
    def plain() -> None:
        raise HTTPException(404, "no such thing")

    @app.post("/things")
    def things(thing: Thing) -> dict[str, int]:
        return {"size": thing.size}

    return app


def body(response: Any) -> tuple[int, str, str]:
    payload = response.json()
    assert set(payload) == {"detail", "reason"}, payload
    assert isinstance(payload["detail"], str) and payload["detail"], payload
    return response.status_code, payload["reason"], payload["detail"]


def test_every_kind_of_refusal_has_the_one_body() -> None:
    client = TestClient(small_app(), base_url=LOCAL_BASE_URL)
    busy = client.get("/busy")
    assert body(busy) == (503, "busy", "the intake is full") and busy.headers["retry-after"] == "2"
    assert body(client.get("/plain")) == (404, "not_found", "no such thing")
    assert body(client.get("/nowhere"))[:2] == (404, "not_found")
    assert body(client.get("/things"))[:2] == (405, "method_not_allowed")
    status, reason, detail = body(client.post("/things", json={"size": 0}))
    assert (status, reason) == (422, "invalid_request") and "body.size: Input should be greater than 0" in detail
    status, reason, detail = body(client.post("/things", content=b"x" * 500))
    assert (status, reason) == (413, "too_large") and "100 bytes" in detail
    status, reason, detail = body(client.get("/busy", headers={"host": "rebound.example"}))
    assert (status, reason) == (400, "untrusted_host") and "'rebound.example'" in detail
    assert client.post("/things", json={"size": 3}).json() == {"size": 3}


@pytest.mark.parametrize("trusted", [["*"], ["localhost", "*.plant.example"]])
def test_the_host_check_lets_trusted_names_through(trusted: list[str]) -> None:
    app = FastAPI()
    trusted_host_middleware(app, trusted)

    @app.get("/ok")
    def ok() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app, base_url=LOCAL_BASE_URL)
    assert client.get("/ok").json() == {"ok": True}
    assert client.get("/ok", headers={"host": "line-3.plant.example:8080"}).status_code == 200
    assert client.get("/ok", headers={"host": "elsewhere.example"}).status_code == (200 if trusted == ["*"] else 400)


def test_the_hub_answers_in_the_same_body(tmp_path: Path) -> None:
    tokens, token = token_for(tmp_path / "api-tokens.json", ApiRole.ADMIN)
    app = create_hub_app(cast(Any, None), tokens=tokens, trusted_hosts=HttpConfig().trusted_hosts)
    client = TestClient(app, base_url=LOCAL_BASE_URL)
    assert body(client.get("/v1/rounds"))[:2] == (401, "unauthorized")
    admin = TestClient(app, base_url=LOCAL_BASE_URL, headers=bearer(token))
    status, reason, detail = body(admin.post("/v1/models/m/rollback", json={"to_version": -1}))
    assert (status, reason) == (422, "invalid_request") and "to_version" in detail
    assert body(admin.get("/v1/rounds", headers={"host": "rebound.example"}))[:2] == (400, "untrusted_host")
