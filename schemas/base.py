"""Base model and shared field types for every contract model (configs, messages, manifests)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

Identifier = Annotated[
    str,
    StringConstraints(pattern=IDENTIFIER_PATTERN),
    Field(
        title="Identifier",
        description=(
            "1-64 characters of letters, digits, '_', '-' and '.', starting with a letter or digit; safe as an "
            "MQTT topic level and a file name."
        ),
    ),
]
"""Names that become topic levels or file names: edge ids, model names, round ids, transfer ids."""

Sha256Hex = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-f]{64}$"),
    Field(title="SHA-256", description="Lower-case hexadecimal SHA-256 digest (64 characters)."),
]

MessageId = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-f]{32}$"),
    Field(title="Message id", description="32 lower-case hex characters (a UUID4 without dashes)."),
]


def new_message_id() -> str:
    """Return a fresh message id (UUID4 hex)."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A datetime read back from SQL as UTC: SQLite returns naive datetimes, and everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def validation_problems(exc: ValidationError, limit: int = 5) -> str:
    """'dotted.location: message' of the first ``limit`` errors: short enough for a log line or a verdict, and it
    names the offending field or key (e.g. ``metrics_after.mAP50: Input should be a finite number``)."""
    errors = exc.errors()
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors[:limit])
    return problems + (f" (and {len(errors) - limit} more)" if len(errors) > limit else "")


class ContractModel(BaseModel):
    """Base of every contract model: immutable, and unknown keys are an error rather than silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
