"""Health monitoring settings, as the original's ``config :ex_esdb, :health_monitoring``.

From code (``HealthConfig(...)``), ``EXESDB_HEALTH_*`` environment variables and the
``[health_monitoring]`` table of the TOML file, with the same precedence as the broker's.
Intervals are in milliseconds, as in the original.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..settings import load_settings, one_of, positive

__all__ = ["OVERFLOW_POLICIES", "HealthConfig", "load_health_config"]

OVERFLOW_POLICIES: Final = ("drop_newest", "drop_oldest")


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """How subscriptions are watched and emission is gated."""

    enabled: bool = True
    """Gate emission on subscription health, and let trackers publish it."""
    check_interval: int = field(default=5000, metadata={"check": positive})
    """Milliseconds between health summaries; three without news make a subscription stale."""
    unhealthy_threshold: int = field(default=3, metadata={"check": positive})
    """Consecutive delivery failures that make a subscription failed and open the breaker."""
    circuit_breaker_enabled: bool = True
    buffer_size: int = field(default=10_000, metadata={"check": positive})
    """Events a worker holds while paused (or behind) before the overflow policy applies."""
    overflow_policy: str = field(default="drop_newest", metadata={"check": one_of(*OVERFLOW_POLICIES)})
    """``drop_newest`` keeps the oldest events (a contiguous run from the pause on);
    ``drop_oldest`` keeps the newest. Either way every dropped event is counted."""
    delivery_timeout: int = field(default=5000, metadata={"check": positive})
    """Milliseconds a subscriber may take for one event before it counts as a failure."""
    backoff_initial: int = field(default=500, metadata={"check": positive})
    """Milliseconds an open breaker waits before its first half-open try; doubles each time."""
    backoff_max: int = field(default=30_000, metadata={"check": positive})
    metrics_interval: int = field(default=5000, metadata={"check": positive})
    """Milliseconds between emitter metrics on ``ex_esdb_metrics``."""


def load_health_config(
    flags: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> HealthConfig:
    """Code/flags > ``EXESDB_HEALTH_*`` > ``[health_monitoring]`` in the TOML file > defaults."""
    return load_settings(
        HealthConfig,
        "health_monitoring",
        flags=flags,
        config_file=config_file,
        env=env,
        env_prefix="EXESDB_HEALTH_",
    )
