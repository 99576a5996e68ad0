"""The journal during an incident, against a real ``exesdb-broker``: a flood of alerts (bounded
memory, every message journaled or counted, durable publishes and replays still served), a
stop in the middle of a backlog, exact counts, and last values that cost no write per message."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
from exesdb_sdk import ControlClient, Publisher, Subscriber

from .conftest import BrokerProcess, StartBroker, raw_publisher, wait_until

ALERTS = b"ex_esdb_alerts/warning"
AUDIT = b"ex_esdb_audit/access"


def _journal(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control, timeout=10) as control:
        stats: dict[str, Any] = control.stats()
    return stats


def _rss_mb(broker: BrokerProcess) -> float:
    status = Path(f"/proc/{broker.proc.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def _flood_body(n: int) -> bytes:
    data = {"severity": "warning", "title": "disk latency high", "description": "x" * 40}
    return msgspec.msgpack.encode(
        {"v": 1, "type": "SystemAlert", "ts": 1, "src": "load", "pub": "flood", "seq": n, "data": data}
    )


def _flood(broker: BrokerProcess, count: int, on_batch: Any = None, topic: bytes = ALERTS) -> int:
    """Send ``count`` messages as fast as a raw publisher can; return how many were sent."""
    raw = raw_publisher(broker.frontend)
    body = _flood_body(1)
    sent = 0
    try:
        for _ in range(count // 1000):
            for _ in range(1000):
                raw.send_multipart([topic, body])
            sent += 1000
            if on_batch is not None:
                on_batch()
    finally:
        raw.close(linger=5000)
    return sent


def test_a_flood_of_alerts_stays_bounded_and_every_message_is_journaled_or_counted(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    broker = start_broker("--data-dir", str(tmp_path), "--journal-max-records", "0")
    peak = [_rss_mb(broker)]
    durable_seqs: list[int] = []
    stop = threading.Event()

    def durable_meanwhile() -> None:  # durable publishes and replays keep being served
        with Publisher(broker.frontend, control=broker.control) as pub, ControlClient(broker.control) as control:
            for n in range(10_000):
                if stop.wait(0.05):
                    return
                durable_seqs.append(
                    pub.publish(
                        "alerts", "critical", "SystemAlert", {"severity": "critical", "title": f"d{n}"}, durable=True
                    )
                )
                control.request("replay", {"instance": "alerts", "limit": 10})

    thread = threading.Thread(target=durable_meanwhile, daemon=True)
    thread.start()
    try:
        sent = _flood(broker, 600_000, lambda: peak.append(_rss_mb(broker)))
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and len(durable_seqs) >= 2

    def accounted(journal: dict[str, Any]) -> bool:
        # Every alert published was journaled or counted as dropped, exactly: the flood, the
        # durable publishes, and the broker's own SystemAlerts saying the journal sheds.
        published = sent + journal["durable"] + journal["shed_alerts"]
        journaled = journal["heads"]["ex_esdb_alerts"] - journal["gaps"]  # a gap marker takes a number too
        return bool(journaled + journal["dropped"] == published)

    assert wait_until(lambda: accounted(_journal(broker)["journal"]), 30), _journal(broker)["journal"]
    journal = _journal(broker)["journal"]
    peak.append(_rss_mb(broker))
    assert max(peak) < 300, f"broker RSS peaked at {max(peak):.0f} MB"
    assert journal["backlog"] == 0 and journal["in_feeds"] == 0
    assert journal["dropped_by_instance"].get("ex_esdb_alerts", 0) == journal["dropped"]
    assert journal["committed_live"] + journal["durable"] == journal["heads"]["ex_esdb_alerts"] - journal["gaps"]
    assert journal["state"] == "ok" and broker.proc.poll() is None


def test_sigterm_commits_the_backlog_and_says_what_it_drained(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path), "--journal-max-records", "0")
    sent = _flood(broker, 300_000, topic=AUDIT)  # audit: the journal's own alerts go elsewhere
    # once the proxy has forwarded all of it, stop at once, with the journal still behind
    assert wait_until(lambda: _journal(broker)["forwarded"]["frames_in"] >= 2 * sent, 30)
    assert broker.stop() == 0
    stopped = re.search(
        r"journal stopped: drained and committed (\d+) record\(s\) at stop, (\d+) left; (\d+) live message\(s\) "
        r"not journaled since start \(.*\), marked by (\d+) gap marker\(s\)",
        broker.stderr,
    )
    assert stopped, broker.stderr
    _drained, left, dropped, markers = (int(g) for g in stopped.groups())
    assert left == 0
    again = start_broker("--data-dir", str(tmp_path), "--journal-max-records", "0")
    heads = _journal(again)["journal"]["heads"]["ex_esdb_audit"]
    assert heads == sent - dropped + markers  # nothing received was lost silently at the stop


def test_journal_counts_agree_with_each_other_in_every_snapshot(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path), "--journal-max-records", "0")
    snapshots: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        with ControlClient(broker.control, timeout=10) as control:
            for _ in range(10_000):
                if stop.wait(0.02):
                    return
                snapshots.append(control.stats()["journal"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        sent = _flood(broker, 300_000)
        assert wait_until(
            lambda: _journal(broker)["journal"]["in_feeds"] == 0 and _journal(broker)["journal"]["backlog"] == 0, 30
        )
    finally:
        stop.set()
        watcher.join(10)
    assert len(snapshots) >= 5
    assert any(s["backlog"] + s["in_feeds"] > 0 for s in snapshots)  # some taken while the journal was behind
    for journal in snapshots:  # what was read is committed, buffered, or was lost by a restart (none here)
        assert journal["received"] == journal["committed_live"] + journal["backlog"]
    # the broker's own alert about the shedding is counted when published and lands a moment later
    final: dict[str, Any] = {}

    def balanced() -> bool:
        final.update(_journal(broker)["journal"])
        return bool(final["received"] + final["dropped"] == sent + final["shed_alerts"])

    assert wait_until(balanced, 10), final


def test_last_values_are_kept_in_memory_and_written_once_a_second(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    before = _journal(broker)["journal"]["last_value_writes"]
    with Publisher(broker.frontend) as pub:
        started = time.monotonic()
        for n in range(20_000):  # a steady stream of health reports, one message per call
            pub.publish(
                "health",
                f"node_health:n{n % 10}",
                "NodeHealth",
                {"node": f"n{n % 10}", "status": "healthy", "load_avg": n},
            )
        elapsed = time.monotonic() - started

    def latest() -> list[Any]:
        with ControlClient(broker.control) as control:
            records: list[Any] = control.request("last", {"prefix": "ex_esdb_health/node_health:"})["records"]
        return records

    assert wait_until(
        lambda: len(latest()) == 10 and msgspec.msgpack.decode(latest()[-1][2])["data"]["load_avg"] == 19_999, 10
    )
    writes = _journal(broker)["journal"]["last_value_writes"] - before
    assert writes <= elapsed + 3, f"{writes} last-value transactions for {elapsed:.1f} s of updates"
    # and at stop they are written: the newest survives a restart
    assert broker.stop() == 0
    again = start_broker("--data-dir", str(tmp_path))
    with Subscriber(again.backend, control=again.control) as sub:
        sub.subscribe("health", "node_health:n9", with_last=True)
        assert sub.recv(timeout=5).data["load_avg"] == 19_999


def test_a_malformed_last_value_is_counted_and_the_good_one_before_it_kept(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    topic = b"ex_esdb_health/node_health:n1"
    good = msgspec.msgpack.encode(
        {"type": "NodeHealth", "pub": "p", "seq": 1, "data": {"node": "n1", "status": "healthy"}}
    )
    raw = raw_publisher(broker.frontend)
    try:
        raw.send_multipart([topic, good])
        assert wait_until(lambda: _journal(broker)["journal"]["last_values"] == 1)
        raw.send_multipart([topic, b"\x82\xa4type\xa4Fuzz\xa4data\x81\xa1x" + b"\x91" * 1000 + b"\xc0"])
        assert wait_until(lambda: _journal(broker)["journal"]["malformed"] == 1)
    finally:
        raw.close()
    with ControlClient(broker.control) as control:
        records = control.request("last", {"prefix": "ex_esdb_health/node_health:"})["records"]
    assert [(name, body) for name, _, body in records] == [(topic.decode(), good)]
