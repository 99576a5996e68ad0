"""The health loop, end to end, in one process: pause, resume and nothing lost.

    python examples/health_loop.py

It starts an embedded broker on free ports, a SubscriptionHealthTracker for the store
``orders``, and an EmitterPool whose subscriber fails for a while (its "database" is down),
then publishes 20 store events. Watch the colour-coded log: the breaker opens after three
failures and emission is PAUSED; after the backoff a half-open try succeeds, emission is
RESUMED, and every held event is delivered in order. Health and metrics summaries appear as
they are published. It ends by printing what the subscriber received.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from exesdb_broker import Broker, BrokerConfig
from exesdb_sdk import Publisher
from exesdb_sdk.broadcast import broadcast_store_events
from exesdb_sdk.health import EmitterPool, HealthConfig, SubscriptionHealthTracker
from exesdb_sdk.observe import setup_observability

EVENTS = 20
FREE = "tcp://127.0.0.1:*"


def main() -> int:
    setup_observability()
    config = HealthConfig(check_interval=500, metrics_interval=500, backoff_initial=400, unhealthy_threshold=3)
    delivered: list[int] = []
    database_up = threading.Event()
    failures = [0]

    def project(event: dict[str, Any]) -> None:
        if not database_up.is_set():
            failures[0] += 1
            if failures[0] >= 5:  # the database comes back after a while
                database_up.set()
            raise ConnectionError("database unavailable")
        delivered.append(event["version"])

    # No journal: this example is about health gating, and leaves nothing on disk.
    broker_config = BrokerConfig(
        frontend=FREE, backend=FREE, control=FREE, journal="none", last_values="none", http="none"
    )
    with Broker(broker_config) as broker:
        endpoints = {"frontend": broker.frontend, "backend": broker.backend}
        with (
            SubscriptionHealthTracker("orders", config=config, **endpoints) as tracker,
            EmitterPool(config=config, **endpoints) as pool,
            Publisher(broker.frontend) as producer,
        ):
            pool.add("orders", "$all", project, subscription="orders:projection")
            for version in range(1, EVENTS + 1):
                event = {"event_type": "OrderPlaced", "stream_id": f"order-{version}", "version": version}
                broadcast_store_events("orders", "$all", [event], publisher=producer)
            deadline = time.monotonic() + 15
            while len(delivered) < EVENTS and time.monotonic() < deadline:
                time.sleep(0.05)  # the demo's own pace: it only waits for the subscriber to finish
            time.sleep(0.6)  # one more summary, so the healthy state shows
            state = tracker.subscription("orders:projection")
            print(f"tracker: orders:projection is {state.status if state else 'unknown'}; {tracker.summary()}")
    in_order = delivered == list(range(1, EVENTS + 1))
    print(f"delivered {len(delivered)}/{EVENTS} events, in order: {in_order}, after {failures[0]} failed tries")
    return 0 if in_order else 1


if __name__ == "__main__":
    sys.exit(main())
