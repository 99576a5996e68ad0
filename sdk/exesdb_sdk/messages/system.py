"""``ex_esdb_system``: system lifecycle and configuration."""

from __future__ import annotations

from typing import Any, ClassVar

from ..instances import Instance
from .base import Payload
from .vocabulary import SystemEvent

__all__ = ["FeatureToggle", "SystemConfig", "SystemLifecycle"]


class SystemLifecycle(Payload):
    """A system started or stopped: ``broadcast_system_lifecycle(event, system, version)``."""

    __instance__: ClassVar[Instance] = Instance.SYSTEM
    __subtopic__: ClassVar[str] = "lifecycle"

    event: SystemEvent
    system: str
    version: str
    node: str | None = None
    reason: str | None = None
    metadata: dict[str, Any] = {}


class SystemConfig(Payload):
    """A configuration value changed."""

    __instance__: ClassVar[Instance] = Instance.SYSTEM
    __subtopic__: ClassVar[str] = "config"

    component: str
    key: str
    value: Any
    previous: Any = None
    changed_by: str | None = None
    node: str | None = None


class FeatureToggle(Payload):
    """A feature was switched on or off."""

    __instance__: ClassVar[Instance] = Instance.SYSTEM
    __subtopic__: ClassVar[str] = "features"

    feature: str
    enabled: bool
    scope: str = "global"
    changed_by: str | None = None
    node: str | None = None
