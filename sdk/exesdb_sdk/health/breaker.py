"""The circuit breaker: a policy object that knows nothing of threads, loops or sockets."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after a backoff it lets one try through
    (half-open); a success closes it, a failure opens it again with the backoff doubled, up to
    ``backoff_max``. Times are seconds from ``clock``.

    Each method returns the state it moved to, or ``None`` when the state did not change, so
    the caller can publish every transition.
    """

    def __init__(
        self,
        threshold: int,
        backoff_initial: float,
        backoff_max: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._clock = clock
        self.state: BreakerState = "closed"
        self.failures = 0
        self.backoff = backoff_initial
        self.retry_at = 0.0
        self.opened = 0
        """How many times it has opened."""

    def allows(self) -> bool:
        """Whether a delivery may be tried now (closed, half-open, or open with the backoff over)."""
        return self.state != "open" or self._clock() >= self.retry_at

    def before_try(self) -> BreakerState | None:
        """Call before a delivery: an open breaker whose backoff is over turns half-open."""
        if self.state == "open" and self._clock() >= self.retry_at:
            self.state = "half_open"
            return self.state
        return None

    def record_success(self) -> BreakerState | None:
        self.failures = 0
        if self.state == "closed":
            return None
        self.state = "closed"
        self.backoff = self.backoff_initial
        return self.state

    def record_failure(self) -> BreakerState | None:
        self.failures += 1
        if self.state == "half_open":
            self.backoff = min(self.backoff * 2, self.backoff_max)
            return self._open()
        if self.state == "closed" and self.failures >= self.threshold:
            return self._open()
        return None

    def _open(self) -> BreakerState:
        self.state = "open"
        self.opened += 1
        self.retry_at = self._clock() + self.backoff
        return self.state

    def seconds_until_retry(self) -> float:
        """How long an open breaker still waits (0 when not open)."""
        return max(0.0, self.retry_at - self._clock()) if self.state == "open" else 0.0
