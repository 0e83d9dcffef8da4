"""Who may call the edge's and the hub's HTTP APIs: roles, API tokens, and the check both APIs run on every request.

Every API path but the probes (``OPEN_PATHS``: /healthz, /readyz, /metrics) needs a bearer token
(``Authorization: Bearer fi_...``) whose role is at least the route's: viewer reads, operator inspects, labels,
imports and asks for training (``train_now``, ``report_status``), admin rolls back, pins and changes settings.
Tokens live in a JSON file (``TokenFile``; ``http.tokens_file``, default ``data_dir/api-tokens.json``) as SHA-256
digests with a name and a role; ``fedinspect token add`` creates one and prints it once, ``fedinspect token
revoke`` removes it, and a running process picks up the file's changes on the next request. A request addressed to
a host name the process does not answer to (``http.trusted_hosts``: the Host header) is refused before any of this,
which is what stops a web page from reaching a loopback API through DNS rebinding.

The roles, the token store and its file format are here; the check the APIs run (FastAPI) is in
``runtime.http_access``, shared runtime that stays in ``schemas/`` until the runtime moves out (see DESIGN.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from pydantic import Field, ValidationError

from schemas.base import ContractModel, Identifier, utc_now, validation_problems
from schemas.config import HttpConfig

log = logging.getLogger(__name__)

TOKEN_PREFIX = "fi_"  # noqa: S105 - the marker every token starts with, not a secret
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Paths any caller may reach: probes (systemd, load balancers) and Prometheus scraping; they reveal no image, label
or model and change nothing."""
MAX_TOKEN_CHARS = 200
"""A presented token longer than this is refused without hashing it."""


class ApiRole(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(ApiRole).index(self)

    def allows(self, needed: ApiRole) -> bool:
        return self.rank >= needed.rank


class ApiToken(ContractModel):
    """One API token, as stored: never the token itself, only its SHA-256 digest."""

    name: Identifier = Field(title="Name", description="Who or what holds the token, e.g. 'line-3-camera' or 'anna'.")
    role: ApiRole = Field(title="Role", description="viewer, operator or admin.")
    sha256: str = Field(title="Digest", description="SHA-256 of the token, lowercase hex.", pattern=r"^[0-9a-f]{64}$")
    created_at: datetime = Field(title="Created", description="When the token was made.")


class TokenFile(ContractModel):
    """The API tokens file (``http.tokens_file``)."""

    tokens: list[ApiToken] = Field(default_factory=list, title="Tokens", description="Every valid token.")


def api_tokens_file(http: HttpConfig, data_dir: Path) -> Path:
    """Where a process keeps its API tokens: ``http.tokens_file``, else ``data_dir/api-tokens.json``."""
    return http.tokens_file or data_dir / "api-tokens.json"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The tokens file of one process: who a presented token is, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._tokens: tuple[ApiToken, ...] = ()

    def _current(self) -> tuple[ApiToken, ...]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return ()
        except OSError as exc:
            log.error("API tokens file unreadable", extra={"path": str(self.path), "error": str(exc)})
            return ()
        # every write is a new file renamed into place: a new inode, even within one timestamp tick and size
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._seen != seen:
                try:
                    self._tokens = tuple(self._read().tokens)
                except ValueError as exc:
                    # a broken or unreadable file lets nobody in (and says why), rather than keep tokens meant to go
                    log.error("API tokens file unreadable", extra={"path": str(self.path), "error": str(exc)})
                    self._tokens = ()
                self._seen = seen
            return self._tokens

    def _read(self) -> TokenFile:
        """The file's tokens (none when it does not exist); ValueError naming the file when it cannot be read or
        does not parse."""
        try:
            return TokenFile.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return TokenFile()
        except OSError as exc:
            raise ValueError(f"{self.path}: cannot be read ({exc}); run as the service's user") from None
        except ValidationError as exc:
            raise ValueError(f"{self.path}: not an API tokens file: {validation_problems(exc)}") from None

    def holder(self, token: str) -> ApiToken | None:
        """The token's entry, or None for an unknown token."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
            return None
        return self.holder_by_digest(token_digest(token))

    def holder_by_digest(self, digest: str) -> ApiToken | None:
        """The entry whose token has this digest (a web session keeps the digest, never the token), or None for
        an unknown or revoked one."""
        found = None
        for entry in self._current():  # every entry compared, in constant time each
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found

    def names(self) -> list[tuple[str, ApiRole]]:
        return [(entry.name, entry.role) for entry in self._current()]

    def add(self, name: str, role: ApiRole) -> str:
        """A new token for ``name`` with ``role`` (a name already present is replaced); returns the token, which
        is stored only as its digest. ValueError when the file exists but cannot be read: it is left as it is
        rather than overwritten with the new token alone."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        entry = ApiToken(name=name, role=role, sha256=token_digest(token), created_at=utc_now())
        with self._lock:
            kept = [t for t in self._read().tokens if t.name != name]
            self._write(TokenFile(tokens=[*kept, entry]))
        return token

    def revoke(self, name: str) -> bool:
        """Remove ``name``'s token; False when it had none."""
        with self._lock:
            tokens = self._read().tokens
            kept = [t for t in tokens if t.name != name]
            if len(kept) == len(tokens):
                return False
            self._write(TokenFile(tokens=kept))
        return True

    def _write(self, content: TokenFile) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a private file of its own (mkstemp: O_EXCL, mode 0600), renamed over the old one
        descriptor, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                json.dump(content.model_dump(mode="json"), out, indent=1)
            Path(name).replace(self.path)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        self._seen = None
