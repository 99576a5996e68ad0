"""The ``redis`` sink: each message appended to a Redis stream with ``XADD ... MAXLEN ~``.

One stream per instance by default (``exesdb:<instance>``), or per topic with the ``stream``
template (``{instance}`` and ``{subtopic}``, put in verbatim: Redis keys are binary-safe, so
nothing is escaped; ``{{`` and ``}}`` write a literal brace). An entry's fields are the
envelope's: ``id``, ``topic``, ``type``, ``ts`` (ISO-8601), ``src``, ``seq``, ``corr`` (when
set), ``data`` (JSON) and ``broker_seq`` (on a journaled instance). A batch goes in one
pipeline (one round trip); its replies come back per item, in order.

Failures: no server, a lost connection or no reply within ``timeout`` raise
:class:`SinkUnavailable` (the next ``send`` reconnects); refused credentials, a missing
permission (``NOPERM``) or, with ``create = false``, a missing stream raise
:class:`SinkRejected`; an item the server refuses on its own (``WRONGTYPE``: the key is not a
stream) is refused, and parked by the connector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from exesdb_sdk.errors import ConfigError
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..sink import Delivery, SinkRejected, SinkUnavailable, option, unknown_options

__all__ = [
    "DEFAULT_MAXLEN",
    "DEFAULT_STREAM",
    "DEFAULT_TIMEOUT",
    "RedisSink",
    "RedisTarget",
    "create",
    "entry_fields",
    "parse_url",
]

DEFAULT_STREAM: Final = "exesdb:{instance}"
"""One stream per instance."""
DEFAULT_MAXLEN: Final = 100_000
"""Entries a stream keeps, about (``MAXLEN ~``: Redis trims whole nodes, so a few more)."""
DEFAULT_TIMEOUT: Final = 5.0
"""Seconds to wait for a batch's replies (and, separately, for a connection)."""
KNOWN: Final = ("connect_timeout", "create", "maxlen", "password_file", "stream", "timeout", "url")
PLACEHOLDERS: Final = frozenset({"instance", "subtopic"})
_KEY_CACHE_LIMIT: Final = 4096
# Replies that say the server cannot write now (memory, loading, a replica, a failed save...):
# the same batch may succeed later, so they are not a refusal of the item.
_TRANSIENT_ERRORS: Final = (rexc.OutOfMemoryError, rexc.ReadOnlyError, rexc.TryAgainError, rexc.ClusterError)
_TRANSIENT_CODES: Final = ("BUSY", "MISCONF", "NOREPLICAS", "LOADING", "MASTERDOWN", "CLUSTERDOWN")
_AUTH_CODES: Final = ("NOAUTH", "WRONGPASS", "NOPERM")


def _one_line(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


class RedisTarget:
    """Where a ``redis://`` URL points: host, port, database, credentials, TLS."""

    __slots__ = ("db", "host", "password", "port", "tls", "username")

    def __init__(self, *, host: str, port: int, db: int, username: str | None, password: str | None, tls: bool) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.tls = tls

    def __repr__(self) -> str:  # never the password
        scheme = "rediss" if self.tls else "redis"
        return f"RedisTarget({scheme}://{self.host}:{self.port}/{self.db})"

    @property
    def address(self) -> str:
        """``host:port`` (an IPv6 host in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _redacted(url: str) -> str:
    """``url`` with its password, if any, as ``***`` (error messages end up in logs)."""
    return re.sub(r"^([^:/]*://[^:@/]*):[^@/]*@", r"\1:***@", url)


def parse_url(url: str) -> RedisTarget:
    """``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS) as a target; raises
    :class:`ValueError` saying what is wrong."""
    parts = urlsplit(url)
    shown = _redacted(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{shown!r} is not a redis:// or rediss:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown!r}: no query or fragment (set options as keys of the connector)")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{shown!r} has a bad port") from None
    if not parts.hostname:
        raise ValueError(f"{shown!r} names no host")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"{shown!r}: the path must be a database number, not {path!r}")
    return RedisTarget(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


def _check_url(url: str) -> str | None:
    try:
        parse_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def _check_stream(template: str) -> str | None:
    if not template:
        return "must not be empty"
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{template!r}: {exc} (write {{{{ and }}}} for literal braces)"
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            return f"{template!r}: unknown placeholder {{{name}}} (known: {{instance}}, {{subtopic}})"
        if spec or conversion:
            return f"{template!r}: {{{name}}} takes no conversion or format"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be more than 0, not {value!r}"


def entry_fields(delivery: Delivery) -> dict[str, str | int]:
    """The stream entry of ``delivery``; raises :class:`ValueError` when its data is not JSON
    (a NaN, say)."""
    view = delivery.json
    fields: dict[str, str | int] = {"id": delivery.id, "topic": delivery.topic, "type": delivery.type}
    for key in ("ts", "src", "seq", "corr"):
        value = view.get(key)
        if value is not None:
            fields[key] = value if isinstance(value, int) and not isinstance(value, bool) else str(value)
    fields["data"] = json.dumps(view.get("data", {}), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if delivery.broker_seq is not None:
        fields["broker_seq"] = delivery.broker_seq
    return fields


class RedisSink:
    """Appends deliveries to Redis streams (see the module's docstring)."""

    kind = "redis"

    def __init__(
        self,
        name: str,
        target: RedisTarget,
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int = DEFAULT_MAXLEN,
        create: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.name = name
        self.target = target
        self.stream = stream
        self.maxlen = maxlen
        self.create = create
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._client: aioredis.Redis | None = None
        self._keys: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"RedisSink({self.name!r}, {self.target!r}, stream={self.stream!r}, maxlen={self.maxlen})"

    def stream_key(self, delivery: Delivery) -> str:
        """The stream ``delivery`` goes to."""
        key = self._keys.get(delivery.topic)
        if key is None:
            key = self.stream.format(instance=delivery.instance, subtopic=delivery.subtopic)
            if len(self._keys) >= _KEY_CACHE_LIMIT:
                self._keys.clear()
            self._keys[delivery.topic] = key
        return key

    def _connect(self) -> aioredis.Redis:
        if self._client is None:
            target = self.target
            self._client = aioredis.Redis(
                host=target.host,
                port=target.port,
                db=target.db,
                username=target.username,
                password=target.password,
                ssl=target.tls,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.connect_timeout,
                # The connector's breaker owns retrying: a failed batch fails at once.
                retry=Retry(NoBackoff(), 0),
                client_name=f"exesdb-connector-{self.name}",
            )
        return self._client

    async def _reset(self) -> None:
        """Drop the connection after a failure: replies may be half read; the next call reconnects."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing left to tell
                await client.aclose()

    def _where(self) -> str:
        return f"redis {self.target.address}"

    async def _guarded(self, work: Any) -> Any:
        """Run ``work`` (a coroutine) within the sink's bounds, failures mapped to the contract."""
        try:
            async with asyncio.timeout(self.connect_timeout + self.timeout):
                return await work
        except rexc.AuthenticationError as exc:
            await self._reset()
            raise SinkRejected(f"{self._where()} refused the credentials: {_one_line(exc)}") from None
        except rexc.AuthorizationError as exc:
            await self._reset()
            raise SinkRejected(f"{self._where()} refused this connector: {_one_line(exc)}") from None
        except TimeoutError:  # the whole call's bound (asyncio's, a builtin, before OSError)
            await self._reset()
            raise SinkUnavailable(
                f"{self._where()}: no reply within {self.connect_timeout + self.timeout:g} s"
            ) from None
        except (rexc.ConnectionError, rexc.TimeoutError, rexc.InvalidResponse, OSError) as exc:
            await self._reset()
            raise SinkUnavailable(f"{self._where()}: {_one_line(exc) or type(exc).__name__}") from None
        except rexc.ResponseError as exc:  # a reply to PING (open)
            await self._reset()
            raise self._response_failure(exc) from None

    def _response_failure(self, exc: rexc.ResponseError) -> SinkUnavailable | SinkRejected:
        text = _one_line(exc)
        if isinstance(exc, rexc.NoPermissionError) or text.startswith(_AUTH_CODES):
            return SinkRejected(f"{self._where()} refused this connector: {text}")
        return SinkUnavailable(f"{self._where()}: {text}")

    async def open(self) -> None:
        """Connect and check the server answers (``PING``), with the credentials given."""
        await self._guarded(self._connect().ping())

    async def send(self, batch: Sequence[Delivery]) -> Sequence[str | None]:
        """Append ``batch`` in one pipeline; per item ``None`` (appended) or why Redis refused it."""
        if not batch:
            return []
        outcomes: list[str | None] = [None] * len(batch)
        keys: list[str] = []
        client = self._connect()
        pipe = client.pipeline(transaction=False)
        sent: list[int] = []
        for index, delivery in enumerate(batch):
            key = self.stream_key(delivery)
            try:
                fields = entry_fields(delivery)
            except ValueError as exc:
                outcomes[index] = f"data is not JSON: {_one_line(exc)}"
                continue
            pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True, nomkstream=not self.create)  # type: ignore[arg-type]
            keys.append(key)
            sent.append(index)
        if not sent:
            return outcomes
        replies: list[Any] = await self._guarded(pipe.execute(raise_on_error=False))
        if len(replies) != len(sent):
            await self._reset()
            raise SinkUnavailable(f"{self._where()}: {len(replies)} replies to {len(sent)} XADDs")
        for index, key, reply in zip(sent, keys, replies, strict=True):
            if isinstance(reply, rexc.ResponseError):
                if isinstance(reply, _TRANSIENT_ERRORS) or _one_line(reply).startswith(_TRANSIENT_CODES):
                    raise SinkUnavailable(f"{self._where()}: {_one_line(reply)}")
                if isinstance(reply, rexc.NoPermissionError) or _one_line(reply).startswith(_AUTH_CODES):
                    raise self._response_failure(reply)
                outcomes[index] = f"redis refused XADD {key}: {_one_line(reply)}"
            elif reply is None:  # NOMKSTREAM and no such stream
                raise SinkRejected(f"{self._where()}: stream {key!r} does not exist (create = false)")
            elif not isinstance(reply, bytes | str):
                await self._reset()
                raise SinkUnavailable(
                    f"{self._where()}: unexpected reply to XADD {key}: {_one_line(repr(reply))[:200]}"
                )
        return outcomes

    async def close(self) -> None:
        """Disconnect; idempotent, never raises."""
        await self._reset()


def _password(name: str, options: Mapping[str, Any], target: RedisTarget) -> str | None:
    path = option(name, options, "password_file", str, None)
    if path is None:
        return target.password
    if target.password is not None:
        raise ConfigError(f"connector {name}: password_file: the url has a password already (give one of them)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
        raise ConfigError(f"connector {name}: password_file: cannot read {path!r}: {reason}") from None
    password = text.strip("\r\n")
    if not password:
        raise ConfigError(f"connector {name}: password_file: {path!r} is empty")
    return password


def create(name: str, options: Mapping[str, Any]) -> RedisSink:
    """A :class:`RedisSink` from the connector's options: ``url`` (required), ``password_file``,
    ``stream``, ``maxlen``, ``create``, ``timeout``, ``connect_timeout``. Raises
    :class:`ConfigError` in one line naming the connector and the key."""
    unknown_options(name, options, KNOWN)
    url = option(name, options, "url", str, check=_check_url)
    target = parse_url(url)
    target.password = _password(name, options, target)
    return RedisSink(
        name,
        target,
        stream=option(name, options, "stream", str, DEFAULT_STREAM, check=_check_stream),
        maxlen=option(name, options, "maxlen", int, DEFAULT_MAXLEN, check=_positive),
        create=option(name, options, "create", bool, True),
        timeout=option(name, options, "timeout", float, DEFAULT_TIMEOUT, check=_positive),
        connect_timeout=option(name, options, "connect_timeout", float, DEFAULT_TIMEOUT, check=_positive),
    )
