"""``ex_esdb_logging``: log aggregation."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ..instances import Instance
from .base import Payload
from .vocabulary import LogLevel

__all__ = ["LogEntry", "LogFilter", "LogRotation", "LogSummary"]


class LogEntry(Payload):
    """One log record: ``broadcast_log(level, message, logger, metadata)``; the logging bridge
    publishes these. The sub-topic is the logger name."""

    __instance__: ClassVar[Instance] = Instance.LOGGING
    __subtopic__: ClassVar[str] = "{logger}"

    level: LogLevel
    message: str
    logger: str = "root"
    node: str | None = None
    module: str | None = None
    function: str | None = None
    line: int | None = None
    metadata: dict[str, Any] = {}


class LogSummary(Payload):
    """Counts of log records per level over a period."""

    __instance__: ClassVar[Instance] = Instance.LOGGING
    __subtopic__: ClassVar[str] = "summaries"

    period_s: float
    total: int
    counts: dict[str, int] = {}
    top_messages: list[str] = []
    node: str | None = None


class LogFilter(Payload):
    """A log filter was set or changed."""

    __instance__: ClassVar[Instance] = Instance.LOGGING
    __subtopic__: ClassVar[str] = "filters"

    filter_id: str
    pattern: str
    action: Literal["include", "exclude"] = "include"
    level: LogLevel | None = None
    enabled: bool = True
    node: str | None = None


class LogRotation(Payload):
    """A log file was rotated."""

    __instance__: ClassVar[Instance] = Instance.LOGGING
    __subtopic__: ClassVar[str] = "rotation"

    log_file: str
    size_bytes: int
    rotated_to: str | None = None
    reason: str | None = None
    node: str | None = None
