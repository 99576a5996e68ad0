"""``ex_esdb_audit``: audit trail and compliance."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ..instances import Instance
from .base import Payload

__all__ = ["AccessLog", "AdminAction", "ComplianceEvent", "DataChange"]


class DataChange(Payload):
    """Data in a store was created, updated, deleted or appended to."""

    __instance__: ClassVar[Instance] = Instance.AUDIT
    __subtopic__: ClassVar[str] = "data_changes:{store}"

    store: str
    stream: str
    operation: Literal["create", "update", "delete", "append"]
    changed_by: str
    version: int | None = None
    before: Any = None
    after: Any = None
    node: str | None = None


class AdminAction(Payload):
    """An administrator did something: ``broadcast_audit(action, actor, target, details)``."""

    __instance__: ClassVar[Instance] = Instance.AUDIT
    __subtopic__: ClassVar[str] = "admin_actions"

    action: str
    actor: str
    target: str | None = None
    parameters: dict[str, Any] = {}
    result: Literal["success", "failure"] = "success"
    node: str | None = None


class AccessLog(Payload):
    """A principal accessed a resource."""

    __instance__: ClassVar[Instance] = Instance.AUDIT
    __subtopic__: ClassVar[str] = "access"

    principal: str
    resource: str
    action: str
    result: Literal["allowed", "denied"]
    source_ip: str | None = None
    node: str | None = None


class ComplianceEvent(Payload):
    """The outcome of a compliance check."""

    __instance__: ClassVar[Instance] = Instance.AUDIT
    __subtopic__: ClassVar[str] = "compliance"

    regulation: str
    requirement: str
    status: Literal["compliant", "non_compliant", "remediated"]
    details: dict[str, Any] = {}
    node: str | None = None
