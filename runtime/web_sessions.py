"""Logins for the web pages of the edge and the hub: one API token, given once on the login page, becomes a session
cookie, so a person at a browser is checked by the same tokens, roles and revocations as every API caller.

A session is a random id in an HttpOnly, SameSite=Strict cookie (Secure when the page is served over HTTPS), kept
in the process's memory with the digest of the token that opened it and a CSRF token of its own. Every request of a
session looks its token up again in the tokens file (``runtime.access.TokenStore``), so a revoked token or a changed
role takes effect on the next click; a restart ends every session (people log in again). A request that changes
something (any method but GET, HEAD, OPTIONS) and is authenticated by the cookie must carry the session's CSRF token
(header ``X-CSRF-Token``, or the form field ``csrf_token``): a form another site posts to this one gets the cookie
from the browser but cannot read the token, and is refused.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from runtime.access import ApiToken, TokenStore

SESSION_COOKIE = "fi_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_LIFETIME_S = 12 * 3600
"""A login lasts a shift: after this long the browser is sent to the login page again."""
MAX_SESSIONS = 1000
"""Sessions kept at once; a further login ends the oldest (bounds memory against a script logging in forever)."""


@dataclass(frozen=True)
class WebSession:
    session_id: str
    token_sha256: str
    csrf_token: str
    expires_at: float


class WebSessions:
    """The open sessions of one process."""

    def __init__(
        self,
        tokens: TokenStore,
        *,
        lifetime_s: float = SESSION_LIFETIME_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, WebSession] = {}

    def open(self, token: str) -> tuple[WebSession, ApiToken] | None:
        """A new session for a valid ``token``, or None."""
        holder = self.tokens.holder(token.strip())
        if holder is None:
            return None
        session = WebSession(
            session_id=secrets.token_urlsafe(32),
            token_sha256=holder.sha256,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=self._clock() + self.lifetime_s,
        )
        with self._lock:
            self._drop_expired()
            while len(self._sessions) >= self.max_sessions:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session.session_id] = session
        return session, holder

    def find(self, session_id: str) -> tuple[WebSession, ApiToken] | None:
        """The live session of ``session_id`` and its token's current entry; None when it is unknown, expired, or
        its token was revoked since."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= self._clock():
                del self._sessions[session_id]
                session = None
        if session is None:
            return None
        holder = self.tokens.holder_by_digest(session.token_sha256)
        if holder is None:
            self.close(session_id)
            return None
        return session, holder

    def from_cookies(self, cookies: Mapping[str, str]) -> tuple[WebSession, ApiToken] | None:
        """The live session a request's cookies name (``SESSION_COOKIE``) and its token's entry, as ``find``."""
        session_id = cookies.get(SESSION_COOKIE)
        return self.find(session_id) if session_id else None

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _drop_expired(self) -> None:
        now = self._clock()
        for session_id in [s.session_id for s in self._sessions.values() if s.expires_at <= now]:
            del self._sessions[session_id]


def csrf_matches(session: WebSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf_token.encode(), presented.encode())
