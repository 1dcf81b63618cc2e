"""Log output for the command line: human text, or one JSON object per line for machines.

Library modules log with ``extra={"action": …, "instance_id": …, "node_id": …,
"worker_id": …}``; both formats show those fields (and any other ``extra``) when present.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from pg_durable.errors import ConfigurationError

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
#: The stable structured fields, shown first and in this order.
STRUCTURED_FIELDS = ("action", "instance_id", "node_id", "worker_id")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def record_extras(record: logging.LogRecord) -> dict[str, object]:
    """The ``extra`` fields of ``record``: the structured ones first, then any others."""
    extras = {
        k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")
    }
    ordered = {k: extras.pop(k) for k in STRUCTURED_FIELDS if k in extras}
    ordered.update(sorted(extras.items()))
    return ordered


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message> [key=value …]`` and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = record_extras(record)
        if extras:
            line += " [" + " ".join(f"{k}={v}" for k, v in extras.items()) + "]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_extras(record).items():
            payload.setdefault(key, value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in format ``fmt``.

    Raises:
        ConfigurationError: for an unknown level or format.
    """
    name = level.strip().upper()
    if name not in LEVELS:
        raise ConfigurationError(f"log level must be one of {', '.join(LEVELS)} (got {level!r})")
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ConfigurationError(f"log format must be text or json (got {fmt!r})")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    # psycopg's pool and connection chatter is noise below WARNING unless debugging.
    psycopg_logger = logging.getLogger("psycopg")
    psycopg_logger.setLevel(logging.DEBUG if name == "DEBUG" else logging.WARNING)
    if name != "DEBUG" and not any(
        isinstance(f, _LostConnectionEcho) for f in psycopg_logger.filters
    ):
        psycopg_logger.addFilter(_LostConnectionEcho())


class _LostConnectionEcho(logging.Filter):
    """Drops psycopg's "error ignored terminating <…Pipeline [BAD]>" warning: it repeats, per
    connection, the lost connection the worker reports itself in one line per outage."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("error ignored terminating")
