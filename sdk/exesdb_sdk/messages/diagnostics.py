"""``ex_esdb_diagnostics``: debug and troubleshooting."""

from __future__ import annotations

from typing import Any, ClassVar

from ..instances import Instance
from .base import Payload

__all__ = ["DebugTrace", "ErrorAnalysis", "PerformanceAnalysis", "SystemState"]


class DebugTrace(Payload):
    """A debug trace point: ``broadcast_diagnostics(component, message, data)``."""

    __instance__: ClassVar[Instance] = Instance.DIAGNOSTICS
    __subtopic__: ClassVar[str] = "traces:{component}"

    component: str
    message: str
    data: dict[str, Any] = {}
    span_id: str | None = None
    node: str | None = None


class PerformanceAnalysis(Payload):
    """An analysis of where an operation spends its time."""

    __instance__: ClassVar[Instance] = Instance.DIAGNOSTICS
    __subtopic__: ClassVar[str] = "performance"

    component: str
    operation: str
    duration_ms: float
    bottleneck: str | None = None
    recommendations: list[str] = []
    details: dict[str, Any] = {}
    node: str | None = None


class SystemState(Payload):
    """A snapshot of a node's state."""

    __instance__: ClassVar[Instance] = Instance.DIAGNOSTICS
    __subtopic__: ClassVar[str] = "state:{node}"

    node: str
    uptime_s: float
    processes: int | None = None
    memory_bytes: int | None = None
    details: dict[str, Any] = {}


class ErrorAnalysis(Payload):
    """A recurring error, grouped."""

    __instance__: ClassVar[Instance] = Instance.DIAGNOSTICS
    __subtopic__: ClassVar[str] = "errors"

    component: str
    error_type: str
    message: str
    count: int = 1
    first_seen: int | None = None
    last_seen: int | None = None
    stacktrace: str | None = None
    node: str | None = None
