"""The hub API's access rules on every route: no token 401, a viewer cannot act, a rebinding host is refused.

The handlers are never reached here (every request is refused before them), so the app is built around no hub;
what the handlers do with a token is tested against a running hub in tests/integration/test_hub_rounds.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from fastapi.testclient import TestClient

from hub.api import COMMAND_ROLES, create_app
from runtime.access import OPEN_PATHS, ApiRole
from schemas.config import HttpConfig
from tests.support.access import LOCAL_BASE_URL, api_routes, bearer, token_for


def test_every_hub_route_but_the_probes_needs_a_token_and_viewers_only_read(tmp_path: Path) -> None:
    tokens, token = token_for(tmp_path / "api-tokens.json", ApiRole.VIEWER, name="dashboard")
    app = create_app(cast(Any, None), tokens=tokens, trusted_hosts=HttpConfig().trusted_hosts)
    routes = [(method, path) for method, path in api_routes(app) if path not in OPEN_PATHS]
    assert {path for _, path in routes} >= {"/v1/rounds", "/v1/models/{name}/rollback", "/v1/edges/{edge_id}/commands"}
    anonymous = TestClient(app, base_url=LOCAL_BASE_URL)
    viewer = TestClient(app, base_url=LOCAL_BASE_URL, headers=bearer(token))
    for method, template in routes:
        path = template.format(name="m", edge_id="e", round_id="r", command_id="c")
        body: dict[str, Any] = {"command": {"action": "train_now"}} if "commands" in path else {"to_version": 0}
        refused = anonymous.request(method, path, json=body if method == "POST" else None)
        assert refused.status_code == 401, (method, path)
        if method == "POST":
            acting = viewer.request(method, path, json=body)
            assert acting.status_code == 403 and "dashboard is a viewer" in acting.text, (method, path, acting.text)
    assert viewer.get("/v1/rounds", headers={"host": "rebound.example"}).status_code == 400
    assert COMMAND_ROLES["train_now"] == ApiRole.OPERATOR and COMMAND_ROLES["pin_model"] == ApiRole.ADMIN
