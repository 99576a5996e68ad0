"""Logging for the daemon: plain text or JSON lines on stderr, and the readiness line."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

__all__ = ["JsonFormatter", "readiness_line", "setup_logging"]

_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED: Final = frozenset(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def setup_logging(level: str, log_format: str) -> None:
    """Send the ``exesdb`` loggers to stderr at ``level`` in ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(_TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger("exesdb")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def readiness_line(
    log_format: str,
    frontend: str,
    backend: str,
    control: str,
    http: str | None = None,
    restricted: tuple[str, str] | None = None,
) -> str:
    """The one line printed on stderr once every endpoint is bound, whatever the log level
    (``http``: the HTTP surface's URL, ``None`` when it is off; ``restricted``: the restricted
    class's frontend and backend, at the end of the line, when there is one)."""
    if log_format == "json":
        fields: dict[str, Any] = {
            "ts": _iso(time.time()),
            "event": "ready",
            "frontend": frontend,
            "backend": backend,
            "control": control,
            "http": http,
        }
        if restricted is not None:
            fields["restricted_frontend"], fields["restricted_backend"] = restricted
        return json.dumps(fields)
    line = f"exesdb-broker ready frontend={frontend} backend={backend} control={control} http={http or 'none'}"
    if restricted is not None:
        line += f" restricted_frontend={restricted[0]} restricted_backend={restricted[1]}"
    return line
