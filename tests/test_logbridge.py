"""The stdlib logging bridge against a real broker, an absent one, and one that comes back."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator

import pytest
from exesdb_sdk import ReceiveTimeoutError, Subscriber
from exesdb_sdk.logbridge import BusLogHandler, LogBridgeStats
from exesdb_sdk.messages import LogEntry

from .conftest import BrokerProcess, StartBroker, wait_until
from .peers import free_endpoint

Attach = Callable[[str, BusLogHandler], logging.Logger]


class Unpackable:
    """An ``extra`` value MessagePack cannot encode."""

    def __str__(self) -> str:
        return "<unpackable thing>"


def line_after() -> int:
    """The line number just after the caller's line."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno + 1


@pytest.fixture
def attach() -> Iterator[Attach]:
    """Attach a handler to a named logger; detach and close everything in teardown."""
    attached: list[tuple[logging.Logger, BusLogHandler]] = []

    def attach(name: str, handler: BusLogHandler) -> logging.Logger:
        log = logging.getLogger(name)
        log.setLevel(1)  # everything, even custom levels below DEBUG
        log.propagate = False
        log.addHandler(handler)
        attached.append((log, handler))
        return log

    yield attach
    for log, handler in attached:
        log.removeHandler(handler)
        handler.close()


def entry_of(sub: Subscriber) -> tuple[str, LogEntry]:
    message = sub.recv(timeout=5)
    assert message.type == "LogEntry"
    return message.topic, LogEntry.from_data(message.data)


def test_records_arrive_as_log_entries(broker: BrokerProcess, attach: Attach) -> None:
    handler = BusLogHandler(broker.frontend, node="node-7", connect_timeout=5)
    log = attach("app.logbridge.delivery", handler)
    own = attach("exesdb.logbridge_test", handler)
    with Subscriber(broker.backend) as sub:
        sub.subscribe("logging")
        own.error("the SDK's own record: never published")
        warning_line = line_after()
        log.warning(
            "disk %s",
            "full",
            extra={"disk": "/dev/sda", "nested": {"ids": (1, 2), "ok": True}, "thing": Unpackable()},
        )
        try:
            raise ValueError("boom-42")
        except ValueError:
            exception_line = line_after()
            log.exception("could not %s", "write")

        topic, warning = entry_of(sub)
        assert topic == "ex_esdb_logging/app.logbridge.delivery"
        assert warning.level == "warning"
        assert warning.message == "disk full"
        assert warning.logger == "app.logbridge.delivery"
        assert warning.node == "node-7"
        assert warning.module == "test_logbridge"
        assert warning.function == "test_records_arrive_as_log_entries"
        assert warning.line == warning_line
        assert warning.metadata["disk"] == "/dev/sda"
        assert warning.metadata["nested"] == {"ids": [1, 2], "ok": True}
        assert warning.metadata["thing"] == "<unpackable thing>"
        assert warning.metadata["thread"] == "MainThread"
        assert isinstance(warning.metadata["process"], int)

        topic, error = entry_of(sub)
        assert topic == "ex_esdb_logging/app.logbridge.delivery"
        assert error.level == "error"
        assert error.line == exception_line
        assert error.message.startswith("could not write\nTraceback (most recent call last):")
        assert "ValueError: boom-42" in error.message

    handler.flush(5)
    assert handler.stats == LogBridgeStats(sent=2, dropped=0, pending=0)


def test_levels_and_logger_names_map_to_valid_entries(broker: BrokerProcess, attach: Attach) -> None:
    handler = BusLogHandler(broker.frontend, connect_timeout=5)
    log = attach("app.logbridge.levels", handler)
    odd = attach("app\tlogbridge\x7fodd", handler)
    with Subscriber(broker.backend) as sub:
        sub.subscribe("logging")
        for level in (
            5,
            logging.DEBUG,
            logging.INFO,
            25,
            logging.WARNING,
            logging.ERROR,
            45,
            logging.CRITICAL,
        ):
            log.log(level, "level %d", level)
        odd.info("from an odd name")
        got = [entry_of(sub)[1].level for _ in range(8)]
        assert got == ["debug", "debug", "info", "warning", "warning", "error", "critical", "critical"]
        topic, entry = entry_of(sub)
        assert topic == "ex_esdb_logging/app?logbridge?odd"
        assert entry.message == "from an odd name"


def test_secret_signs_the_entries(broker: BrokerProcess, attach: Attach) -> None:
    handler = BusLogHandler(broker.frontend, connect_timeout=5, secret="s3cret")
    log = attach("app.logbridge.signed", handler)
    with Subscriber(broker.backend, secret="s3cret") as sub:
        sub.subscribe("logging")
        log.info("signed")
        message = sub.recv(timeout=5)
        assert message.data["message"] == "signed"
        assert message.sig is not None
        assert sub.stats.rejected == 0


def test_broker_down_never_blocks_and_every_record_is_accounted_for(attach: Attach) -> None:
    count = 50_000
    handler = BusLogHandler(free_endpoint(), queue_size=100, connect_timeout=0.2)
    log = attach("app.logbridge.down", handler)

    started = time.monotonic()
    for i in range(count):
        log.info("record %d", i)
    elapsed = time.monotonic() - started

    assert elapsed < 10, f"logging {count} records took {elapsed:.1f} s: it waited on the network"
    stats = handler.stats
    assert stats.sent == 0
    assert stats.dropped + stats.pending == count
    assert stats.pending <= 100 + 1  # the queue, plus the record the thread holds
    assert stats.dropped >= count - 101

    started = time.monotonic()
    handler.close()
    assert time.monotonic() - started < 6
    assert handler.stats == LogBridgeStats(sent=0, dropped=count, pending=0)
    handler.close()  # idempotent
    log.info("after close")  # counted, never raised
    assert handler.stats.dropped == count + 1


def test_recovers_once_a_broker_appears(start_broker: StartBroker, attach: Attach) -> None:
    frontend = free_endpoint()
    handler = BusLogHandler(frontend, connect_timeout=0.3, queue_size=1000)
    log = attach("app.logbridge.recovery", handler)
    log.info("before the broker")
    assert wait_until(lambda: handler.stats.dropped >= 1, timeout=10), handler.stats  # connect failed

    broker = start_broker("--frontend", frontend)
    with Subscriber(broker.backend) as sub:
        sub.subscribe("logging")
        received: LogEntry | None = None
        deadline = time.monotonic() + 30
        rounds = 0
        while received is None and time.monotonic() < deadline:
            rounds += 1
            log.info("after the broker, round %d", rounds)  # earlier ones may be lost by design
            try:
                received = LogEntry.from_data(sub.recv(timeout=0.5).data)
            except ReceiveTimeoutError:
                continue
    assert received is not None, f"nothing delivered after {rounds} rounds: {handler.stats}"
    assert received.message.startswith("after the broker, round ")
    assert received.logger == "app.logbridge.recovery"
    # the thread counts a record once publish returns, which may be after it was received
    assert wait_until(lambda: handler.stats.sent >= 1), handler.stats
