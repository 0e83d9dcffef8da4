"""Structured logging for every fedinspect process: one JSON object per line with the event's fields.

Call sites log a short event name and put ids in ``extra``, e.g.
``log.warning("publish denied", extra={"topic": topic, "reason_code": 135})``; never put secrets in ``extra``.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from schemas.config import LoggingConfig

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _TextWithExtras(logging.Formatter):
    """Readable one-line format that still shows the structured fields."""

    _standard = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in self._standard and not k.startswith("_")}
        if extras:
            line += " " + " ".join(f"{k}={v!r}" for k, v in sorted(extras.items()))
        return line


def configure_logging(config: LoggingConfig | None = None) -> None:
    """Send all logs to stderr (journald picks them up) in the configured format and level."""
    config = config or LoggingConfig()
    handler = logging.StreamHandler(sys.stderr)
    if config.json_format:
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",
            )
        )
    else:
        handler.setFormatter(_TextWithExtras(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.value)
    # paho logs every packet at DEBUG; keep it at WARNING unless explicitly debugging the link.
    logging.getLogger("paho").setLevel(logging.WARNING if config.level.value != "DEBUG" else logging.DEBUG)
