"""The ``exesdb-broker`` daemon: bad input, stats, control, lifecycle, signals, start-up errors."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from typing import Any

import msgspec
import pytest
import zmq
from exesdb_sdk import ControlClient, ControlError, Instance, Publisher, ReceiveTimeoutError, Subscriber

from .conftest import BrokerProcess, StartBroker, raw_publisher, wait_until


def _stats(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control, timeout=5) as control:
        return control.stats()


def _envelope(seq: int = 1, **data: Any) -> bytes:
    return msgspec.msgpack.encode(
        {"v": 1, "type": "T", "ts": 1, "src": "n", "pub": "0123456789abcdef", "seq": seq, "data": data}
    )


def _round_trip(broker: BrokerProcess) -> None:
    """Proof that the broker still serves: a fresh subscriber gets a fresh publisher's message."""
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend) as pub:
        sub.subscribe("diagnostics")
        pub.publish("diagnostics", "probe", "Probe", {"alive": True})
        assert sub.recv(timeout=5).data == {"alive": True}


def test_exact_stats_after_a_known_burst(broker: BrokerProcess) -> None:
    frames = [(b"ex_esdb_audit/burst", _envelope(seq, i=seq)) for seq in range(1, 1001)]
    frames += [(b"ex_esdb_security/auth", _envelope(seq)) for seq in range(1, 11)]
    batch = msgspec.msgpack.encode([msgspec.msgpack.decode(_envelope(s)) for s in (11, 12, 13)])
    frames.append((b"ex_esdb_security/auth", batch))
    raw = raw_publisher(broker.frontend)
    try:
        for topic, body in frames:
            raw.send_multipart([topic, body])
    finally:
        raw.close()
    audit_bytes = sum(len(t) + len(b) for t, b in frames if t.startswith(b"ex_esdb_audit/"))
    security_bytes = sum(len(t) + len(b) for t, b in frames if t.startswith(b"ex_esdb_security/"))

    assert wait_until(lambda: _stats(broker)["instances"]["ex_esdb_security"]["messages"] == 11, 10)
    stats = _stats(broker)
    audit = stats["instances"]["ex_esdb_audit"]
    security = stats["instances"]["ex_esdb_security"]
    assert (audit["messages"], audit["envelopes"], audit["bytes"]) == (1000, 1000, audit_bytes)
    assert (security["messages"], security["envelopes"], security["bytes"]) == (11, 13, security_bytes)
    assert stats["malformed"] == 0
    assert stats["forwarded"]["frames_in"] >= 2 * 1011
    assert stats["tap_behind_frames"] == 0
    assert stats["version"] and stats["protocol"] == 1 and stats["uptime"] > 0
    # the broker's own lifecycle messages are counted like any others
    assert stats["instances"]["ex_esdb_system"]["messages"] == 2
    assert set(stats["instances"]) == {i.value for i in Instance}


def test_broker_receives_with_no_subscriber_connected(broker: BrokerProcess) -> None:
    with Publisher(broker.frontend) as pub:
        for i in range(50):
            pub.publish("logging", "app", "AppLog", {"i": i})
    # envelopes: the publisher coalesces a burst into batch messages
    assert wait_until(lambda: _stats(broker)["instances"]["ex_esdb_logging"]["envelopes"] == 50, 10)
    assert _stats(broker)["subscribers"] == 0


MALFORMED = [
    ("single_frame", [b"ex_esdb_health/x"]),
    ("bad_topic", [b"ex_esdb_health\xff/x", _envelope()]),
    ("bad_topic", [b"no-separator", _envelope()]),
    ("unknown_instance", [b"ex_esdb_healthz/x", _envelope()]),
    ("unknown_instance", [b"health/x", _envelope()]),
    ("bad_body", [b"ex_esdb_health/x", b"\xc1 not msgpack"]),
    ("bad_body", [b"ex_esdb_health/x", _envelope() + b"trailing"]),
    ("bad_body", [b"ex_esdb_health/x", _envelope().replace(b"\xa1n", b"\xa1\xff")]),  # src not UTF-8
    ("bad_envelope", [b"ex_esdb_health/x", msgspec.msgpack.encode("a string")]),
    ("bad_envelope", [b"ex_esdb_health/x", msgspec.msgpack.encode({"data": {}})]),
    ("bad_envelope", [b"ex_esdb_health/x", msgspec.msgpack.encode({"type": "T", "ts": "noon"})]),
    ("bad_envelope", [b"ex_esdb_health/x", msgspec.msgpack.encode([])]),
]


def test_malformed_input_is_counted_and_the_broker_carries_on(broker: BrokerProcess) -> None:
    errors: list[str] = []
    with Subscriber(broker.backend, on_error=lambda exc, frames: errors.append(exc.reason)) as sub:
        sub.subscribe("health")
        raw = raw_publisher(broker.frontend)
        try:
            for _, frames in MALFORMED:
                raw.send_multipart(frames)
            raw.send_multipart([b"ex_esdb_health/x", _envelope(7, ok=True), b"reserved", b"frames"])
        finally:
            raw.close()
        good = sub.recv(timeout=5)
        assert good.data == {"ok": True}, "extra frames are ignored, and bad ones never yielded"
        with pytest.raises(ReceiveTimeoutError):
            sub.recv(timeout=0.2)
    expected: dict[str, int] = {}
    for reason, _ in MALFORMED:
        expected[reason] = expected.get(reason, 0) + 1
    # the good one went last: once the tap has counted it, it has classified every one before it
    assert wait_until(lambda: _stats(broker)["instances"]["ex_esdb_health"]["messages"] >= 1, 10)
    stats = _stats(broker)
    assert stats["malformed"] == len(MALFORMED)
    assert stats["malformed_by_reason"] == expected
    assert stats["instances"]["ex_esdb_health"]["messages"] == 1
    # the subscriber saw, skipped and reported the malformed ones under its prefix, in order
    assert errors == [r for r, f in MALFORMED if f[0].startswith(b"ex_esdb_health/")]
    assert sub.stats.decode_errors == len(errors)
    _round_trip(broker)


def test_oversized_message_is_refused(start_broker: StartBroker) -> None:
    broker = start_broker("--max-message-size", "2048")
    with Subscriber(broker.backend) as sub:
        sub.subscribe("diagnostics")
        raw = raw_publisher(broker.frontend)
        try:
            raw.send_multipart([b"ex_esdb_diagnostics/big", _envelope(1, blob=b"x" * 4096)])
        finally:
            raw.close()
        with pytest.raises(ReceiveTimeoutError):
            sub.recv(timeout=0.5)
    _round_trip(broker)
    # only the round trip's message is counted; the oversized one never got in
    assert wait_until(lambda: _stats(broker)["instances"]["ex_esdb_diagnostics"]["messages"] == 1)


def test_control_errors_are_replies_and_the_broker_carries_on(broker: BrokerProcess) -> None:
    with ControlClient(broker.control) as control:
        with pytest.raises(ControlError, match="unknown_op: unknown op 'explode'") as caught:
            control.request("explode")
        assert caught.value.code == "unknown_op"
        assert control.ping()["pong"] is True

    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(broker.control)
    try:
        for bad in (b"\xc1\xc1", msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode({"op": 3})):
            req.send(bad)
            reply = msgspec.msgpack.decode(req.recv())
            assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
        req.send(msgspec.msgpack.encode({"op": "instances", "id": "abc"}))
        reply = msgspec.msgpack.decode(req.recv())
        assert reply["ok"] is True and reply["id"] == "abc"
        assert [i["alias"] for i in reply["instances"]] == [i.alias for i in Instance]
    finally:
        req.close()

    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(broker.control)
    try:
        dealer.send_multipart([b"a", b"b", b"c"])  # not a request envelope at all
        dealer.send(msgspec.msgpack.encode({"op": "ping"}))  # DEALER without the empty delimiter
        assert dealer.poll(5000)
        first = dealer.recv_multipart()
        assert msgspec.msgpack.decode(first[-1])["error"]["code"] == "bad_request"
        assert dealer.poll(5000)
        assert msgspec.msgpack.decode(dealer.recv_multipart()[-1])["pong"] is True
    finally:
        dealer.close()
    _round_trip(broker)


def test_connection_counts(broker: BrokerProcess) -> None:
    subs = [Subscriber(broker.backend) for _ in range(3)]
    try:
        for sub in subs:
            sub.subscribe("health")
        with Publisher(broker.frontend):
            assert wait_until(lambda: (_stats(broker)["subscribers"], _stats(broker)["publishers"]) == (3, 1))
    finally:
        for sub in subs:
            sub.close()
    assert wait_until(lambda: (_stats(broker)["subscribers"], _stats(broker)["publishers"]) == (0, 0))


def test_lifecycle_and_metrics_are_published(start_broker: StartBroker) -> None:
    broker = start_broker("--metrics-interval", "0.2", "--node", "broker-node")
    with Subscriber(broker.backend) as sub:
        sub.subscribe("metrics", "broker")
        sub.subscribe("system", "lifecycle")
        metrics = sub.recv(timeout=5)
        assert (metrics.topic, metrics.type, metrics.src) == (
            "ex_esdb_metrics/broker",
            "BrokerMetrics",
            "broker-node",
        )
        assert {"uptime", "messages", "bytes", "rate", "subscribers", "malformed"} <= set(metrics.data)
        assert metrics.data["subscribers"] == 1
        broker.terminate()
        lifecycle = [m.data["event"] for m in sub.iter(timeout=3) if m.type == "SystemLifecycle"]
    assert lifecycle == ["stopping", "stopped"]
    assert broker.wait_exit(5) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly_with_status_0_within_2_seconds(broker: BrokerProcess, sig: int) -> None:
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend):
        sub.subscribe("health")  # live connections do not hold the stop up
        started = time.monotonic()
        broker.terminate(sig)
        code = broker.wait_exit(5)
        elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 2.0
    assert "Traceback" not in broker.stderr
    assert "broker stopped" in broker.stderr


# the frontend is bound last, once every thread runs: its failure undoes a running broker
@pytest.mark.parametrize("role", ["backend", "control", "frontend"])
def test_port_in_use_is_a_one_line_error(start_broker: StartBroker, role: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = start_broker(f"--{role}", f"tcp://127.0.0.1:{port}", ready=False)
        code = broker.wait_exit(15)
    assert code == 1
    *before, last = broker.lines
    assert last == f"exesdb-broker: error: cannot bind {role} to tcp://127.0.0.1:{port}: Address already in use"
    # only the frontend's comes after the journal opened: its opening and closing lines, no failure
    assert all(" INFO " in line for line in before) and (role == "frontend" or not before), before


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--frontend", "http://127.0.0.1:80", "transport 'http'"),
        ("--control", "tcp://127.0.0.1:99999", "port '99999'"),
        ("--backend", "tcp://nowhere.example:7101", "cannot resolve host 'nowhere.example'"),
        ("--log-level", "chatty", "'chatty' is not one of"),
        ("--hwm", "0", "--hwm: 0 is not greater than zero"),
    ],
)
def test_bad_settings_are_a_one_line_error(start_broker: StartBroker, flag: str, value: str, message: str) -> None:
    broker = start_broker(flag, value, ready=False)
    assert broker.wait_exit(15) == 2
    assert len(broker.lines) == 1, broker.stderr
    assert broker.lines[0].startswith("exesdb-broker: error: ")
    assert message in broker.lines[0]


def test_settings_precedence_flags_over_env_over_file(
    start_broker: StartBroker, tmp_path: Any, clean_env: dict[str, str]
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[broker]\nnode = "from-file"\nmetrics_interval = 0.2\nlog_format = "json"\n')
    env = {**clean_env, "EXESDB_NODE": "from-env", "EXESDB_LOG_FORMAT": "text"}
    broker = start_broker("--config", str(config), env=env)
    with Subscriber(broker.backend) as sub:
        sub.subscribe("metrics", "broker")
        assert sub.recv(timeout=5).src == "from-env"  # env beats file; the file's interval applies
    broker.stop()

    broker = start_broker("--config", str(config), "--node", "from-flag", "--log-format", "json", env=env)
    with Subscriber(broker.backend) as sub:
        sub.subscribe("metrics", "broker")
        assert sub.recv(timeout=5).src == "from-flag"
    ready = [json.loads(line) for line in broker.lines if '"ready"' in line]
    assert ready and ready[0]["frontend"] == broker.frontend


def test_bad_config_file_is_a_one_line_error(start_broker: StartBroker, tmp_path: Any) -> None:
    cases = {
        "typo.toml": ('[broker]\nfrontnd = "tcp://127.0.0.1:1"\n', "unknown setting"),
        "syntax.toml": ("[broker\n", "invalid TOML"),
        "type.toml": ("[broker]\nhwm = 'lots'\n", "'lots' is not a valid int"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        broker = start_broker("--config", str(path), ready=False)
        assert broker.wait_exit(15) == 2
        assert len(broker.lines) == 1 and message in broker.lines[0], broker.stderr
    broker = start_broker("--config", str(tmp_path / "missing.toml"), ready=False)
    assert broker.wait_exit(15) == 2
    assert re.fullmatch(r"exesdb-broker: error: config file .*missing.toml: not found", broker.lines[0])


# The defect report's bodies: 1000 arrays nested in ``data`` (1 KB), and a seq past 2**63 - 1.
DEEP_BODY = b"\x82\xa4type\xa4Fuzz\xa4data\x81\xa1x" + b"\x91" * 1000 + b"\xc0"
HUGE_SEQ_BODY = msgspec.msgpack.encode({"v": 1, "type": "T", "ts": 1, "pub": "0123456789abcdef", "seq": 2**63})


def test_deep_and_out_of_range_bodies_kill_no_thread(broker: BrokerProcess) -> None:
    errors: list[str] = []
    with Subscriber(broker.backend, on_error=lambda exc, frames: errors.append(exc.reason)) as sub:
        sub.subscribe("health")
        raw = raw_publisher(broker.frontend)
        try:
            for topic in (b"ex_esdb_health/x", b"ex_esdb_alerts/x"):  # alerts is journaled
                raw.send_multipart([topic, DEEP_BODY])
                raw.send_multipart([topic, HUGE_SEQ_BODY])
            raw.send_multipart([b"ex_esdb_health/x", _envelope(1, ok=True)])
        finally:
            raw.close()
        assert sub.recv(timeout=5).data == {"ok": True}, "the bad ones are skipped, never raised"
        assert errors == ["too_deep", "out_of_range"]

        # the stats tap counted them, and keeps counting
        assert wait_until(lambda: _stats(broker)["malformed"] == 4, 10), _stats(broker)
        assert _stats(broker)["malformed_by_reason"] == {"too_deep": 2, "out_of_range": 2}
        with Publisher(broker.frontend) as pub:  # a new publisher still gets the broker's subscription
            for n in range(3):
                pub.publish("health", "x", "T", {"n": n})
            assert [sub.recv(timeout=5).data["n"] for _ in range(3)] == [0, 1, 2]
        raw = raw_publisher(broker.frontend)
        try:
            raw.send_multipart([b"ex_esdb_health/x", DEEP_BODY])
        finally:
            raw.close()
        assert wait_until(lambda: _stats(broker)["malformed_by_reason"].get("too_deep") == 3, 10)
        assert _stats(broker)["instances"]["ex_esdb_health"]["envelopes"] == 4  # 1 raw + 3 published (coalesced)

    # the journal is still up: it recorded the two live ones as they came (it decodes no live
    # body; the tap counted them malformed, and a replay hands them to readers that skip them,
    # as live), refuses a bad durable publish and bad replay arguments with a clear error, and
    # records a good durable publish
    assert wait_until(lambda: _stats(broker)["journal"]["committed"] == 2, 10), _stats(broker)["journal"]
    journal = _stats(broker)["journal"]
    assert (journal["state"], journal["malformed"]) == ("ok", 0), journal
    with ControlClient(broker.control) as control:
        with pytest.raises(ControlError) as refused:
            control.request("publish", {"topic": "ex_esdb_alerts/x", "body": HUGE_SEQ_BODY})
        assert refused.value.code == "bad_request" and "out_of_range" in refused.value.message
        for key in ("from_seq", "since", "limit"):
            with pytest.raises(ControlError) as refused:
                control.request("replay", {"instance": "alerts", key: 2**63})
            assert refused.value.code == "bad_request" and repr(key) in refused.value.message
        with pytest.raises(ControlError, match="bad_request"):
            control.request("publish", {"topic": "ex_esdb_alerts/x", "body": DEEP_BODY})
    with Publisher(broker.frontend, control=broker.control) as pub:
        assert pub.publish("alerts", "x", "AlertNote", {"n": 1}, durable=True) == 3
    # the stats view is the journal's after its round, which goes on after the acknowledgement
    assert wait_until(lambda: _stats(broker)["journal"]["durable"] == 1, 10), _stats(broker)["journal"]
    journal = _stats(broker)["journal"]
    assert (journal["state"], journal["committed"], journal["durable"]) == ("ok", 3, 1), journal
    assert journal["malformed"] == 2  # the two refused durable publishes
    _round_trip(broker)
