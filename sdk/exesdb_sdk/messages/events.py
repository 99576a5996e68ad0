"""``ex_esdb_events``: store events delivered to subscribers."""

from __future__ import annotations

from typing import Any, ClassVar

from ..instances import Instance
from .base import Payload

__all__ = ["Events"]


class Events(Payload):
    """A batch of store events for one store and selector (a stream or ``$all``).

    Each event is a map; the usual keys are ``event_id``, ``event_type``, ``stream_id``,
    ``version``, ``data`` and ``metadata``.
    """

    __instance__: ClassVar[Instance] = Instance.EVENTS
    __subtopic__: ClassVar[str] = "{store}:{selector}"

    store: str
    selector: str
    events: list[dict[str, Any]] = []
