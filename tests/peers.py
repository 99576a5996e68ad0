"""What every far side (a peer) holds, as the connector tests compare it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Received:
    id: str
    topic: str
    data: dict[str, Any]
