"""The ``nats`` sink: NATS JetStream, each message published with an acknowledgement.

A message on ``<instance>/<subtopic>`` goes to the subject ``<prefix>.<instance>.<subtopic>``
(see :func:`subject`), its body the ``exesdb tail --json`` object, with the headers
``Nats-Msg-Id`` (:attr:`Delivery.id`, so that JetStream drops a redelivered message within the
stream's duplicate window), ``Exesdb-Topic`` and ``Exesdb-Type``. A batch is published at once,
up to ``max_inflight`` messages awaiting their acknowledgement, and each item's outcome is read
from its own acknowledgement, in the batch's order.

Failures: no server, a lost connection or no acknowledgement for ``ack_timeout`` seconds raise
:class:`SinkUnavailable` (the next ``send`` connects again); a refused login, a missing stream, a
subject the stream does not take or a permissions violation raise :class:`SinkRejected`; a
message over the stream's ``max_msg_size`` (or the server's ``max_payload``) is refused alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
import nats.js.errors
from exesdb_sdk.errors import ConfigError
from exesdb_sdk.subjects import subject
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from ..sink import Delivery, Sink, SinkRejected, SinkUnavailable, option, unknown_options

__all__ = ["NatsSink", "NatsSinkStats", "create", "subject"]

DEFAULT_PREFIX: Final = "exesdb"
DEFAULT_PORT: Final = 4222
DEFAULT_CONNECT_TIMEOUT: Final = 2.0
DEFAULT_ACK_TIMEOUT: Final = 5.0
DEFAULT_MAX_INFLIGHT: Final = 1024
MAX_PREFIX_LENGTH: Final = 200
"""Keeps the longest subject (a 1024-byte subtopic escaped to 3072 characters) under the
server's default 4096-byte protocol line."""

KNOWN: Final = (
    "url",
    "stream",
    "prefix",
    "create_stream",
    "user",
    "password_file",
    "token_file",
    "connect_timeout",
    "ack_timeout",
    "max_inflight",
)

_STREAM_NAME: Final = re.compile(r"[^\s.*>/\\]{1,255}")
_PREFIX_TOKEN: Final = re.compile(r"[!-~]+")  # printable ASCII, no space
_SUBJECT_CACHE_LIMIT: Final = 4096
# JetStream's error codes for a message it will never store, whatever the retries.
_REFUSED_MESSAGE: Final = frozenset({10054, 10055})  # message size, header size over the stream's maximum
_STREAM_MISMATCH: Final = 10060  # the subject belongs to another stream than the one expected
_NO_RESPONDERS: Final = "503"
_HEADER_OVERHEAD: Final = len("NATS/1.0\r\n\r\n") + len("Nats-Expected-Stream: \r\n")


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """A nats sink's options, checked."""

    url: str
    stream: str
    prefix: str = DEFAULT_PREFIX
    create_stream: bool = False
    user: str | None = None
    password: str | None = None
    token: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    max_inflight: int = DEFAULT_MAX_INFLIGHT

    def __repr__(self) -> str:  # never print a secret
        return f"NatsSettings(url={self.url!r}, stream={self.stream!r}, prefix={self.prefix!r})"


@dataclass(frozen=True, slots=True)
class NatsSinkStats:
    """What one nats sink has done since it was created."""

    published: int = 0
    """Messages handed to the server (a retried batch counts again)."""
    acknowledged: int = 0
    """Stored by the stream, duplicates included."""
    duplicates: int = 0
    """Acknowledged as duplicates: JetStream had the ``Nats-Msg-Id`` already."""
    refused: int = 0
    """Refused for good (the items returned with a reason)."""
    connects: int = 0
    """Connection attempts (the first, and one per send after a lost connection)."""
    unavailable: int = 0
    """Sends that raised :class:`SinkUnavailable`."""


def _url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"{value!r} is not a URL ({exc})"
    if parts.scheme != "nats":
        return f"{value!r} must be nats://host:port"
    if not parts.hostname:
        return f"{value!r} names no host"
    if parts.username is not None or parts.password is not None:
        return "credentials do not belong in the URL: use user and password_file, or token_file"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{value!r} must be nats://host:port, with no path or query"
    if port == 0:
        return f"{value!r}: port 0 is not a port to connect to"
    return None


def _stream_name(value: str) -> str | None:
    if _STREAM_NAME.fullmatch(value):
        return None
    return f"{value!r} is not a stream name (1 to 255 characters, no spaces, '.', '*', '>', '/' or '\\')"


def _prefix(value: str) -> str | None:
    if not value or len(value) > MAX_PREFIX_LENGTH:
        return f"{value!r} must be 1 to {MAX_PREFIX_LENGTH} characters"
    if value.startswith("$"):
        return f"{value!r}: subjects starting with '$' are the server's own"
    for token in value.split("."):
        if not _PREFIX_TOKEN.fullmatch(token) or "*" in token or ">" in token:
            return (
                f"{value!r} is not a subject prefix (dot-separated tokens of printable ASCII, no spaces or wildcards)"
            )
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be more than 0, not {value!r}"


def _inflight(value: int) -> str | None:
    return None if 1 <= value <= 65536 else f"must be 1 to 65536, not {value!r}"


def _secret(name: str, key: str, value: str) -> str:
    path = Path(value).expanduser()
    try:
        text = path.read_text("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"connector {name}: {key}: cannot read {str(path)!r}: {reason}") from None
    if not text:
        raise ConfigError(f"connector {name}: {key}: {str(path)!r} is empty")
    return text


def settings(name: str, options: Mapping[str, Any]) -> NatsSettings:
    """The options of connector ``name`` checked; raises :class:`ConfigError` in one line."""
    unknown_options(name, options, KNOWN)
    user = option(name, options, "user", str, None, lambda v: None if v else "must not be empty")
    password_file = option(name, options, "password_file", str, None)
    token_file = option(name, options, "token_file", str, None)
    if (user is None) != (password_file is None):
        key = "password_file" if user is not None else "user"
        raise ConfigError(
            f"connector {name}: {key} is required with {'user' if key == 'password_file' else 'password_file'}"
        )
    if user is not None and token_file is not None:
        raise ConfigError(f"connector {name}: token_file: use either user and password_file, or token_file")
    return NatsSettings(
        url=option(name, options, "url", str, check=_url),
        stream=option(name, options, "stream", str, check=_stream_name),
        prefix=option(name, options, "prefix", str, DEFAULT_PREFIX, _prefix),
        create_stream=option(name, options, "create_stream", bool, False),
        user=user,
        password=None if password_file is None else _secret(name, "password_file", password_file),
        token=None if token_file is None else _secret(name, "token_file", token_file),
        connect_timeout=option(name, options, "connect_timeout", float, DEFAULT_CONNECT_TIMEOUT, _positive),
        ack_timeout=option(name, options, "ack_timeout", float, DEFAULT_ACK_TIMEOUT, _positive),
        max_inflight=option(name, options, "max_inflight", int, DEFAULT_MAX_INFLIGHT, _inflight),
    )


def create(name: str, options: Mapping[str, Any]) -> Sink:
    """The nats sink of connector ``name`` (a :data:`~exesdb_connect.sink.SinkFactory`)."""
    return NatsSink(name, settings(name, options))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, nats.js.errors.APIError) and exc.description:
        text = f"{exc.description} (err_code {exc.err_code})"
    return text or type(exc).__name__


class _Batch:
    """The acknowledgements one ``send`` waits for, filled in by the reply subscription."""

    __slots__ = ("outcomes", "pending", "progress", "target")

    def __init__(self, size: int) -> None:
        self.outcomes: list[Any] = [None] * size  # None until answered; then a dict, or _NO_RESPONDERS
        self.pending = 0
        self.target = 0
        """``progress`` is set once ``pending`` is down to it."""
        self.progress = asyncio.Event()


class _Connection:
    """One connection: the client, its JetStream context and the reply subscription."""

    __slots__ = ("client", "fault", "js", "reply_prefix", "subscription")

    def __init__(self, client: Client, js: JetStreamContext, reply_prefix: str, fault: _Fault) -> None:
        self.client = client
        self.js = js
        self.reply_prefix = reply_prefix
        self.fault = fault
        self.subscription: Subscription | None = None


class _Fault:
    """What went wrong on a connection, set by the client's callbacks."""

    __slots__ = ("event", "reason", "rejected")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason = ""
        self.rejected = False

    def clear(self) -> None:
        self.event.clear()
        self.reason = ""
        self.rejected = False

    def set(self, reason: str, *, rejected: bool = False) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.rejected = rejected
            self.event.set()


class NatsSink:
    """Publishes deliveries to a JetStream stream (see the module's docstring)."""

    kind = "nats"

    def __init__(self, name: str, config: NatsSettings) -> None:
        self.name = name
        self.settings = config
        self._conn: _Connection | None = None
        self._batch: _Batch | None = None
        self._generation = 0
        self._subjects: dict[tuple[str, str], str] = {}
        self._json = msgspec.json.Encoder()
        self._stats: dict[str, int] = dict.fromkeys(NatsSinkStats.__slots__, 0)

    def __repr__(self) -> str:
        return f"NatsSink({self.name!r}, {self.settings!r})"

    @property
    def stats(self) -> NatsSinkStats:
        """A snapshot of the counters."""
        return NatsSinkStats(**self._stats)

    def _where(self) -> str:
        return f"connector {self.name}: nats {self.settings.url}"

    def subject(self, delivery: Delivery) -> str:
        """The subject ``delivery`` is published on (cached per topic, the cache bounded)."""
        key = (delivery.instance, delivery.subtopic)
        cached = self._subjects.get(key)
        if cached is None:
            if len(self._subjects) >= _SUBJECT_CACHE_LIMIT:
                self._subjects.clear()
            cached = self._subjects[key] = subject(self.settings.prefix, delivery.instance, delivery.subtopic)
        return cached

    async def open(self) -> None:
        """Connect and check the stream (creating it with ``create_stream``)."""
        await self._connection()

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.client.is_connected and not conn.fault.event.is_set():
            return conn
        await self._drop()
        self._stats["connects"] += 1
        conn = await self._connect()
        try:
            await self._ensure_stream(conn)
            conn.subscription = await conn.client.subscribe(conn.reply_prefix + "*", cb=self._on_reply)
        except BaseException:
            await self._close_client(conn.client)
            raise
        self._conn = conn
        return conn

    async def _connect(self) -> _Connection:
        config = self.settings
        fault = _Fault()

        async def on_error(exc: Exception) -> None:
            text = _one_line(exc)
            fault.set(text, rejected="permissions violation" in text.lower())

        async def on_disconnected() -> None:
            fault.set("connection lost")

        client = Client()
        try:
            await asyncio.wait_for(
                client.connect(
                    servers=[config.url],
                    name=f"exesdb-connector-{self.name}",
                    allow_reconnect=False,
                    # nats-py retries a refused first connect until the attempts run out: keep them few and quick.
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    connect_timeout=config.connect_timeout,  # type: ignore[arg-type]  # annotated int, used as a float
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    closed_cb=on_disconnected,
                    user=config.user,
                    password=config.password,
                    token=config.token,
                ),
                # nats.connect may try the server twice; the whole attempt keeps to its timeout.
                timeout=config.connect_timeout * 2,
            )
        except (OSError, TimeoutError, nats.errors.NoServersError) as exc:
            await self._close_client(client)  # a failed connect leaves its socket open
            reason = fault.reason or _one_line(exc)  # the cause error_cb heard, not "no servers"
            raise SinkUnavailable(f"{self._where()}: cannot connect: {reason}") from None
        except nats.errors.Error as exc:
            await self._close_client(client)
            text = _one_line(exc)
            if isinstance(exc, nats.errors.AuthorizationError) or "authoriz" in text.lower():
                raise SinkRejected(
                    f"{self._where()}: login refused ({text}): check user/password_file or token_file"
                ) from None
            raise SinkUnavailable(f"{self._where()}: cannot connect: {text}") from None
        fault.clear()  # what went wrong before the connection was made is not a fault of it
        reply_prefix = f"{client.new_inbox()}."
        return _Connection(client, client.jetstream(timeout=config.ack_timeout), reply_prefix, fault)

    async def _ensure_stream(self, conn: _Connection) -> None:
        config = self.settings
        try:
            await conn.js.stream_info(config.stream)
            return
        except nats.js.errors.NotFoundError:
            if not config.create_stream:
                raise SinkRejected(
                    f"{self._where()}: stream {config.stream!r} does not exist (create it, or set create_stream = true)"
                ) from None
        except BaseException as exc:
            raise self._management_error(conn, exc, "reading the stream") from None
        try:
            await conn.js.add_stream(name=config.stream, subjects=[f"{config.prefix}.>"])
        except BaseException as exc:
            raise self._management_error(conn, exc, "creating the stream") from None

    def _management_error(self, conn: _Connection, exc: BaseException, doing: str) -> Exception:
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise exc
        if conn.fault.rejected:
            return SinkRejected(f"{self._where()}: {doing}: {conn.fault.reason}")
        if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
            return SinkRejected(f"{self._where()}: {doing}: JetStream is not enabled on the server")
        if isinstance(exc, nats.js.errors.APIError) and exc.code is not None and 400 <= exc.code < 500:
            return SinkRejected(f"{self._where()}: {doing}: {_one_line(exc)}")
        reason = conn.fault.reason or _one_line(exc)
        return SinkUnavailable(f"{self._where()}: {doing}: {reason}")

    async def _on_reply(self, msg: Msg) -> None:
        batch = self._batch
        generation, _, index_text = msg.subject.rpartition(".")[2].partition("-")
        if batch is None or generation != str(self._generation) or not index_text.isdigit():
            return  # a late answer to a batch given up on
        index = int(index_text)
        if index >= len(batch.outcomes) or batch.outcomes[index] is not None:
            return
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            outcome: Any = _NO_RESPONDERS
        else:
            try:
                outcome = json.loads(msg.data)
            except ValueError:
                outcome = None
            if not isinstance(outcome, dict):
                outcome = {"error": {"description": f"unreadable acknowledgement {msg.data[:80]!r}"}}
        batch.outcomes[index] = outcome
        batch.pending -= 1
        if batch.pending <= batch.target:
            batch.progress.set()

    def _encode(self, delivery: Delivery, limit: int) -> tuple[str, bytes, dict[str, str]] | str:
        try:
            body = self._json.encode(delivery.json if isinstance(delivery.json, dict) else dict(delivery.json))
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            return f"the message cannot be encoded as JSON: {exc}"
        headers = {
            "Nats-Msg-Id": delivery.id,
            "Exesdb-Topic": delivery.topic,
            "Exesdb-Type": delivery.type,
            "Nats-Expected-Stream": self.settings.stream,
        }
        size = len(body) + _HEADER_OVERHEAD + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())
        if size > limit:
            # The server would close the connection over it: refuse it here, for good.
            return f"the message is {size} bytes with its headers, over the server's max_payload of {limit}"
        return self.subject(delivery), body, headers

    async def send(self, batch: Sequence[Delivery]) -> Sequence[str | None]:
        """Publish ``batch`` and wait for every acknowledgement (see the module's docstring)."""
        if not batch:
            return []
        try:
            return await self._send(batch)
        except SinkUnavailable:
            self._stats["unavailable"] += 1
            await self._drop()
            raise

    async def _send(self, batch: Sequence[Delivery]) -> list[str | None]:
        conn = await self._connection()
        config = self.settings
        self._generation += 1
        pending = _Batch(len(batch))
        self._batch = pending
        refused: dict[int, str] = {}
        reply = f"{conn.reply_prefix}{self._generation}-"
        limit = conn.client.max_payload
        try:
            for index, delivery in enumerate(batch):
                encoded = self._encode(delivery, limit)
                if isinstance(encoded, str):
                    refused[index] = encoded
                    pending.outcomes[index] = {}
                    continue
                if pending.pending >= config.max_inflight:
                    await self._wait(conn, pending, config.max_inflight // 2)
                subject_, body, headers = encoded
                pending.pending += 1
                self._stats["published"] += 1
                try:
                    await conn.client.publish(subject_, body, reply=f"{reply}{index}", headers=headers)
                except nats.errors.Error as exc:
                    raise SinkUnavailable(
                        f"{self._where()}: publishing: {conn.fault.reason or _one_line(exc)}"
                    ) from None
            await self._wait(conn, pending, 0)
        finally:
            self._batch = None
        return await self._outcomes(conn, batch, pending, refused)

    async def _wait(self, conn: _Connection, pending: _Batch, target: int) -> None:
        """Until at most ``target`` acknowledgements are outstanding: raise when the connection
        fails or they do not come within ``ack_timeout``."""
        if pending.pending <= target:
            return
        pending.target = target
        pending.progress.clear()
        if not conn.fault.event.is_set():
            progress = asyncio.ensure_future(pending.progress.wait())
            fault = asyncio.ensure_future(conn.fault.event.wait())
            try:
                await asyncio.wait((progress, fault), timeout=self.settings.ack_timeout, return_when="FIRST_COMPLETED")
            finally:
                progress.cancel()
                fault.cancel()
        if conn.fault.event.is_set():
            if conn.fault.rejected:
                raise SinkRejected(f"{self._where()}: {conn.fault.reason}")
            raise SinkUnavailable(f"{self._where()}: {conn.fault.reason}")
        if pending.pending > target:
            raise SinkUnavailable(
                f"{self._where()}: no acknowledgement in {self.settings.ack_timeout:g} s"
                f" ({pending.pending} outstanding)"
            )

    async def _outcomes(
        self, conn: _Connection, batch: Sequence[Delivery], pending: _Batch, refused: dict[int, str]
    ) -> list[str | None]:
        results: list[str | None] = []
        unavailable: str | None = None
        for index, outcome in enumerate(pending.outcomes):
            if index in refused:
                results.append(refused[index])
                continue
            if outcome == _NO_RESPONDERS:
                raise await self._no_stream(conn, batch[index])
            error = outcome.get("error")
            if error is None:
                self._stats["acknowledged"] += 1
                if outcome.get("duplicate"):
                    self._stats["duplicates"] += 1
                results.append(None)
                continue
            if not isinstance(error, dict):
                error = {"description": repr(error)[:80]}
            code, err_code = error.get("code"), error.get("err_code")
            text = f"{error.get('description', 'error')} (err_code {err_code})"
            if err_code in _REFUSED_MESSAGE:
                results.append(f"JetStream refused the message: {text}")
            elif err_code == _STREAM_MISMATCH or (isinstance(code, int) and 400 <= code < 500):
                raise SinkRejected(f"{self._where()}: stream {self.settings.stream!r}: {text}")
            else:
                unavailable = unavailable or text
        if unavailable is not None:
            raise SinkUnavailable(f"{self._where()}: stream {self.settings.stream!r}: {unavailable}")
        self._stats["refused"] += sum(1 for r in results if r is not None)
        return results

    async def _no_stream(self, conn: _Connection, delivery: Delivery) -> Exception:
        """No stream listens on the subject: the stream is gone, or does not take that subject."""
        try:
            info = await conn.js.stream_info(self.settings.stream)
        except nats.js.errors.NotFoundError:
            if self.settings.create_stream:
                return SinkUnavailable(f"{self._where()}: stream {self.settings.stream!r} vanished; it will be created")
            return SinkRejected(f"{self._where()}: stream {self.settings.stream!r} does not exist")
        except BaseException as exc:
            return self._management_error(conn, exc, "reading the stream")
        subjects = ", ".join(info.config.subjects or ())
        return SinkRejected(
            f"{self._where()}: stream {self.settings.stream!r} (subjects {subjects}) "
            f"does not take subject {self.subject(delivery)!r}"
        )

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._close_client(conn.client)

    async def _close_client(self, client: Client) -> None:
        if client.is_closed:
            return
        with contextlib.suppress(Exception):  # closing a broken connection: nothing left to tell
            await asyncio.wait_for(client.close(), timeout=self.settings.connect_timeout)

    async def close(self) -> None:
        """Disconnect; idempotent, never raises."""
        await self._drop()
