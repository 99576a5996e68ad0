"""``ex_esdb_alerts``: critical alerts and notifications."""

from __future__ import annotations

import secrets
from typing import Any, ClassVar, Literal

import msgspec

from ..instances import Instance
from .base import Payload
from .vocabulary import AlertCategory, Severity

__all__ = ["AlertAck", "AlertEscalation", "NotificationStatus", "SystemAlert"]


def _alert_id() -> str:
    return secrets.token_hex(8)


class SystemAlert(Payload):
    """An alert: ``broadcast_alert(alert_type, severity, message, metadata)``.

    ``alert_id`` defaults to 16 random hex characters. ``requires_ack`` defaults to true for
    ``error`` and ``critical`` alerts. Published on the sub-topic named by its severity, so a
    pager can subscribe to ``ex_esdb_alerts/critical`` alone.
    """

    __instance__: ClassVar[Instance] = Instance.ALERTS
    __subtopic__: ClassVar[str] = "{severity}"

    severity: Severity
    title: str
    category: AlertCategory = "system"
    description: str = ""
    alert_id: str = msgspec.field(default_factory=_alert_id)
    source: str | None = None
    node: str | None = None
    metadata: dict[str, Any] = {}
    requires_ack: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.requires_ack is None:
            self.requires_ack = self.severity in ("error", "critical")


class AlertAck(Payload):
    """Someone acknowledged an alert."""

    __instance__: ClassVar[Instance] = Instance.ALERTS
    __subtopic__: ClassVar[str] = "acks"

    alert_id: str
    acknowledged_by: str
    note: str | None = None
    node: str | None = None


class AlertEscalation(Payload):
    """An alert was escalated."""

    __instance__: ClassVar[Instance] = Instance.ALERTS
    __subtopic__: ClassVar[str] = "escalations"

    alert_id: str
    level: int
    escalated_to: str
    severity: Severity = "critical"
    reason: str | None = None


class NotificationStatus(Payload):
    """What became of an alert's notification on one channel."""

    __instance__: ClassVar[Instance] = Instance.ALERTS
    __subtopic__: ClassVar[str] = "notifications"

    alert_id: str
    channel: str
    status: Literal["pending", "sent", "delivered", "failed"]
    recipient: str | None = None
    error: str | None = None
