"""``ex_esdb_security``: security events."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ..instances import Instance
from .base import Payload
from .vocabulary import Severity

__all__ = ["AccessViolation", "AuthEvent", "SecurityAlert", "SessionEvent"]


class AuthEvent(Payload):
    """An authentication happened: ``broadcast_security_event(event, principal, success=...)``."""

    __instance__: ClassVar[Instance] = Instance.SECURITY
    __subtopic__: ClassVar[str] = "auth"

    event: Literal["login", "logout", "login_failed", "token_issued", "token_revoked"]
    principal: str
    success: bool
    method: str | None = None
    source_ip: str | None = None
    reason: str | None = None
    node: str | None = None


class AccessViolation(Payload):
    """Something tried what it is not allowed to."""

    __instance__: ClassVar[Instance] = Instance.SECURITY
    __subtopic__: ClassVar[str] = "access_violations"

    principal: str
    resource: str
    action: str
    reason: str
    severity: Severity = "warning"
    source_ip: str | None = None
    node: str | None = None


class SecurityAlert(Payload):
    """A detected threat."""

    __instance__: ClassVar[Instance] = Instance.SECURITY
    __subtopic__: ClassVar[str] = "security_alerts"

    threat_type: str
    severity: Severity
    description: str
    source_ip: str | None = None
    affected: list[str] = []
    node: str | None = None
    metadata: dict[str, Any] = {}


class SessionEvent(Payload):
    """A session was created, refreshed, expired or terminated."""

    __instance__: ClassVar[Instance] = Instance.SECURITY
    __subtopic__: ClassVar[str] = "sessions"

    session_id: str
    principal: str
    event: Literal["created", "refreshed", "expired", "terminated"]
    node: str | None = None
    metadata: dict[str, Any] = {}
