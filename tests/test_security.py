"""Security: CURVE on every endpoint, per-role allowlists, safe defaults, security events.

Every test that touches the wire runs a real ``exesdb-broker`` subprocess on 127.0.0.1 and
real pyzmq clients; keys are made fresh per test in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from exesdb_broker.config import BrokerConfig
from exesdb_broker.security import (
    ADMINS,
    OP_ROLES,
    PUBLISHERS,
    SUBSCRIBERS,
    Security,
    SecurityMonitor,
    TokenBucket,
    check_binds,
)
from exesdb_sdk import (
    AsyncControlClient,
    AsyncPublisher,
    AsyncSubscriber,
    AuthenticationError,
    ConfigError,
    ControlClient,
    ControlError,
    Publisher,
    ReceiveTimeoutError,
    Subscriber,
)
from exesdb_sdk.curve import load_key_file, resolve_client_keys, write_key_pair
from exesdb_sdk.messages import Payload

from .conftest import FREE, BrokerProcess, StartBroker, wait_until
from .peers import free_endpoint

EXESDB = str(Path(sys.executable).with_name("exesdb"))
RELOADED = re.compile(r"allowlists reloaded")
NOT_RELOADED = re.compile(r"allowlists not reloaded")
TIMEOUT = 5.0


@dataclass
class Keys:
    """A broker key pair, three allowlist directories and client key pairs (secret files)."""

    root: Path
    server_secret: Path
    server_public: Path
    dirs: dict[str, Path]
    clients: dict[str, Path]

    def client(self, name: str) -> dict[str, Any]:
        return {"client_key": self.clients[name], "server_key": self.server_public}

    def public(self, name: str) -> Path:
        return self.clients[name].with_suffix(".key")

    def allow(self, name: str, role: str) -> None:
        shutil.copy(self.public(name), self.dirs[role] / f"{name}.key")

    def broker_args(self) -> list[str]:
        return [
            "--broker-key", str(self.server_secret),
            "--allow-publishers", str(self.dirs[PUBLISHERS]),
            "--allow-subscribers", str(self.dirs[SUBSCRIBERS]),
            "--allow-admins", str(self.dirs[ADMINS]),
        ]  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    server_public, server_secret = write_key_pair(tmp_path / "server", "broker")
    dirs = {role: tmp_path / "allow" / role for role in (PUBLISHERS, SUBSCRIBERS, ADMINS)}
    for directory in dirs.values():
        directory.mkdir(parents=True)
    clients = {name: write_key_pair(tmp_path / "clients", name)[1] for name in ("pub", "sub", "adm", "stranger")}
    made = Keys(tmp_path, server_secret, server_public, dirs, clients)
    made.allow("pub", PUBLISHERS)
    made.allow("sub", SUBSCRIBERS)
    made.allow("adm", ADMINS)
    return made


@pytest.fixture
def secure(start_broker: StartBroker, keys: Keys) -> BrokerProcess:
    """A broker with security on, publishing its metrics often (to see its own messages flow)."""
    return start_broker(*keys.broker_args(), "--metrics-interval", "0.2")


def _stats(broker: BrokerProcess, keys: Keys) -> dict[str, Any]:
    with ControlClient(broker.control, **keys.client("adm")) as control:
        return control.stats()


def _failures(broker: BrokerProcess, keys: Keys, endpoint: str) -> int:
    count: int = _stats(broker, keys)["security"]["handshake_failures_by_endpoint"][endpoint]
    return count


def _curve_socket(socket_type: int, keys: Keys, name: str | None, server: Path | None = None) -> zmq.Socket[bytes]:
    """A raw pyzmq socket with a client's keys (or none), bypassing the SDK's fail-fast checks."""
    socket: zmq.Socket[bytes] = zmq.Context.instance().socket(socket_type)
    socket.setsockopt(zmq.LINGER, 0)
    if name is not None:
        pair = load_key_file(keys.clients[name], secret=True)
        assert pair.secret is not None
        socket.curve_publickey = pair.public
        socket.curve_secretkey = pair.secret
        socket.curve_serverkey = load_key_file(server or keys.server_public).public
    return socket


# -- allowed keys work ------------------------------------------------------------------------------


def test_allowed_keys_work_for_each_role_and_the_brokers_own_messages_flow(secure: BrokerProcess, keys: Keys) -> None:
    with (
        Subscriber(secure.backend, **keys.client("sub")) as sub,
        Publisher(secure.frontend, **keys.client("pub")) as pub,
    ):
        sub.subscribe("health")
        sub.subscribe("metrics", "broker")
        pub.publish("health", "node_health:n1", "NodeHealth", {"node": "n1", "status": "healthy"})
        seen = _collect(sub, {"ex_esdb_health/node_health:n1", "ex_esdb_metrics/broker"})
        assert seen == {"ex_esdb_health/node_health:n1", "ex_esdb_metrics/broker"}  # inproc internals need no key
    with ControlClient(secure.control, **keys.client("pub")) as control:
        assert control.ping()["pong"] is True
        assert len(control.instances()) == 10
    stats = _stats(secure, keys)
    assert stats["security"]["enabled"] is True
    assert stats["security"]["allowlists"] == {PUBLISHERS: 1, SUBSCRIBERS: 1, ADMINS: 1}
    assert stats["security"]["handshake_failures"] == 0


def _collect(sub: Subscriber, wanted: set[str]) -> set[str]:
    """Receive until every topic in ``wanted`` has arrived (bounded by count and time)."""
    seen: set[str] = set()
    deadline = time.monotonic() + TIMEOUT * 2
    for _ in range(10_000):
        if wanted <= seen or time.monotonic() > deadline:
            break
        try:
            seen.add(sub.recv(timeout=max(0.01, deadline - time.monotonic())).topic)
        except ReceiveTimeoutError:
            break
    return seen & wanted


def test_async_clients_with_keys(secure: BrokerProcess, keys: Keys) -> None:
    async def scenario() -> tuple[str, int, str]:
        async with (
            AsyncSubscriber(secure.backend, **keys.client("sub")) as sub,
            AsyncPublisher(secure.frontend, **keys.client("pub")) as pub,
        ):
            await sub.subscribe("alerts")
            await pub.publish("alerts", "critical", "SystemAlert", {"severity": "critical", "title": "t"})
            topic = (await sub.recv(TIMEOUT)).topic
        async with AsyncControlClient(secure.control, **keys.client("adm")) as control:
            enabled = (await control.stats())["security"]["allowlists"][ADMINS]
        with pytest.raises(AuthenticationError) as refused:
            async with AsyncPublisher(secure.frontend, connect_timeout=TIMEOUT, **keys.client("stranger")):
                pass
        return topic, enabled, str(refused.value)

    topic, admins, refused = asyncio.run(scenario())
    assert (topic, admins) == ("ex_esdb_alerts/critical", 1)
    assert refused.startswith("authentication failed at ")


# -- refused keys ------------------------------------------------------------------------------------

ENDPOINT_OF = {"publisher": "frontend", "subscriber": "backend", "control": "control"}


def _attempt(kind: str, broker: BrokerProcess, credentials: dict[str, Any]) -> None:
    if kind == "publisher":
        Publisher(broker.frontend, connect_timeout=TIMEOUT, **credentials).close()
    elif kind == "subscriber":
        with Subscriber(broker.backend, subscribe_timeout=TIMEOUT, **credentials) as sub:
            sub.subscribe("health")
    else:
        with ControlClient(broker.control, timeout=TIMEOUT, **credentials) as control:
            control.ping()


@pytest.mark.parametrize("kind", ["publisher", "subscriber", "control"])
@pytest.mark.parametrize("who", ["unknown key", "no key", "wrong server key"])
def test_refused_clients_fail_fast_saying_authentication_failed_and_are_counted(
    secure: BrokerProcess, keys: Keys, kind: str, who: str
) -> None:
    credentials: dict[str, Any] = {
        "unknown key": keys.client("stranger"),
        "no key": {"client_key": "", "server_key": ""},
        # the client's own public key where the broker's belongs: a CURVE handshake the broker cannot read
        "wrong server key": {"client_key": keys.clients["adm"], "server_key": keys.public("adm")},
    }[who]
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match=r"^authentication failed at tcp://127\.0\.0\.1:\d+: ") as error:
        _attempt(kind, secure, credentials)
    assert time.monotonic() - started < TIMEOUT  # well inside the timeout: not a silent wait for it
    assert isinstance(error.value, PermissionError)
    endpoint = ENDPOINT_OF[kind]
    assert wait_until(lambda: _failures(secure, keys, endpoint) >= 1, timeout=TIMEOUT)


def test_a_key_of_another_role_is_refused_at_each_data_endpoint(secure: BrokerProcess, keys: Keys) -> None:
    with pytest.raises(AuthenticationError, match="refused this client's key"):
        Publisher(secure.frontend, connect_timeout=TIMEOUT, **keys.client("sub"))  # subscriber-only key
    with pytest.raises(AuthenticationError, match="refused this client's key"):
        _attempt("subscriber", secure, keys.client("pub"))

    def counted() -> bool:  # the broker reads its monitor events in its own time
        stats = _stats(secure, keys)["security"]
        by_endpoint, by_kind = stats["handshake_failures_by_endpoint"], stats["handshake_failures_by_kind"]
        return bool(by_endpoint.get("frontend", 0) >= 1 and by_kind.get("auth", 0) >= 2)

    assert wait_until(counted, timeout=TIMEOUT), _stats(secure, keys)["security"]


def test_no_data_reaches_or_leaves_a_refused_client(secure: BrokerProcess, keys: Keys) -> None:
    intruder_pub = _curve_socket(zmq.XPUB, keys, "stranger")
    intruder_sub = _curve_socket(zmq.SUB, keys, "stranger")
    plain_sub = _curve_socket(zmq.SUB, keys, None)
    try:
        intruder_pub.connect(secure.frontend)
        for socket in (intruder_sub, plain_sub):
            socket.setsockopt(zmq.SUBSCRIBE, b"")
            socket.connect(secure.backend)
        for _ in range(50):  # whatever it sends goes nowhere: it never completes a handshake
            intruder_pub.send_multipart([b"ex_esdb_audit/intruder", b"\x81\xa4type\xa1X"], zmq.NOBLOCK)
        assert wait_until(lambda: _failures(secure, keys, "frontend") >= 1, timeout=TIMEOUT)
        assert wait_until(lambda: _failures(secure, keys, "backend") >= 2, timeout=TIMEOUT)
        with (
            Subscriber(secure.backend, **keys.client("sub")) as sub,
            Publisher(secure.frontend, **keys.client("pub")) as pub,
        ):
            sub.subscribe("audit")
            pub.publish("audit", "ok", "Custom", {"n": 1})
            assert sub.recv(timeout=TIMEOUT).topic == "ex_esdb_audit/ok"
            with pytest.raises(ReceiveTimeoutError):
                sub.recv(timeout=0.3)
        # delivered to the allowed subscriber; the refused ones got nothing
        assert not intruder_sub.poll(300) and not plain_sub.poll(0)
        assert wait_until(lambda: _stats(secure, keys)["instances"]["ex_esdb_audit"]["messages"] == 1, TIMEOUT)
    finally:
        for socket in (intruder_pub, intruder_sub, plain_sub):
            socket.close()


def test_a_client_with_keys_at_a_broker_without_curve_fails_clearly(broker: BrokerProcess, keys: Keys) -> None:
    with pytest.raises(AuthenticationError, match="authentication failed"):
        Publisher(broker.frontend, connect_timeout=TIMEOUT, **keys.client("pub"))


# -- control op roles -----------------------------------------------------------------------------------


def test_control_ops_are_authorized_per_role(secure: BrokerProcess, keys: Keys) -> None:
    with ControlClient(secure.control, **keys.client("sub")) as control:
        assert control.ping()["pong"] is True
        with pytest.raises(ControlError) as refused:
            control.stats()
        assert refused.value.code == "forbidden"
        assert "needs the role admins" in refused.value.message and "subscribers" in refused.value.message
        with pytest.raises(ControlError) as unknown:
            control.request("no_such_op")
        assert unknown.value.code == "unknown_op"
    assert _stats(secure, keys)["security"]["forbidden_ops"] == 1


def test_durable_publish_and_replay_with_keys_are_authorized_per_role(secure: BrokerProcess, keys: Keys) -> None:
    """The journal's ops go through the role check before the journal thread sees them."""
    with Publisher(secure.frontend, control=secure.control, **keys.client("pub")) as pub:
        seqs = [pub.publish("audit", "keys", "Custom", {"n": n}, durable=True) for n in range(3)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    with Subscriber(secure.backend, control=secure.control, **keys.client("sub")) as sub:
        sub.subscribe("audit", "keys", replay_from="earliest")
        assert [m.data["n"] for m in sub.iter(timeout=0.5)] == [0, 1, 2]
        assert sub.stats.replayed == 3
    with ControlClient(secure.control, **keys.client("sub")) as control:
        with pytest.raises(ControlError) as refused:
            control.request("publish", {"topic": "ex_esdb_audit/keys", "body": b"\x80"})
        assert refused.value.code == "forbidden"
    with ControlClient(secure.control, **keys.client("pub")) as control:
        for op in ("replay", "last"):
            with pytest.raises(ControlError) as refused:
                control.request(op, {"instance": "ex_esdb_audit", "prefix": ""})
            assert refused.value.code == "forbidden", op
    with ControlClient(secure.control, **keys.client("adm")) as control:
        assert [record[0] for record in control.request("replay", {"instance": "ex_esdb_audit"})["records"]] == seqs
    assert _stats(secure, keys)["security"]["forbidden_ops"] == 3


def _monitor(keys: Keys | None) -> tuple[SecurityMonitor, list[Payload], list[float]]:
    """A SecurityMonitor over a real Security (keys loaded, no sockets) and a fake clock."""
    published: list[Payload] = []
    now = [0.0]
    config = BrokerConfig()
    if keys is not None:
        config = BrokerConfig(
            broker_key=str(keys.server_secret),
            allow_publishers=str(keys.dirs[PUBLISHERS]),
            allow_subscribers=str(keys.dirs[SUBSCRIBERS]),
            allow_admins=str(keys.dirs[ADMINS]),
        )
    security = Security(config)
    bucket = TokenBucket(3, 1.0, clock=lambda: now[0])
    monitor = SecurityMonitor(security, "n1", published.append, {"frontend": "tcp://x"}, bucket=bucket)
    return monitor, published, now


def test_op_role_table(keys: Keys) -> None:
    monitor, _, _ = _monitor(keys)
    allowed = {
        (op, role)
        for op in ("ping", "instances", "stats", "publish", "publish_many", "replay", "last", "future_op")
        for role in ("publishers", "subscribers", "admins", "publishers,subscribers")
        if monitor.authorize(op, role) is None
    }
    any_role = {"publishers", "subscribers", "admins", "publishers,subscribers"}
    assert allowed == {
        *(("ping", r) for r in any_role),
        *(("instances", r) for r in any_role),
        ("stats", "admins"),
        ("publish", "publishers"), ("publish", "admins"), ("publish", "publishers,subscribers"),
        ("publish_many", "publishers"), ("publish_many", "admins"), ("publish_many", "publishers,subscribers"),
        ("replay", "subscribers"), ("replay", "admins"), ("replay", "publishers,subscribers"),
        ("last", "subscribers"), ("last", "admins"), ("last", "publishers,subscribers"),
        ("future_op", "admins"),
    }  # fmt: skip
    assert set(OP_ROLES) == {"ping", "instances", "stats", "publish", "publish_many", "replay", "last"}
    open_monitor, _, _ = _monitor(None)
    assert all(open_monitor.authorize(op, None) is None for op in ("stats", "publish", "future_op"))


def test_violations_are_rate_limited_and_summarized(keys: Keys) -> None:
    monitor, published, now = _monitor(keys)
    for _ in range(10):
        monitor.on_monitor_event("frontend", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 0x11000001)
    assert [type(p).__name__ for p in published] == ["AccessViolation"] * 3
    snapshot = monitor.snapshot()
    assert (snapshot["handshake_failures"], snapshot["violations_published"], snapshot["violations_suppressed"]) == (
        10, 3, 7,
    )  # fmt: skip
    now[0] = 2.0  # two tokens back
    monitor.on_monitor_event("frontend", zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    assert len(published) == 4
    monitor._next_summary = 0.0
    monitor.tick()
    alert = published[-1]
    assert type(alert).__name__ == "SecurityAlert"
    assert alert.metadata["suppressed"] == 7  # type: ignore[attr-defined]
    monitor._next_summary = 0.0
    monitor.tick()
    assert len(published) == 5  # no new suppressions: no second summary


# -- visibility: AccessViolation on the bus --------------------------------------------------------------


def test_access_violation_appears_on_the_security_instance(secure: BrokerProcess, keys: Keys) -> None:
    stranger = load_key_file(keys.public("stranger")).public.decode()
    with Subscriber(secure.backend, **keys.client("sub")) as sub:
        sub.subscribe("security", "access_violations")
        with pytest.raises(AuthenticationError):
            Publisher(secure.frontend, connect_timeout=TIMEOUT, **keys.client("stranger"))
        message = sub.recv(timeout=TIMEOUT)
    assert (message.topic, message.type) == ("ex_esdb_security/access_violations", "AccessViolation")
    assert message.data["principal"] == stranger
    assert message.data["source_ip"] == "127.0.0.1"
    assert message.data["resource"] == f"frontend {secure.frontend}"
    assert message.data["action"] == "connect"
    assert "allow_publishers" in message.data["reason"]


# -- SIGHUP reload ------------------------------------------------------------------------------------------


def _reload(broker: BrokerProcess, pattern: re.Pattern[str] = RELOADED) -> str:
    broker.terminate(signal.SIGHUP)
    logged = broker.wait_line(pattern, TIMEOUT)
    assert logged is not None, broker.stderr
    return logged.string


def test_sighup_adds_a_key_that_then_works(secure: BrokerProcess, keys: Keys) -> None:
    with pytest.raises(AuthenticationError):
        Publisher(secure.frontend, connect_timeout=TIMEOUT, **keys.client("stranger"))
    keys.allow("stranger", PUBLISHERS)
    _reload(secure)
    with (
        Subscriber(secure.backend, **keys.client("sub")) as sub,
        Publisher(secure.frontend, **keys.client("stranger")) as pub,
    ):
        sub.subscribe("logging")
        pub.publish("logging", "app", "Custom", {"msg": "now allowed"})
        assert sub.recv(timeout=TIMEOUT).data == {"msg": "now allowed"}
    security = _stats(secure, keys)["security"]
    assert (security["reloads"], security["allowlists"][PUBLISHERS]) == (1, 2)
    assert "publishers=2 (was 1)" in secure.stderr


def test_sighup_removes_a_key_whose_open_connection_is_cut(secure: BrokerProcess, keys: Keys) -> None:
    with Subscriber(secure.backend, **keys.client("sub")) as sub:
        sub.subscribe("alerts")
        sub.wait_ready(TIMEOUT)
        (keys.dirs[SUBSCRIBERS] / "sub.key").unlink()
        _reload(secure)
        assert wait_until(lambda: _stats(secure, keys)["security"]["cuts"]["backend"] == 1, TIMEOUT)
        with Publisher(secure.frontend, **keys.client("pub")) as pub:
            pub.publish("alerts", "warning", "Custom", {"n": 1})
            # the connection was cut and its reconnect refused: said, not a silent wait
            with pytest.raises(AuthenticationError, match="refused this client's key"):
                sub.recv(timeout=TIMEOUT)
    with pytest.raises(AuthenticationError, match="refused this client's key"):
        _attempt("subscriber", secure, keys.client("sub"))


def test_sighup_with_a_bad_key_file_keeps_the_previous_lists(secure: BrokerProcess, keys: Keys) -> None:
    (keys.dirs[PUBLISHERS] / "broken.key").write_text('curve\n    public-key = "short"\n')
    assert "broken.key" in _reload(secure, NOT_RELOADED)
    with Publisher(secure.frontend, **keys.client("pub")):
        pass
    assert _stats(secure, keys)["security"]["reloads"] == 0


# -- safe defaults ----------------------------------------------------------------------------------------------


def _broker_fails(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    broker = BrokerProcess(args, env=env)
    code = broker.wait_exit(15)
    return code, broker.stderr


@pytest.mark.parametrize(
    ("flag", "url"), [("--frontend", "tcp://0.0.0.0:*"), ("--backend", "tcp://*:*"), ("--control", "tcp://[::]:*")]
)
def test_a_non_loopback_bind_without_curve_is_refused(clean_env: dict[str, str], flag: str, url: str) -> None:
    args = {"--frontend": FREE, "--backend": FREE, "--control": FREE, flag: url}
    code, stderr = _broker_fails([a for pair in args.items() for a in pair], clean_env)
    assert code == 2
    assert stderr.count("\n") == 0 and "Traceback" not in stderr
    assert stderr.startswith("exesdb-broker: error: ") and "is not a loopback address" in stderr
    assert "--allow-insecure" in stderr


def test_a_non_loopback_bind_from_the_environment_is_refused_too(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "EXESDB_FRONTEND": "tcp://0.0.0.0:*", "EXESDB_BACKEND": FREE, "EXESDB_CONTROL": FREE}
    code, stderr = _broker_fails([], env)
    assert code == 2 and "frontend tcp://0.0.0.0:* is not a loopback address" in stderr


def test_allow_insecure_warns_for_each_non_loopback_endpoint_and_loopback_still_starts(
    start_broker: StartBroker,
) -> None:
    config = BrokerConfig(frontend="tcp://0.0.0.0:7100", backend="tcp://127.0.0.1:7101", allow_insecure=True)
    assert check_binds(config, secure=False) == [
        "insecure: frontend tcp://0.0.0.0:7100 is reachable from the network without CURVE (--allow-insecure)"
    ]
    assert check_binds(BrokerConfig(frontend="tcp://0.0.0.0:7100"), secure=True) == []
    with pytest.raises(ConfigError, match="not a loopback address"):
        check_binds(BrokerConfig(frontend="tcp://0.0.0.0:7100"), secure=False)
    broker = start_broker("--allow-insecure")  # loopback only: nothing to warn about
    assert "insecure" not in broker.stderr


# -- keys on disk --------------------------------------------------------------------------------------------------


def test_keygen_writes_a_0600_secret_and_a_loadable_public_key(tmp_path: Path, clean_env: dict[str, str]) -> None:
    env = {**clean_env}
    old = os.umask(0)  # even with a permissive umask, the secret file is 0600
    try:
        done = subprocess.run(
            [EXESDB, "keygen", "node1", "--dir", str(tmp_path / "k")], env=env, capture_output=True, text=True
        )
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    secret, public = tmp_path / "k" / "node1.key_secret", tmp_path / "k" / "node1.key"
    assert done.stdout.splitlines() == [f"public key: {public}", f"secret key: {secret} (mode 0600: keep it private)"]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(public)[1] is None  # the zmq.auth format, public part only
    pair = zmq.auth.load_certificate(secret)
    assert pair[1] is not None and zmq.curve_public(pair[1]) == pair[0]
    again = subprocess.run(
        [EXESDB, "keygen", "node1", "--dir", str(tmp_path / "k")], env=env, capture_output=True, text=True
    )
    assert again.returncode == 1
    assert (
        again.stderr == f"exesdb: error: {public} already exists: not overwritten (choose another name or remove it)\n"
    )
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and pair == zmq.auth.load_certificate(secret)


def test_keygen_refuses_a_path_as_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain file name"):
        write_key_pair(tmp_path, "../escape")


BAD_FILES: dict[str, tuple[str, str]] = {
    "garbage": ("hello\n", "no public-key line"),
    "short": ('curve\n    public-key = "abc"\n', "public-key is not a 40-character Z85 key"),
    "bad_z85": ('curve\n    public-key = "' + "~" * 40 + '"\n', "not a 40-character Z85 key"),
    "z85_overflow": ('curve\n    public-key = "' + "%" * 40 + '"\n', "not a 40-character Z85 key"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_key_files_give_one_line_errors(tmp_path: Path, keys: Keys, case: str) -> None:
    content, expected = BAD_FILES[case]
    bad = tmp_path / "bad.key_secret"
    bad.write_text(content)
    with pytest.raises(ConfigError) as error:
        resolve_client_keys(bad, keys.server_public)
    assert str(error.value).startswith(f"client_key {bad}: ") and expected in str(error.value)
    assert "\n" not in str(error.value)


def test_key_file_mistakes_are_named(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch, clean_env: dict[str, str]
) -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: resolve_client_keys(tmp_path / "missing", keys.server_public), "client_key {}: not found"),
        (lambda: resolve_client_keys(tmp_path, keys.server_public), "is a directory"),
        (lambda: resolve_client_keys(keys.public("pub"), keys.server_public), "no secret-key in it"),
        (lambda: resolve_client_keys(keys.clients["pub"], None), "no server key"),
        (lambda: resolve_client_keys(None, keys.server_public), "no client key"),
    ]
    mixed = tmp_path / "mixed.key_secret"
    secret = zmq.curve_keypair()[1]
    other_public = zmq.curve_keypair()[0]
    mixed.write_text(f'curve\n    public-key = "{other_public.decode()}"\n    secret-key = "{secret.decode()}"\n')
    cases.append((lambda: resolve_client_keys(mixed, keys.server_public), "secret-key does not belong to public-key"))
    for call, expected in cases:
        with pytest.raises(ConfigError, match=re.escape(expected.format(tmp_path / "missing"))):
            call()
    monkeypatch.setenv("EXESDB_CLIENT_KEY", str(tmp_path / "nope"))
    monkeypatch.setenv("EXESDB_SERVER_KEY", str(keys.server_public))
    with pytest.raises(ConfigError, match=r"client_key \(from EXESDB_CLIENT_KEY\) .*nope: not found"):
        Publisher("tcp://127.0.0.1:1", connect_timeout=0.1)
    assert resolve_client_keys("", "") is None  # "" turns the variables off


def test_cli_key_errors_are_one_line(tmp_path: Path, clean_env: dict[str, str], keys: Keys) -> None:
    env = {**clean_env, "EXESDB_FRONTEND": "tcp://127.0.0.1:1"}
    done = subprocess.run(
        [EXESDB, "publish", "logging", "app", "{}", "--client-key", str(tmp_path / "nope"), "--server-key",
         str(keys.server_public), "--connect-timeout", "1"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == f"exesdb: error: client_key {tmp_path / 'nope'}: not found\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--broker-key", "/nonexistent/broker.key_secret"],
            "--broker-key: /nonexistent/broker.key_secret: no such file",
        ),
        (["--allow-publishers", "/nonexistent"], "--allow-publishers: /nonexistent: no such directory"),
    ],
)
def test_broker_key_setting_errors_exit_2(clean_env: dict[str, str], extra: list[str], expected: str) -> None:
    code, stderr = _broker_fails(["--frontend", FREE, "--backend", FREE, "--control", FREE, *extra], clean_env)
    assert (code, stderr) == (2, f"exesdb-broker: error: {expected}")


def test_broker_refuses_bad_key_files_and_lists_without_a_key(clean_env: dict[str, str], keys: Keys) -> None:
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE]
    code, stderr = _broker_fails([*args, "--allow-admins", str(keys.dirs[ADMINS])], clean_env)
    assert code == 2 and stderr.endswith(
        "allow_admins given without broker_key: the allowlists need CURVE (set broker_key)"
    )
    (keys.dirs[SUBSCRIBERS] / "bad.key").write_text("nothing here\n")
    code, stderr = _broker_fails([*args, *keys.broker_args()], clean_env)
    assert code == 2 and stderr.count("\n") == 0
    assert f"allow_subscribers key file {keys.dirs[SUBSCRIBERS] / 'bad.key'}: no public-key line" in stderr
    code, stderr = _broker_fails([*args, "--broker-key", str(keys.server_public)], clean_env)
    assert code == 2 and "broker_key" in stderr and "no secret-key in it" in stderr


def test_security_from_the_toml_file(start_broker: StartBroker, keys: Keys, tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        "[broker]\n"
        f'broker_key = "{keys.server_secret}"\n'
        f'allow_publishers = "{keys.dirs[PUBLISHERS]}"\n'
        f'allow_subscribers = "{keys.dirs[SUBSCRIBERS]}"\n'
        f'allow_admins = "{keys.dirs[ADMINS]}"\n'
    )
    broker = start_broker("--config", str(config))
    with pytest.raises(AuthenticationError):
        Publisher(broker.frontend, connect_timeout=TIMEOUT)
    with Publisher(broker.frontend, **keys.client("pub")):
        pass


def test_security_from_the_environment_for_broker_and_clients(
    start_broker: StartBroker, keys: Keys, clean_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        **clean_env,
        "EXESDB_BROKER_KEY": str(keys.server_secret),
        "EXESDB_ALLOW_PUBLISHERS": str(keys.dirs[PUBLISHERS]),
        "EXESDB_ALLOW_SUBSCRIBERS": str(keys.dirs[SUBSCRIBERS]),
        "EXESDB_ALLOW_ADMINS": str(keys.dirs[ADMINS]),
    }
    broker = start_broker(env=env)
    monkeypatch.setenv("EXESDB_SERVER_KEY", str(keys.server_public))
    monkeypatch.setenv("EXESDB_CLIENT_KEY", str(keys.clients["adm"]))
    with ControlClient(broker.control) as control:
        assert control.stats()["security"]["enabled"] is True
    monkeypatch.setenv("EXESDB_CLIENT_KEY", str(keys.clients["pub"]))
    with Publisher(broker.frontend):
        pass
    with pytest.raises(AuthenticationError):  # the publisher's key from the environment cannot subscribe
        _attempt("subscriber", broker, {})


# -- signing and CURVE together ------------------------------------------------------------------------------------


def test_signing_and_curve_together(secure: BrokerProcess, keys: Keys) -> None:
    with (
        Subscriber(secure.backend, secret="s3cret", **keys.client("sub")) as sub,
        Subscriber(secure.backend, secret="other", **keys.client("sub")) as wrong,
    ):
        sub.subscribe("audit")
        wrong.subscribe("audit")
        with Publisher(secure.frontend, secret="s3cret", **keys.client("pub")) as pub:
            pub.publish("audit", "admin_actions", "AdminNote", {"action": "x", "admin": "a", "target": "t"})
            pub.publish("audit", "marker", "Custom", {"last": True})
        assert sub.recv(timeout=TIMEOUT).topic == "ex_esdb_audit/admin_actions"
        assert sub.recv(timeout=TIMEOUT).data == {"last": True}
        assert wait_until(lambda: _rejected(wrong) == 2, timeout=TIMEOUT)


def _rejected(sub: Subscriber) -> int:
    with contextlib.suppress(ReceiveTimeoutError):
        sub.recv(timeout=0.05)
    return sub.stats.rejected


# -- the README's worked set-up ----------------------------------------------------------------------------------


def _readme_setup(marker: str = "<!-- security set-up: run by tests/test_security.py -->") -> list[str]:
    """The commands of the README's ``sh`` block after ``marker``, one a line."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index(marker)
    block = re.search(r"```sh\n(.*?)```", readme[start:], re.DOTALL)
    assert block
    return [line for line in block.group(1).splitlines() if line.strip()]


def _readme_env(clean_env: dict[str, str], *endpoints: str) -> dict[str, str]:
    """The environment the README's commands run in: this Python's scripts first on ``PATH``,
    and ``EXESDB_<endpoint>`` on a free 127.0.0.1 port each."""
    env = {**clean_env, "PATH": str(Path(sys.executable).parent) + os.pathsep + clean_env.get("PATH", "")}
    for name in ("FRONTEND", "BACKEND", "CONTROL", *endpoints):
        env[f"EXESDB_{name}"] = free_endpoint()
    return env


def _run_all(commands: list[str], env: dict[str, str]) -> None:
    for command in commands:
        done = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{command}: {done.stderr}"


def _tail_one(tail_cmd: str, publish_cmd: str, env: dict[str, str]) -> str:
    """Run ``tail_cmd`` for one message (as JSON), ``publish_cmd`` once it follows; the tail's output."""
    tail = subprocess.Popen(
        tail_cmd + " --count 1 --timeout 20 --json",
        shell=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert tail.stderr is not None
    line = tail.stderr.readline()
    assert line.startswith("exesdb tail: following"), line + tail.stderr.read()
    done = subprocess.run(publish_cmd, shell=True, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    out, _ = tail.communicate(timeout=30)
    assert tail.returncode == 0
    return out


@pytest.mark.timeout(120)
def test_the_readme_security_setup_works(
    tmp_path: Path, clean_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _readme_setup()
    broker_at = next(i for i, line in enumerate(lines) if line.startswith("exesdb-broker "))
    setup, (broker_cmd, tail_cmd, publish_cmd, stats_cmd) = lines[:broker_at], lines[broker_at:]
    monkeypatch.chdir(tmp_path)  # the commands use paths relative to where they run
    env = _readme_env(clean_env)
    _run_all(setup, env)
    assert stat.S_IMODE((tmp_path / "keys" / "clients" / "sensor.key_secret").stat().st_mode) == 0o600
    program, *args = shlex.split(broker_cmd)
    assert program == "exesdb-broker"
    broker = BrokerProcess(args, env=env).wait_ready()
    try:
        out = _tail_one(tail_cmd, publish_cmd, env)
        assert '"topic": "ex_esdb_health/node_health:node1"' in out
        done = subprocess.run(stats_cmd + " --json", shell=True, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["security"]["handshake_failures"] == 0
        # the subscriber's key cannot publish: one line, status 1, nothing sent
        intruder = publish_cmd.replace("sensor.key_secret", "dashboard.key_secret")
        done = subprocess.run(intruder, shell=True, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 1
        assert done.stderr.startswith("exesdb: error: authentication failed at tcp://127.0.0.1:")
        assert done.stderr.count("\n") == 1
    finally:
        assert broker.stop() == 0


def test_a_dead_zap_handler_is_restarted_and_handshakes_go_on(keys: Keys, tmp_path: Path) -> None:
    from exesdb_broker import Broker, BrokerConfig

    config = BrokerConfig(
        frontend="tcp://127.0.0.1:*",
        backend="tcp://127.0.0.1:*",
        control="tcp://127.0.0.1:*",
        broker_key=str(keys.server_secret),
        allow_publishers=str(keys.dirs[PUBLISHERS]),
        allow_subscribers=str(keys.dirs[SUBSCRIBERS]),
        allow_admins=str(keys.dirs[ADMINS]),
        data_dir=str(tmp_path / "data"),
        http="none",
    )
    with Broker(config) as broker:
        broker._security._authenticator.stop()  # type: ignore[union-attr]  # the ZAP thread dies
        assert wait_until(lambda: broker.restarts.get("zap") == 1, 10)
        with ControlClient(broker.control, timeout=5, **keys.client("adm")) as control:  # a new handshake
            assert control.stats()["restarts"]["by_thread"] == {"zap": 1}
        assert broker.running
