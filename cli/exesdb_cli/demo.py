"""``exesdb demo``: an embedded broker, realistic traffic on every instance, tailed in colour."""

from __future__ import annotations

import itertools
import random
import tempfile
import threading
import time
from typing import Any, Final

from exesdb_broker import Broker, BrokerConfig
from exesdb_sdk import Publisher, ReceiveTimeoutError, Subscriber
from exesdb_sdk import broadcast as bus
from exesdb_sdk.health import EmitterPool, HealthConfig, SubscriptionHealthTracker
from exesdb_sdk.messages import ClusterHealth, NodeHealth
from rich.console import Console

from .render import pretty

__all__ = ["run_demo"]

FREE: Final = "tcp://127.0.0.1:*"
NODES: Final = ("node1", "node2", "node3")
STORE: Final = "orders"


def _traffic(pub: Publisher, stop: threading.Event, pace: float) -> None:
    """Publish a varied stream of events, one kind after another, until ``stop``."""
    rng = random.Random()
    version = itertools.count(1)
    bus.broadcast_system_lifecycle("started", "ex_esdb", "0.8.0", publisher=pub)
    bus.broadcast_lifecycle_event("emitter_pool", "started", node="node1", publisher=pub)
    steps: list[Any] = [
        lambda: pub.publish_message(
            NodeHealth(
                node=rng.choice(NODES),
                status=rng.choices(("healthy", "degraded", "unhealthy"), (8, 2, 1))[0],
                load_avg=round(rng.uniform(0.1, 4.0), 2),
                memory_usage=round(rng.uniform(0.2, 0.9), 2),
            )
        ),
        lambda: bus.broadcast_metrics(
            "persistence", {"operations_count": rng.randint(500, 5000), "duration_ms": 1000}, publisher=pub
        ),
        lambda: bus.broadcast_store_events(
            STORE,
            "$all",
            [{"event_type": "OrderPlaced", "stream_id": f"order-{n}", "version": n} for n in [next(version)]],
            publisher=pub,
        ),
        lambda: bus.broadcast_audit("update_config", "alice", "orders", {"key": "retention"}, publisher=pub),
        lambda: bus.broadcast_security_event(
            rng.choice(["login", "login_failed"]), rng.choice(["alice", "mallory"]), success=rng.random() > 0.3,
            source_ip="127.0.0.1", publisher=pub,
        ),
        lambda: bus.broadcast_log(
            rng.choice(["info", "warning", "error"]), "compaction finished", "storage", publisher=pub
        ),
        lambda: bus.broadcast_alert(
            "disk_usage", rng.choice(["info", "warning", "error", "critical"]), "Disk filling up", {"disk": "/"},
            publisher=pub,
        ),
        lambda: bus.broadcast_diagnostics("projector", "slow batch", {"ms": rng.randint(100, 900)}, publisher=pub),
        lambda: pub.publish_message(ClusterHealth(status="healthy", healthy_nodes=3, total_nodes=3)),
    ]  # fmt: skip
    for step in itertools.cycle(steps):
        if stop.wait(pace):
            return
        step()


def run_demo(*, duration: float | None, pace: float) -> int:
    """Run until ``duration`` seconds pass (or Ctrl-C); return 0."""
    console = Console(highlight=False, soft_wrap=True)
    config = HealthConfig(check_interval=2000, metrics_interval=2000, backoff_initial=1000, unhealthy_threshold=3)
    calls = itertools.count()

    def flaky_projection(event: dict[str, Any]) -> None:
        if 6 <= next(calls) % 40 < 12:  # now and then the projection's database goes away
            raise ConnectionError("projection database unavailable")

    stop = threading.Event()
    # Its own journal directory: the demo's traffic never lands in a real broker's journal.
    with (
        tempfile.TemporaryDirectory(prefix="exesdb-demo-") as data_dir,
        Broker(
            BrokerConfig(frontend=FREE, backend=FREE, control=FREE, metrics_interval=3.0, data_dir=data_dir)
        ) as broker,
    ):
        console.print(
            f"exesdb demo: broker frontend={broker.frontend} backend={broker.backend} control={broker.control}"
        )
        with (
            Subscriber(broker.backend) as sub,
            SubscriptionHealthTracker(STORE, config=config, frontend=broker.frontend, backend=broker.backend),
            EmitterPool(config=config, frontend=broker.frontend, backend=broker.backend) as pool,
            Publisher(broker.frontend) as pub,
        ):
            sub.subscribe()
            pool.add(STORE, "$all", flaky_projection, subscription=f"{STORE}:projection")
            producer = threading.Thread(target=_traffic, args=(pub, stop, pace), name="exesdb-demo-traffic")
            producer.start()
            deadline = None if duration is None else time.monotonic() + duration
            try:
                while deadline is None or time.monotonic() < deadline:
                    remaining = 1.0 if deadline is None else max(0.01, deadline - time.monotonic())
                    try:
                        message = sub.recv(min(remaining, 1.0))
                    except ReceiveTimeoutError:
                        continue
                    text, style = pretty(message)
                    console.print(text, style=style, markup=False)
            finally:
                stop.set()
                producer.join(5)
    return 0
