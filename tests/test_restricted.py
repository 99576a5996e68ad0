"""Per-instance permissions: the restricted class (``--restricted security,audit``) travels on a
proxy pair of its own, with its own ZAP domains and key directories; a key outside the class
neither reads nor writes it, by any endpoint, and SIGHUP moves a key in and out.

Every test runs a real ``exesdb-broker`` with CURVE on 127.0.0.1 and real pyzmq or SDK clients.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from exesdb_broker.security import RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS
from exesdb_sdk import AuthenticationError, ControlClient, ControlError, Publisher, Subscriber
from exesdb_sdk.protocol import Encoder

from .conftest import FREE, BrokerProcess, StartBroker, wait_until
from .test_security import RELOADED, TIMEOUT, Keys, _curve_socket, keys

__all__ = ["keys"]  # the fixture, shared with test_security
pytestmark = pytest.mark.timeout(60)

RESTRICTED = ["security", "audit"]


def _args(keys: Keys) -> list[str]:
    for role in (RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS):
        keys.dirs[role] = keys.root / "allow" / role
        keys.dirs[role].mkdir(parents=True, exist_ok=True)
    for name in ("rpub", "rsub"):
        if name not in keys.clients:
            from exesdb_sdk.curve import write_key_pair

            keys.clients[name] = write_key_pair(keys.root / "clients", name)[1]
    keys.allow("rpub", RESTRICTED_PUBLISHERS)
    keys.allow("rsub", RESTRICTED_SUBSCRIBERS)
    return [
        *keys.broker_args(),
        "--restricted", ",".join(RESTRICTED),
        "--restricted-frontend", FREE,
        "--restricted-backend", FREE,
        "--allow-restricted-publishers", str(keys.dirs[RESTRICTED_PUBLISHERS]),
        "--allow-restricted-subscribers", str(keys.dirs[RESTRICTED_SUBSCRIBERS]),
    ]  # fmt: skip


@pytest.fixture
def restricted(start_broker: StartBroker, keys: Keys) -> BrokerProcess:
    broker = start_broker(*_args(keys), "--metrics-interval", "0.2")
    assert broker.restricted_frontend is not None and broker.restricted_backend is not None
    return broker


def _stats(broker: BrokerProcess, keys: Keys) -> dict[str, Any]:
    with ControlClient(broker.control, **keys.client("adm")) as control:
        return control.stats()


def _topics(
    socket: zmq.Socket[bytes], seconds: float, until: Callable[[list[bytes]], bool] | None = None
) -> list[bytes]:
    """The topics a raw SUB receives within ``seconds`` (sooner once ``until`` holds)."""
    topics: list[bytes] = []
    deadline = time.monotonic() + seconds
    for _ in range(100_000):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (until is not None and until(topics)):
            break
        if socket.poll(int(remaining * 1000) + 1):
            topics.append(socket.recv_multipart()[0])
    return topics


def _restricted(topics: list[bytes]) -> list[bytes]:
    return [t for t in topics if t.startswith((b"ex_esdb_security", b"ex_esdb_audit"))]


def test_the_classes_are_announced_by_the_instances_op(restricted: BrokerProcess, keys: Keys) -> None:
    with ControlClient(restricted.control, **keys.client("sub")) as control:
        classes = control.request("instances", {})["classes"]
    assert classes == [
        {
            "name": "restricted",
            "instances": ["ex_esdb_audit", "ex_esdb_security"],
            "frontend": restricted.restricted_frontend,
            "backend": restricted.restricted_backend,
        }
    ]


def test_a_key_outside_the_class_receives_no_restricted_message_on_any_endpoint(
    restricted: BrokerProcess, keys: Keys
) -> None:
    assert restricted.restricted_backend is not None and restricted.restricted_frontend is not None
    outside = []
    for endpoint in (restricted.backend, restricted.restricted_backend):
        raw = _curve_socket(zmq.SUB, keys, "sub")
        raw.setsockopt(zmq.SUBSCRIBE, b"")
        raw.connect(endpoint)
        outside.append(raw)
    with Subscriber(restricted.restricted_backend, **keys.client("rsub")) as inside:
        inside.subscribe("security")
        inside.subscribe("audit")
        inside.wait_ready(TIMEOUT)
        with pytest.raises(AuthenticationError):  # an AccessViolation on ex_esdb_security
            Publisher(restricted.frontend, connect_timeout=TIMEOUT, **keys.client("stranger"))
        with Publisher(restricted.restricted_frontend, **keys.client("rpub")) as rpub:
            for n in range(20):
                rpub.publish("audit", "change", "Custom", {"n": n})
        got: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        # one refused connect may be reported as more than one AccessViolation: read until the 20 audits
        while got.count("ex_esdb_audit/change") < 20 and time.monotonic() < deadline:
            got.append(inside.recv(timeout=TIMEOUT).topic)
    assert got.count("ex_esdb_audit/change") == 20
    assert any(topic.startswith("ex_esdb_security/") for topic in got), got
    public, refused = (_topics(raw, 1.0) for raw in outside)
    for raw in outside:
        raw.close()
    assert any(t.startswith(b"ex_esdb_metrics/") for t in public), "the public SUB was not connected"
    assert _restricted(public) == []
    assert refused == []  # the class's backend completed no handshake with the key
    security = _stats(restricted, keys)["security"]
    assert security["handshake_failures_by_endpoint"]["restricted_backend"] >= 1
    assert security["restricted"] == ["ex_esdb_audit", "ex_esdb_security"]


def test_a_publisher_key_outside_the_class_gets_no_message_onto_a_restricted_instance(
    restricted: BrokerProcess, keys: Keys
) -> None:
    assert restricted.restricted_frontend is not None and restricted.restricted_backend is not None
    with Subscriber(restricted.restricted_backend, **keys.client("rsub")) as inside:
        inside.subscribe("audit")
        inside.wait_ready(TIMEOUT)
        with (
            Publisher(restricted.frontend, coalesce=0, **keys.client("pub")) as pub,
            pytest.raises(AuthenticationError, match="may not publish to ex_esdb_audit"),
        ):
            pub.publish("audit", "forged", "Custom", {"n": 0})  # the SDK routes it to the class
        forger = _curve_socket(zmq.XPUB, keys, "pub")  # raw: straight to the public frontend
        try:
            forger.connect(restricted.frontend)
            assert forger.poll(int(TIMEOUT * 1000)), "the broker's subscription never reached the forger"
            encoder = Encoder(src="forger")
            for n in range(5):
                forger.send_multipart(
                    [b"ex_esdb_audit/forged", encoder.encode("ex_esdb_audit/forged", "Custom", {"n": n})]
                )
        finally:
            forger.close(linger=1000)
        with pytest.raises(AuthenticationError):
            Publisher(restricted.restricted_frontend, connect_timeout=TIMEOUT, **keys.client("pub"))
        with ControlClient(restricted.control, **keys.client("pub")) as control:
            with pytest.raises(ControlError, match="restricted_publishers") as refused:
                control.request("publish", {"topic": "ex_esdb_audit/forged", "body": b"\x80"})
            assert refused.value.code == "forbidden"
            with pytest.raises(ControlError, match="restricted_publishers"):  # one restricted message among many
                messages = [["ex_esdb_alerts/fine", b"\x80"], ["ex_esdb_audit/forged", b"\x80"]]
                control.request("publish_many", {"messages": messages})
        with Publisher(restricted.restricted_frontend, control=restricted.control, **keys.client("rpub")) as rpub:
            rpub.publish("audit", "genuine", "Custom", {"n": 1}, durable=True)
        assert inside.recv(timeout=TIMEOUT).topic == "ex_esdb_audit/genuine"
    assert wait_until(lambda: _stats(restricted, keys)["security"]["misrouted"].get("ex_esdb_audit") == 5, TIMEOUT)
    with ControlClient(restricted.control, **keys.client("rsub")) as control:
        topics = [r[2] for r in control.request("replay", {"instance": "audit"})["records"]]
    assert topics == ["ex_esdb_audit/genuine"]  # the journal took nothing from the public pair
    with ControlClient(restricted.control, **keys.client("sub")) as control:
        with pytest.raises(ControlError, match="on ex_esdb_audit needs the role"):
            control.request("replay", {"instance": "audit"})
        assert control.request("replay", {"instance": "alerts"})["instance"] == "ex_esdb_alerts"
    # the tap (idle priority) counts the genuine one when it gets to it; the forged five are not audit traffic
    assert wait_until(lambda: _stats(restricted, keys)["instances"]["ex_esdb_audit"]["messages"] >= 1, TIMEOUT)
    stats = _stats(restricted, keys)
    assert stats["instances"]["ex_esdb_audit"]["messages"] == 1
    assert stats["security"]["forbidden_ops"] == 3


def _reload(broker: BrokerProcess) -> None:
    broker.terminate(signal.SIGHUP)
    assert broker.wait_line(RELOADED, TIMEOUT) is not None, broker.stderr


def test_sighup_moves_a_key_into_the_class_and_out_again(restricted: BrokerProcess, keys: Keys) -> None:
    assert restricted.restricted_backend is not None and restricted.restricted_frontend is not None
    backend, frontend = restricted.restricted_backend, restricted.restricted_frontend
    with pytest.raises(AuthenticationError):
        Subscriber(backend, subscribe_timeout=TIMEOUT, **keys.client("sub")).subscribe("audit")
    shutil.copy(keys.public("sub"), keys.dirs[RESTRICTED_SUBSCRIBERS] / "sub.key")
    _reload(restricted)
    with Subscriber(backend, **keys.client("sub")) as sub:
        sub.subscribe("audit")
        sub.wait_ready(TIMEOUT)
        with Publisher(frontend, **keys.client("rpub")) as rpub:
            rpub.publish("audit", "moved", "Custom", {"in": True})
        assert sub.recv(timeout=TIMEOUT).data == {"in": True}
    (keys.dirs[RESTRICTED_SUBSCRIBERS] / "sub.key").unlink()
    _reload(restricted)
    with pytest.raises(AuthenticationError):
        Subscriber(backend, subscribe_timeout=TIMEOUT, **keys.client("sub")).subscribe("audit")
    assert _stats(restricted, keys)["security"]["allowlists"][RESTRICTED_SUBSCRIBERS] == 1


def _http(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.status, reply.read(200).decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_serves_no_restricted_instance(start_broker: StartBroker) -> None:
    broker = start_broker("--restricted", "security,audit", "--restricted-frontend", FREE,
                          "--restricted-backend", FREE, http=True)  # fmt: skip
    assert broker.http is not None
    body = json.dumps({"type": "Custom", "data": {"n": 1}}).encode()
    status, text = _http(f"{broker.http}/v1/publish/audit/forged", "POST", body)
    assert status == 403 and "restricted" in text, text
    status, text = _http(f"{broker.http}/v1/stream?instance=security")
    assert status == 403 and "ex_esdb_security is restricted" in text, text
    assert _http(f"{broker.http}/v1/publish/alerts/fine", "POST", body)[0] == 200


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--allow-restricted-subscribers", "."], "allow_restricted_subscribers given without broker_key"),
        (["--federation-nats", "nats://127.0.0.1:4", "--federation-exports", "audit"], "ex_esdb_audit is restricted"),
        (["--last-values", "ex_esdb_security/x"], "'ex_esdb_security/x' is in the restricted instance"),
        (["--restricted", "nonsense"], "restricted"),
    ],
)
def test_settings_that_would_route_around_the_class_are_one_line_errors(
    clean_env: dict[str, str], tmp_path: Path, extra: list[str], expected: str
) -> None:
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE, "--http", "none", "--data-dir", str(tmp_path)]
    if "--restricted" not in extra:
        args += ["--restricted", "security,audit"]
    broker = BrokerProcess([*args, *extra], env=clean_env)
    code = broker.wait_exit(15)
    lines = [line for line in broker.stderr.splitlines() if line.strip()]
    assert code == 2, broker.stderr
    assert len(lines) == 1 and expected in lines[0], broker.stderr


def test_a_connector_of_a_restricted_instance_is_a_one_line_error(clean_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        '[broker]\nrestricted = "security,audit"\n\n'
        '[[connectors]]\nname = "out"\nsink = "webhook"\ninstances = ["audit"]\nurl = "http://127.0.0.1:9/"\n'
    )
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE, "--http", "none", "--data-dir", str(tmp_path)]
    broker = BrokerProcess([*args, "--config", str(config)], env=clean_env)
    code = broker.wait_exit(15)
    lines = [line for line in broker.stderr.splitlines() if line.strip()]
    assert code == 2, broker.stderr
    assert len(lines) == 1 and "connector out: ex_esdb_audit is restricted" in lines[0], broker.stderr
