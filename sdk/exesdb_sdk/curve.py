"""CURVE keys for clients: key files, socket set-up and clear authentication failures.

A broker with security on (CurveZMQ with per-role allowlists, see the README's "Security")
accepts only clients that hold an allowed key pair and know the broker's public key. Key
files use ZeroMQ's certificate format (``zmq.auth``), as ``exesdb keygen NAME`` writes them:
``NAME.key`` holds the public key, ``NAME.key_secret`` (mode 0600) both keys::

    curve
        public-key = "<40 Z85 characters>"
        secret-key = "<40 Z85 characters>"

A client takes ``client_key`` (its ``.key_secret`` file) and ``server_key`` (the broker's
``.key`` file), or ``$EXESDB_CLIENT_KEY`` / ``$EXESDB_SERVER_KEY``. Every client watches its
socket's handshake events while it waits for the broker, so a wrong or missing key fails
with :class:`~exesdb_sdk.errors.AuthenticationError` instead of a silent timeout.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.asyncio
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from .errors import AuthenticationError, BrokerUnavailableError, ConfigError, HandshakeError

__all__ = [
    "ENV_CLIENT_KEY",
    "ENV_SERVER_KEY",
    "BrokerGone",
    "ClientKeys",
    "HandshakeWatch",
    "KeyPair",
    "KeyPath",
    "apply_server_keys",
    "load_key_file",
    "resolve_client_keys",
    "write_key_pair",
]

ENV_CLIENT_KEY: Final = "EXESDB_CLIENT_KEY"
"""The environment variable naming the client's secret key file."""
ENV_SERVER_KEY: Final = "EXESDB_SERVER_KEY"
"""The environment variable naming the broker's public key file."""

KeyPath = str | os.PathLike[str]
"""A key file's path."""

_Z85: Final = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
_MAX_KEY_FILE: Final = 64 * 1024
_EVENTS: Final = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_FAILURES: Final = frozenset(
    {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH}
)
_MECHANISM_MISMATCH: Final = 0x11000002
_CRYPTOGRAPHIC: Final = 0x11000001
_SLICE_MS: Final = 20
_GONE: Final = zmq.EVENT_DISCONNECTED


class BrokerGone(BrokerUnavailableError):
    """The connection to the broker at ``endpoint`` was lost (its socket monitor said so): a
    client given several brokers moves to the next one."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint, 0.0)
        self.args = (f"the broker at {endpoint} went away",)

    def __str__(self) -> str:
        return str(self.args[0])


_SECRET_BANNER: Final = """#   ZeroMQ CURVE **Secret** Certificate, written by exesdb keygen
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""
_PUBLIC_BANNER: Final = """#   ZeroMQ CURVE Public Certificate, written by exesdb keygen
#   Give this file to the broker (an allowlist directory) or to clients (the server key).

"""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair as Z85 text (40 bytes each); ``secret`` is ``None`` for a public key file."""

    public: bytes
    secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What a client needs for CURVE: its own key pair and the broker's public key."""

    client: KeyPair
    server: bytes


def _check_z85(value: bytes, path: Path, what: str, name: str) -> bytes:
    try:
        valid = len(value) == 40 and set(value) <= _Z85 and len(z85.decode(value)) == 32
    except (ValueError, struct.error):  # a 5-character group over 2**32
        valid = False
    if not valid:
        raise ConfigError(f"{what} {path}: {name} is not a 40-character Z85 key")
    return value


def load_key_file(path: str | os.PathLike[str], *, what: str = "key file", secret: bool = False) -> KeyPair:
    """Read a ZeroMQ certificate file; with ``secret``, require its secret key too.

    Raises :class:`~exesdb_sdk.errors.ConfigError` with one line naming ``what`` and the file
    when it is missing, unreadable or malformed, or when the secret key does not match the
    public one.
    """
    where = Path(path)
    try:
        with where.open("rb") as handle:
            text = handle.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {where}: not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {where}: is a directory, not a key file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {where}: {exc.strerror}") from None
    if len(text) > _MAX_KEY_FILE:
        raise ConfigError(f"{what} {where}: too large for a key file")
    public = secret_key = None
    for raw in text.splitlines():
        line = raw.strip()
        name, sep, value = line.partition(b"=")
        if not sep or line.startswith(b"#"):
            continue
        if name.strip() == b"public-key":
            public = value.strip(b" \t'\"")
        elif name.strip() == b"secret-key":
            secret_key = value.strip(b" \t'\"")
    if public is None:
        raise ConfigError(f"{what} {where}: no public-key line (not a ZeroMQ certificate; make one with exesdb keygen)")
    _check_z85(public, where, what, "public-key")
    if secret_key is not None:
        _check_z85(secret_key, where, what, "secret-key")
        if zmq.curve_public(secret_key) != public:
            raise ConfigError(f"{what} {where}: secret-key does not belong to public-key")
    elif secret:
        raise ConfigError(
            f"{what} {where}: no secret-key in it (this looks like a public .key file; give the .key_secret file)"
        )
    return KeyPair(public, secret_key)


def _pick(explicit: str | os.PathLike[str] | None, env_var: str, what: str) -> tuple[str | None, str]:
    if explicit is not None:
        return (os.fspath(explicit) or None), what
    return (os.environ.get(env_var) or None), f"{what} (from {env_var})"


def resolve_client_keys(
    client_key: str | os.PathLike[str] | None, server_key: str | os.PathLike[str] | None
) -> ClientKeys | None:
    """The CURVE keys a client uses: the paths given, else the environment; ``None`` for none.

    ``""`` turns a key off even when its variable is set. Giving one key without the other
    is a :class:`~exesdb_sdk.errors.ConfigError`, and so is a bad key file.
    """
    client_path, client_what = _pick(client_key, ENV_CLIENT_KEY, "client_key")
    server_path, server_what = _pick(server_key, ENV_SERVER_KEY, "server_key")
    if client_path is None and server_path is None:
        return None
    if client_path is None:
        raise ConfigError(f"{server_what} is set but no client key: give client_key too (or {ENV_CLIENT_KEY})")
    if server_path is None:
        raise ConfigError(
            f"{client_what} is set but no server key: give server_key, the broker's public key file "
            f"(or {ENV_SERVER_KEY})"
        )
    client = load_key_file(client_path, what=client_what, secret=True)
    server = load_key_file(server_path, what=server_what)
    return ClientKeys(client, server.public)


def apply_server_keys(socket: zmq.Socket[Any], keys: KeyPair, domain: str) -> None:
    """Make a bound socket a CURVE server authenticated by ZAP in ``domain`` (before bind)."""
    assert keys.secret is not None
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    socket.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


def _describe(event: int, value: int, keyed: bool) -> str:
    # Measured with libzmq 4.3.5: a client without keys at a CURVE endpoint sees a mechanism
    # mismatch (NO_DETAIL without keys is a peer that is not ZeroMQ: see HandshakeWatch._drain);
    # a wrong server key gives NO_DETAIL on every retry (the broker cannot decrypt the HELLO).
    if not keyed and event != zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"the broker requires CURVE: give client_key and server_key (or {ENV_CLIENT_KEY} / {ENV_SERVER_KEY})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if value == 400:
            return "the broker refused this client's key (not in its allowlist for this endpoint)"
        return f"the broker's authenticator answered {value}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MECHANISM_MISMATCH:
        return "security mechanism mismatch: the broker does not use CURVE"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _CRYPTOGRAPHIC:
        return "CURVE handshake failed (wrong server key?)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"handshake protocol error 0x{value:x} (is this an exesdb broker?)"
    return "the broker dropped the CURVE handshake (wrong server key, or a broker without CURVE?)"


_ZMTP_SIGNATURE_END: Final = 0x7F
_GREETING_WAIT: Final = 0.5


def speaks_zmtp(endpoint: str) -> bool:
    """Whether the peer at a ``tcp://host:port`` endpoint greets in ZMTP (its first bytes are
    the ZeroMQ signature ``0xFF ... 0x7F``), asked over a fresh connection, as a diagnosis
    after a handshake failed. True when it cannot tell (not tcp, no answer in time)."""
    if not endpoint.startswith("tcp://"):
        return True
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_GREETING_WAIT) as probe:
            greeting = probe.recv(10)
    except TimeoutError:
        return True
    except (OSError, ValueError):
        return False
    return greeting[:1] == b"\xff" and (len(greeting) < 10 or greeting[9] == _ZMTP_SIGNATURE_END)


class HandshakeWatch:
    """Follows a client socket's handshakes through a ZeroMQ socket monitor while it waits.

    Created before ``connect`` (it also puts the CURVE keys on the socket, if any); the
    waits of the clients go through :meth:`wait` or :meth:`await_readable`, which raise
    :class:`~exesdb_sdk.errors.AuthenticationError` as soon as a handshake fails. Once a wait
    has succeeded the client calls :meth:`settle`, which stops the monitor: libzmq writes
    monitor events with a blocking send, so a monitor nobody reads must not outlive the wait
    (its queue would fill with reconnection events and stall the I/O thread). The next wait
    starts a new one. The monitor is a plain (not asyncio) socket on the same context, read
    without blocking, so one class serves the synchronous and the asyncio clients.

    With ``disconnects`` (a client given several brokers) a settled watch keeps a monitor of
    disconnections, which libzmq reports once per lost connection (not per reconnection
    attempt), so it does not fill: :meth:`check` then raises :class:`BrokerGone` once the
    connection to the endpoint :meth:`follow` named was lost. With keys it also keeps watching
    for a refused handshake (the broker's reload removed the key and cut the connection), which
    libzmq reports once and does not retry: :meth:`check` then raises
    :class:`~exesdb_sdk.errors.AuthenticationError`.
    """

    def __init__(self, socket: zmq.Socket[Any], keys: ClientKeys | None, *, disconnects: bool = False) -> None:
        if keys is not None:
            assert keys.client.secret is not None
            socket.setsockopt(zmq.CURVE_SERVERKEY, keys.server)
            socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.client.public)
            socket.setsockopt(zmq.CURVE_SECRETKEY, keys.client.secret)
        self._keyed = keys is not None
        self._socket = socket
        self._monitor: zmq.Socket[Any] | None = None
        self._failure: AuthenticationError | HandshakeError | None = None
        self._failure_kind: int | None = None
        self._dropped = 0
        """Dropped handshakes (``NO_DETAIL``) in a row, of a client with keys."""
        self._zmtp: dict[str, bool] = {}
        """Per endpoint, whether its peer greets in ZMTP (asked once per wait: every retry hangs
        up alike)."""
        self._disconnects = disconnects
        self._quiet = False
        """Whether the monitor watches disconnections only (a settled watch with ``disconnects``)."""
        self._endpoint: str | None = None
        self.gone = False
        """Whether the connection to the followed endpoint was lost (with ``disconnects`` only)."""
        self._arm()

    def follow(self, endpoint: str) -> None:
        """Watch the handshakes (and with ``disconnects``, the connection) to ``endpoint``, to
        which the socket connects next."""
        self._stop()
        self._endpoint = endpoint
        self.gone = False
        self._failure = self._failure_kind = None
        self._dropped = 0
        self._arm()

    def _arm(self) -> zmq.Socket[Any]:
        if self._monitor is None:
            address = f"inproc://exesdb-handshakes-{secrets.token_hex(8)}"
            self._socket.monitor(address, _EVENTS | (_GONE if self._disconnects else 0))
            context: zmq.Context[Any] = zmq.Context.shadow(self._socket.context.underlying)
            monitor = context.socket(zmq.PAIR)
            monitor.setsockopt(zmq.LINGER, 0)
            monitor.connect(address)
            self._monitor = monitor
        return self._monitor

    def _drain(self) -> None:
        monitor = self._arm()
        for _ in range(1000):
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(frames)
            kind = int(event["event"])
            if kind == _GONE:
                raw_endpoint: Any = event["endpoint"]
                lost = raw_endpoint.decode(errors="replace") if isinstance(raw_endpoint, bytes) else str(raw_endpoint)
                # an event of a connection left behind at a failover is no news
                self.gone = self.gone or self._endpoint is None or lost == self._endpoint
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._failure = self._failure_kind = None
                self._dropped = 0
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self._keyed and self._dropped < 1:
                # Once is no verdict: a broker cutting its connections (a reload that removed a
                # key) or stopping drops a handshake in flight too. A wrong server key drops
                # every retry, so the next one (within the reconnect interval) tells.
                self._dropped += 1
            elif kind in _FAILURES and self._failure_kind in (None, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                # keep the most specific failure: NO_DETAIL (the peer hung up first) says the least
                raw: Any = event["endpoint"]
                endpoint = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
                value = int(event["value"])
                if not self._keyed and kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and not self._greets(endpoint):
                    # a CURVE broker hangs up on a client without keys too: only a peer that
                    # does not even greet in ZMTP is certainly no broker
                    detail = "the peer closed the connection without a ZeroMQ greeting: is it an exesdb broker?"
                    self._failure = HandshakeError(endpoint, detail)
                else:
                    self._failure = AuthenticationError(endpoint, _describe(kind, value, self._keyed))
                self._failure_kind = kind

    def _greets(self, endpoint: str) -> bool:
        greets = self._zmtp.get(endpoint)
        if greets is None:
            greets = self._zmtp[endpoint] = speaks_zmtp(endpoint)
        return greets

    def check(self) -> None:
        """Raise :class:`~exesdb_sdk.errors.AuthenticationError` if the latest handshake failed,
        :class:`BrokerGone` if the followed connection was lost."""
        self._drain()
        if self._failure is not None:
            raise self._failure
        if self.gone:
            raise BrokerGone(self._endpoint or "?")

    def lost(self) -> bool:
        """Whether the followed connection was lost (read without waiting)."""
        if not self.gone and self._monitor is not None:
            self._drain()
        return self.gone

    def wait(self, timeout_ms: int) -> bool:
        """Wait until the socket is readable (true) or ``timeout_ms`` passes (false); raise
        :class:`~exesdb_sdk.errors.AuthenticationError` as soon as a handshake fails."""
        self.check()
        monitor = self._arm()
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout_ms / 1000
        for _ in range(1_000_000):  # bounded: every turn either returns or consumes monitor events
            ready = dict(poller.poll(max(0, int((deadline - time.monotonic()) * 1000))))
            if monitor in ready:
                self.check()
            if self._socket in ready:
                return True
            if time.monotonic() >= deadline:
                return False
        return False

    async def await_readable(self, socket: zmq.asyncio.Socket, timeout_ms: int) -> bool:
        """The asyncio :meth:`wait`: polls ``socket`` in short slices and checks between them."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self.check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if await socket.poll(max(1, min(_SLICE_MS, int(remaining * 1000)))):
                self.check()
                return True

    @property
    def armed(self) -> bool:
        """Whether the monitor runs (from creation until a wait succeeds, and during waits;
        always with ``disconnects`` or keys), or a failure waits to be raised."""
        return self._monitor is not None or self._failure is not None

    def settle(self) -> None:
        """The wait succeeded: stop watching the handshakes until the next wait (with
        ``disconnects``, go on watching the connection). Idempotent."""
        self._zmtp.clear()  # what is at an endpoint may change before the next wait
        if self._quiet:
            return
        self._drain()  # a loss reported meanwhile is kept
        self._stop()
        # A client with keys keeps watching for a refusal: a broker's reload that removed its
        # key cuts its connection, and ZAP refuses the reconnect (once: libzmq does not retry
        # a refused handshake, so this monitor cannot fill up unread).
        events = (_GONE if self._disconnects else 0) | (zmq.EVENT_HANDSHAKE_FAILED_AUTH if self._keyed else 0)
        if events:
            address = f"inproc://exesdb-disconnects-{secrets.token_hex(8)}"
            self._socket.monitor(address, events)
            context: zmq.Context[Any] = zmq.Context.shadow(self._socket.context.underlying)
            monitor = context.socket(zmq.PAIR)
            monitor.setsockopt(zmq.LINGER, 0)
            monitor.connect(address)
            self._monitor, self._quiet = monitor, True

    def _stop(self) -> None:
        monitor, self._monitor, self._quiet = self._monitor, None, False
        if monitor is None:
            return
        with contextlib.suppress(zmq.ZMQError):  # a closed socket's monitor went with it
            self._socket.disable_monitor()
        monitor.close(linger=0)

    def close(self) -> None:
        """Stop watching for good (before the socket closes). Idempotent."""
        self._stop()


def write_key_pair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Create ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ``directory``; return both paths.

    The secret file is created with mode 0600 from the start (never readable by others, not
    even for a moment). Refuses, with :class:`~exesdb_sdk.errors.ConfigError`, a name with a
    path separator and a key that already exists.
    """
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"key name {name!r}: use a plain file name (no '/', not starting with '.')")
    folder = Path(directory)
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            raise ConfigError(f"{path} already exists: not overwritten (choose another name or remove it)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"key directory {folder}: {exc.strerror}") from None
    public, secret = zmq.curve_keypair()
    body = f'curve\n    public-key = "{public.decode()}"\n'
    try:
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(_SECRET_BANNER + body + f'    secret-key = "{secret.decode()}"\n')
        os.chmod(secret_path, 0o600)  # the umask may have taken bits away, never added any
        fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(_PUBLIC_BANNER + body)
    except FileExistsError as exc:
        raise ConfigError(f"{exc.filename} already exists: not overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot write key {name!r} in {folder}: {exc.strerror}") from None
    return public_path, secret_path
