"""The pages' shared parts (runtime.web, runtime.web_sessions): sessions end with their token or their time, and
a real uvicorn serves the login page over HTTPS with a plant-CA certificate and a Secure cookie."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from fedinspect.devbroker import free_port
from fedinspect.pki import CertificateAuthority
from hub.api import create_app
from runtime.access import ApiRole, TokenStore
from runtime.web import is_loopback, pages_need_https, script_json, server_options
from runtime.web_sessions import SESSION_COOKIE, WebSessions, csrf_matches
from schemas.config import HttpConfig
from tests.support.processes import serving


def test_a_session_ends_when_its_token_is_revoked_or_its_time_is_up(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "api-tokens.json")
    now = [1000.0]
    sessions = WebSessions(tokens, lifetime_s=60, max_sessions=2, clock=lambda: now[0])
    assert sessions.open("fi_unknown") is None
    token = tokens.add("anna", ApiRole.OPERATOR)
    opened = sessions.open(token)
    assert opened is not None
    session, holder = opened
    assert holder.name == "anna" and csrf_matches(session, session.csrf_token) and not csrf_matches(session, "x")
    assert sessions.find(session.session_id) is not None
    now[0] += 61
    assert sessions.find(session.session_id) is None, "a shift's login ends"
    again = sessions.open(token)
    assert again is not None
    tokens.add("anna", ApiRole.VIEWER)  # a new token for the name replaces the old one: the old login ends
    assert sessions.find(again[0].session_id) is None
    first, second, third = (sessions.open(tokens.add(name, ApiRole.VIEWER)) for name in ("a", "b", "c"))
    assert first is not None and second is not None and third is not None
    assert sessions.find(first[0].session_id) is None, "past max_sessions the oldest login ends"
    assert sessions.find(third[0].session_id) is not None


def test_which_binds_need_https_and_what_uvicorn_is_given(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("line-3.plant")
    assert not pages_need_https(HttpConfig()) and pages_need_https(HttpConfig(host="0.0.0.0"))
    assert server_options(HttpConfig())["ssl_certfile"] is None
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    options = server_options(HttpConfig(tls_cert_file=cert, tls_key_file=key))
    assert (options["ssl_certfile"], options["ssl_keyfile"]) == (str(cert), str(key))
    with pytest.raises(ValueError, match="go together"):
        HttpConfig(tls_cert_file=cert)


@pytest.fixture
def https_hub(tmp_path: Path) -> Iterator[tuple[str, Path, TokenStore]]:
    """The hub's app (no hub behind it: the login pages need none) on a real uvicorn over HTTPS bound beyond
    loopback, with a certificate issued by a plant CA; yields (base URL, CA file, tokens)."""
    ca = CertificateAuthority.create(tmp_path / "pki", "test plant CA")
    pair = ca.issue("localhost", server=True)
    tokens = TokenStore(tmp_path / "api-tokens.json")
    http = HttpConfig(host="0.0.0.0", port=free_port(), tls_cert_file=pair.cert_file, tls_key_file=pair.key_file)
    app = create_app(cast(Any, None), tokens=tokens, trusted_hosts=["localhost"], https_only=pages_need_https(http))
    with serving(app, **server_options(http)):
        yield f"https://localhost:{http.port}", ca.ca_file, tokens


def test_pages_bound_beyond_loopback_are_served_over_https_with_a_secure_cookie(
    https_hub: tuple[str, Path, TokenStore],
) -> None:
    base_url, ca_file, tokens = https_hub
    token = tokens.add("anna", ApiRole.VIEWER)
    with httpx.Client(base_url=base_url, verify=ssl.create_default_context(cafile=ca_file), timeout=10) as client:
        assert client.get("/ui/login").status_code == 200
        logged_in = client.post("/ui/login", data={"token": token, "next": "/ui/fleet"}, follow_redirects=False)
        assert logged_in.status_code == 303
        cookie = logged_in.headers["set-cookie"].lower()
        assert cookie.startswith(SESSION_COOKIE) and "secure" in cookie and "httponly" in cookie
    with pytest.raises(httpx.TransportError):  # the port speaks TLS only
        httpx.get(base_url.replace("https://", "http://") + "/ui/login", timeout=5)


def test_page_data_cannot_close_its_script_element() -> None:
    hostile = {"class_name": "</script><script>alert(1)</script>", "note": "a & b"}
    text = script_json(hostile)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == hostile


def test_a_login_posted_by_another_site_is_refused(https_hub: tuple[str, Path, TokenStore]) -> None:
    base_url, ca_file, tokens = https_hub
    token = tokens.add("mallory", ApiRole.VIEWER)
    with httpx.Client(base_url=base_url, verify=ssl.create_default_context(cafile=ca_file), timeout=10) as client:
        forged = client.post("/ui/login", data={"token": token}, headers={"origin": "https://evil.example"})
        assert forged.status_code == 403 and SESSION_COOKIE not in forged.headers.get("set-cookie", "")
        own = client.post("/ui/login", data={"token": token}, headers={"origin": base_url}, follow_redirects=False)
        assert own.status_code == 303
