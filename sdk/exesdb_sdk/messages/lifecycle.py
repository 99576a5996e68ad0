"""``ex_esdb_lifecycle``: process and node lifecycle."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ..instances import Instance
from .base import Payload

__all__ = ["ClusterMembership", "NodeLifecycle", "ProcessLifecycle", "SupervisionEvent"]


class NodeLifecycle(Payload):
    """A node came up, went down, joined or left."""

    __instance__: ClassVar[Instance] = Instance.LIFECYCLE
    __subtopic__: ClassVar[str] = "nodes"

    node: str
    event: Literal["starting", "started", "stopping", "stopped", "up", "down"]
    reason: str | None = None
    metadata: dict[str, Any] = {}


class ProcessLifecycle(Payload):
    """A process (a worker, a server) started, stopped, restarted or crashed."""

    __instance__: ClassVar[Instance] = Instance.LIFECYCLE
    __subtopic__: ClassVar[str] = "processes"

    process: str
    event: Literal["started", "stopped", "restarted", "crashed"]
    node: str | None = None
    pid: int | None = None
    reason: str | None = None
    metadata: dict[str, Any] = {}


class SupervisionEvent(Payload):
    """A supervisor acted on a child."""

    __instance__: ClassVar[Instance] = Instance.LIFECYCLE
    __subtopic__: ClassVar[str] = "supervision"

    supervisor: str
    child: str
    event: Literal["child_started", "child_terminated", "child_restarted", "max_restarts_reached"]
    reason: str | None = None
    node: str | None = None


class ClusterMembership(Payload):
    """The cluster's membership changed."""

    __instance__: ClassVar[Instance] = Instance.LIFECYCLE
    __subtopic__: ClassVar[str] = "cluster"

    node: str
    event: Literal["joined", "left", "partitioned", "healed"]
    members: list[str] = []
    cluster_size: int | None = None
