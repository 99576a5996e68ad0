"""The journal against real broker processes: durable publish, crash safety, torn writes,
retention, an unusable data directory, restarts, last values, and never dropping for it."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
from exesdb_broker.queries import Refused, int_arg
from exesdb_sdk import ControlClient, DurabilityError, Publisher, Subscriber
from exesdb_sdk.errors import BrokerUnavailableError, ControlError
from exesdb_sdk.protocol import MAX_INT

from . import conftest
from .conftest import BrokerProcess, StartBroker, raw_publisher, wait_until


def journal(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control) as control:
        stats: dict[str, Any] = control.stats()["journal"]
    return stats


def replay_all(broker: BrokerProcess, instance: str = "audit", **args: Any) -> list[list[Any]]:
    """Every record from the start (or ``args``), page by page; bounded."""
    records: list[list[Any]] = []
    with ControlClient(broker.control) as control:
        request: dict[str, Any] = {"instance": instance, **args}
        for _ in range(10_000):
            reply = control.request("replay", request)
            records.extend(reply["records"])
            if not reply["more"]:
                return records
            request = {"instance": instance, "from_seq": reply["next"]}
            if "prefix" in args:
                request["prefix"] = args["prefix"]
    raise AssertionError("replay did not end")


def envelope(record: list[Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.msgpack.decode(record[3])
    return decoded


def test_durable_publish_is_committed_forwarded_and_recorded_once(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend, control=broker.control) as pub:
        sub.subscribe("audit")
        seqs = [pub.publish("audit", "admin_actions", "Custom", {"n": n}, durable=True) for n in range(3)]
        assert seqs == [1, 2, 3]
        live = [sub.recv(timeout=5) for _ in range(3)]
        assert [m.data["n"] for m in live] == [0, 1, 2] and not any(m.replayed for m in live)
        assert [m.seq for m in live] == [1, 2, 3]  # the publisher's own numbering, unchanged
        pub.publish("audit", "admin_actions", "Custom", {"n": 3})  # a live one, journaled too
        assert sub.recv(timeout=5).data["n"] == 3
    assert wait_until(lambda: journal(broker)["heads"]["ex_esdb_audit"] == 4)
    records = replay_all(broker)
    assert [r[0] for r in records] == [1, 2, 3, 4]  # the durable ones came back around: not recorded twice
    assert [envelope(r)["data"]["n"] for r in records] == [0, 1, 2, 3]
    stats = journal(broker)
    assert stats["durable"] == 3 and stats["committed"] == 4 and stats["state"] == "ok"


def test_a_durable_batch_is_one_record_replayed_as_its_envelopes(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    with Publisher(broker.frontend, control=broker.control) as pub:
        assert pub.publish_batch("audit", "import", "Custom", [{"n": n} for n in range(5)], durable=True) == 5
        with pytest.raises(DurabilityError):
            pub.publish_batch("metrics", "import", "Custom", [{"n": 1}, {"n": 2}], durable=True)
        assert pub.publish_batch("metrics", "import", "Custom", [{"n": 1}]) == 1
        assert pub.publish("metrics", "import", "Custom", {}) == 2  # the refused batch left no gap
    assert [r[0] for r in replay_all(broker)] == [1]
    with Subscriber(broker.backend, control=broker.control) as sub:
        sub.subscribe("audit", replay_from="earliest")
        assert [(m.data["n"], m.seq, m.replayed) for m in sub.iter(timeout=0.3)] == [(n, n + 1, True) for n in range(5)]


def test_durable_publish_refusals_are_clear_errors(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    with Publisher(broker.frontend, control=broker.control) as pub:
        with pytest.raises(DurabilityError, match="ex_esdb_metrics is not journaled") as info:
            pub.publish("metrics", "x", "Custom", {}, durable=True)
        assert info.value.code == "not_journaled" and isinstance(info.value, OSError)
        # a refused durable publish gives its sequence number back: no gap for subscribers
        assert pub.publish("metrics", "x", "Custom", {}) == 1
    with ControlClient(broker.control) as control:
        for args, code in (
            ({"topic": "ex_esdb_audit/x", "body": b"\xc1"}, "bad_request"),
            ({"topic": 5}, "bad_request"),
        ):
            with pytest.raises(ControlError) as error:
                control.request("publish", args)
            assert error.value.code == code
        with pytest.raises(ControlError, match="not journaled"):
            control.request("replay", {"instance": "metrics"})
        with pytest.raises(ControlError, match="from_seq"):
            control.request("replay", {"instance": "audit", "from_seq": "x"})
        assert control.ping()["pong"]  # the broker carries on


@pytest.mark.timeout(60)
def test_kill_9_mid_burst_keeps_every_acknowledged_message_once_in_order(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    acked: list[tuple[int, int]] = []  # (broker seq, publisher seq)
    killed = threading.Event()

    def killer() -> None:
        if wait_until(lambda: len(acked) >= 300, timeout=30):
            broker.terminate(signal.SIGKILL)
        killed.set()

    threading.Thread(target=killer, daemon=True).start()
    with Publisher(broker.frontend, control=broker.control, control_timeout=1.0) as pub:
        with pytest.raises(BrokerUnavailableError):
            for n in range(1_000_000):
                seq = pub.publish("alerts", "critical", "Custom", {"n": n}, durable=True)
                acked.append((seq, n))
        pub_id = pub.pub_id
    assert killed.wait(10)
    assert broker.wait_exit(10) == -signal.SIGKILL
    assert len(acked) >= 300

    again = start_broker("--data-dir", str(tmp_path))
    records = replay_all(again, "alerts")
    seqs = [r[0] for r in records]
    assert seqs == list(range(1, len(records) + 1))  # in order, contiguous
    keys = [(envelope(r)["pub"], envelope(r)["seq"]) for r in records]
    assert len(set(keys)) == len(keys)  # no duplicate
    by_seq = {r[0]: envelope(r) for r in records}
    for seq, n in acked:  # every acknowledged message, at the seq it was acknowledged with
        assert by_seq[seq]["data"]["n"] == n and by_seq[seq]["pub"] == pub_id
    assert len(records) in (len(acked), len(acked) + 1)  # at most the one in flight, unacknowledged
    with Publisher(again.frontend, control=again.control) as pub:
        assert pub.publish("alerts", "critical", "Custom", {}, durable=True) == len(records) + 1


def test_a_torn_wal_and_a_damaged_file_do_not_stop_the_broker(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    with Publisher(broker.frontend, control=broker.control) as pub:
        for n in range(50):
            pub.publish("audit", "x", "Custom", {"n": n, "pad": "p" * 200}, durable=True)
    broker.terminate(signal.SIGKILL)
    broker.wait_exit(10)
    wal = tmp_path / "journal.db-wal"
    size = wal.stat().st_size
    assert size > 4096
    with wal.open("r+b") as handle:  # tear the last frame, then add garbage
        handle.truncate(size - 1500)
        handle.seek(0, os.SEEK_END)
        handle.write(os.urandom(3000))

    again = start_broker("--data-dir", str(tmp_path))
    records = replay_all(again)
    seqs = [r[0] for r in records]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < 50  # a consistent prefix survives
    with Publisher(again.frontend, control=again.control) as pub:
        assert pub.publish("audit", "x", "Custom", {}, durable=True) == len(seqs) + 1
    assert again.stop() == 0

    with (tmp_path / "journal.db").open("r+b") as handle:  # overwrite the first page
        handle.write(os.urandom(4096))
    third = start_broker("--data-dir", str(tmp_path))
    assert "unreadable" in third.stderr and "moved it to" in third.stderr
    with Publisher(third.frontend, control=third.control) as pub:
        assert pub.publish("audit", "x", "Custom", {}, durable=True) == 1  # a new journal
    assert any(p.name.startswith("journal.db.corrupt-") for p in tmp_path.iterdir())


def test_restart_on_an_existing_journal_continues_the_numbers(start_broker: StartBroker, tmp_path: Path) -> None:
    for round_ in range(2):
        broker = start_broker("--data-dir", str(tmp_path))
        with Publisher(broker.frontend, control=broker.control) as pub:
            seqs = [pub.publish("audit", "x", "Custom", {"round": round_}, durable=True) for _ in range(10)]
        assert seqs == list(range(1 + 10 * round_, 11 + 10 * round_))
        assert broker.stop() == 0
    broker = start_broker("--data-dir", str(tmp_path))
    assert [envelope(r)["data"]["round"] for r in replay_all(broker)] == [0] * 10 + [1] * 10


@pytest.mark.parametrize("how", ["file_in_the_way", "read_only"])
def test_unusable_data_dir_is_a_clear_start_up_message_and_durable_publish_error(
    start_broker: StartBroker, tmp_path: Path, how: str
) -> None:
    data_dir = tmp_path / "data"
    if how == "file_in_the_way":
        data_dir.write_text("not a directory")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only directories; the file_in_the_way case covers root")
        data_dir.mkdir()
        data_dir.chmod(0o500)
    broker = start_broker("--data-dir", str(data_dir))
    warnings = [line for line in broker.lines if "journal disabled" in line]
    assert len(warnings) == 1 and str(data_dir) in warnings[0], broker.stderr
    with Publisher(broker.frontend, control=broker.control) as pub:
        with pytest.raises(DurabilityError, match="journal unavailable") as info:
            pub.publish("alerts", "critical", "Custom", {}, durable=True)
        assert info.value.code == "journal_unavailable"
        pub.publish("alerts", "critical", "Custom", {})  # live publishing carries on
    assert journal(broker)["state"] == "unavailable"
    with Subscriber(broker.backend, control=broker.control) as sub, pytest.raises(DurabilityError):
        sub.subscribe("alerts", replay_from="earliest")


def test_a_second_broker_on_the_same_data_dir_runs_without_a_journal(start_broker: StartBroker, tmp_path: Path) -> None:
    first = start_broker("--data-dir", str(tmp_path))
    second = start_broker("--data-dir", str(tmp_path))
    assert any("in use by another broker" in line for line in second.lines)
    assert journal(first)["state"] == "ok" and journal(second)["state"] == "unavailable"


def test_retention_trims_by_count_and_by_age(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path / "count"), "--journal-max-records", "100")
    with Publisher(broker.frontend, control=broker.control) as pub:
        for n in range(350):
            pub.publish("audit", "x", "Custom", {"n": n}, durable=True)
    assert wait_until(lambda: replay_all(broker)[0][0] == 251, timeout=10)
    records = replay_all(broker)
    assert [r[0] for r in records] == list(range(251, 351))
    assert journal(broker)["trimmed"] == 250

    aged = start_broker("--data-dir", str(tmp_path / "age"), "--journal-max-age", "0.5")
    with Publisher(aged.frontend, control=aged.control) as pub:
        for n in range(20):
            pub.publish("audit", "x", "Custom", {"n": n}, durable=True)
    assert wait_until(lambda: replay_all(aged) == [], timeout=10)
    with Publisher(aged.frontend, control=aged.control) as pub:  # numbers never go back
        assert pub.publish("audit", "x", "Custom", {}, durable=True) == 21


def test_the_journal_never_drops_even_past_the_backend_hwm(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path), "--hwm", "100")
    raw = raw_publisher(broker.frontend)
    body = msgspec.msgpack.encode({"type": "Custom", "pub": "p", "seq": 1, "data": {}})
    try:
        for _ in range(30_000):
            raw.send_multipart([b"ex_esdb_audit/flood", body])
    finally:
        raw.close()
    assert wait_until(lambda: journal(broker)["heads"]["ex_esdb_audit"] == 30_000, timeout=30), journal(broker)
    assert wait_until(lambda: journal(broker)["backlog"] == 0)


def test_last_returns_the_latest_health_summary_per_store(start_broker: StartBroker, tmp_path: Path) -> None:
    from exesdb_sdk.messages import HealthSummary, NodeHealth

    broker = start_broker("--data-dir", str(tmp_path))
    with Publisher(broker.frontend) as pub:
        pub.publish_message(HealthSummary(store="orders", total=3, healthy=3))
        pub.publish_message(HealthSummary(store="billing", total=1, healthy=0, failed=1))
        pub.publish_message(HealthSummary(store="orders", total=3, healthy=2, degraded=1))
        pub.publish_message(NodeHealth(node="n1", status="healthy"))
        pub.publish("health", "store_health:orders", "Custom", {})  # not a last-value topic
    prefix = "ex_esdb_health/health_summary:"

    def latest(b: BrokerProcess) -> dict[str, int]:
        with ControlClient(b.control) as control:
            records = control.request("last", {"prefix": prefix})["records"]
        # a reader fills in the fields a typed body leaves out (healthy=0 is a default)
        return {
            topic: HealthSummary.from_data(msgspec.msgpack.decode(body)["data"]).healthy for topic, _, body in records
        }

    assert wait_until(lambda: len(latest(broker)) == 2)
    assert latest(broker) == {prefix + "billing": 0, prefix + "orders": 2}

    with Subscriber(broker.backend, control=broker.control) as sub:
        sub.subscribe("health", with_last=True)
        first = [sub.recv(timeout=5) for _ in range(3)]
        assert all(m.replayed for m in first)
        summaries = {m.payload.store: m.payload.healthy for m in first if isinstance(m.payload, HealthSummary)}
        assert summaries == {"billing": 0, "orders": 2}
        assert any(isinstance(m.payload, NodeHealth) for m in first)

    assert broker.stop() == 0  # kept across a restart
    again = start_broker("--data-dir", str(tmp_path))
    assert latest(again) == {prefix + "billing": 0, prefix + "orders": 2}


FULL_DISK_BROKER: Final = [
    sys.executable, "-c",
    "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000)); "
    "from exesdb_broker.cli import main; sys.argv[0] = 'exesdb-broker'; main()",
]  # fmt: skip
"""The broker under a file size limit, which stands in for a full disk: past it, SQLite's
writes fail (EFBIG; Python ignores SIGXFSZ), as they would with ENOSPC."""


def test_a_failing_commit_is_an_error_for_the_publisher_not_a_silent_loss(
    start_broker: StartBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conftest, "broker_command", lambda: FULL_DISK_BROKER)
    broker = start_broker("--data-dir", str(tmp_path))
    acked = 0
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend, control=broker.control) as pub:
        sub.subscribe("audit")
        with pytest.raises(DurabilityError, match="commit failed") as info:
            for _ in range(1000):
                pub.publish("audit", "big", "Custom", {"pad": "x" * 20_000}, durable=True)
                acked += 1
        assert info.value.code == "commit_failed"
        assert acked > 0
        assert len(list(sub.iter(timeout=0.5))) == acked  # the refused one was not forwarded
    assert wait_until(lambda: journal(broker)["refused"] >= 1, 10)  # the stats view is the journal's after its round
    stats = journal(broker)
    assert stats["refused"] == 1 and "commit failed" in stats["last_error"]
    with ControlClient(broker.control) as control:
        assert control.ping()["pong"]


def test_concurrent_durable_publishers_get_distinct_numbers_in_commit_order(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    results: dict[str, list[int]] = {}

    def publish_some(name: str) -> None:
        with Publisher(broker.frontend, control=broker.control) as pub:
            results[name] = [pub.publish("alerts", name, "Custom", {"n": n}, durable=True) for n in range(50)]

    threads = [threading.Thread(target=publish_some, args=(f"p{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(seq for seqs in results.values() for seq in seqs) == list(range(1, 201))
    assert all(seqs == sorted(seqs) for seqs in results.values())  # each publisher's order kept
    records = replay_all(broker, "alerts")
    for name, seqs in results.items():
        assert [r[0] for r in records if r[2] == f"ex_esdb_alerts/{name}"] == seqs


def test_durable_publish_and_replay_with_a_plain_dealer_as_the_protocol_describes(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    import msgpack
    import zmq

    broker = start_broker("--data-dir", str(tmp_path))
    body = msgpack.packb({"v": 1, "type": "Custom", "ts": 1, "src": "n", "pub": "abc", "seq": 1, "data": {"k": 1}})
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(broker.control)

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        dealer.send_multipart([b"", msgpack.packb(request)])
        assert dealer.poll(5000)
        empty, reply = dealer.recv_multipart()
        assert empty == b""
        decoded: dict[str, Any] = msgpack.unpackb(reply)
        return decoded

    try:
        ack = ask({"op": "publish", "topic": "ex_esdb_audit/x", "body": body, "id": 7})
        assert ack == {"ok": True, "seq": 1, "instance": "ex_esdb_audit", "id": 7}
        page = ask({"op": "replay", "instance": "audit", "since": 0, "limit": 10})
        assert page["ok"] and page["next"] == 2 and page["more"] is False
        assert (page["first"], page["last"]) == (1, 1)
        ((seq, rt, topic, recorded, durable),) = page["records"]
        assert (seq, topic, recorded, durable) == (1, "ex_esdb_audit/x", body, True) and rt > 0
        refused = ask({"op": "publish", "topic": "ex_esdb_metrics/x", "body": body})
        assert refused["ok"] is False and refused["error"]["code"] == "not_journaled"
        last = ask({"op": "last", "prefix": "ex_esdb_health/"})
        assert last["ok"] and last["records"] == [] and "ex_esdb_health/health_summary:" in last["topics"]
    finally:
        dealer.close()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--journal", "foo", "--journal: unknown instance 'foo'"),
        ("--journal-fsync", "maybe", "'maybe' is not one of durable, always, never"),
        ("--last-values", "health", "'health' needs '/' after the instance"),
        ("--journal-max-records", "-5", "is below zero"),
    ],
)
def test_bad_journal_settings_are_a_one_line_error(
    start_broker: StartBroker, flag: str, value: str, message: str
) -> None:
    broker = start_broker(flag, value, ready=False)
    assert broker.wait_exit(15) == 2
    assert len(broker.lines) == 1 and message in broker.lines[0], broker.stderr


def test_journal_settings_come_from_the_environment_and_the_file(
    start_broker: StartBroker, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker]\ndata_dir = "{tmp_path / "from-file"}"\njournal = "alerts"\n')
    broker = start_broker("--config", str(config), env={**clean_env, "EXESDB_JOURNAL": "audit,security"})
    stats = journal(broker)
    assert stats["data_dir"] == str(tmp_path / "from-file")
    assert stats["instances"] == ["ex_esdb_audit", "ex_esdb_security"]  # the environment wins over the file
    assert (tmp_path / "from-file" / "journal.db").exists()


@pytest.mark.parametrize("key", ["from_seq", "since", "limit"])
def test_integer_arguments_of_replay_are_bounded_at_max_int(key: str) -> None:
    minimum = 1 if key == "limit" else 0
    assert int_arg({key: MAX_INT}, key, 5, minimum) == MAX_INT
    assert int_arg({}, key, 5, minimum) == 5
    # past MAX_INT SQLite raises OverflowError, which is no sqlite3.Error: refuse before it
    for value in (MAX_INT + 1, 2**64 - 1, minimum - 1, True, "1", [1]):
        with pytest.raises(Refused) as caught:
            int_arg({key: value}, key, 5, minimum)
        assert caught.value.code == "bad_request" and repr(key) in caught.value.message
