"""The webhook sink: an HTTP POST per message (or per batch) with aiohttp.

The body is the ``exesdb tail --json`` object of the message, or with ``batch = true`` a JSON
array of them (one POST per batch the connector hands over). Headers: ``Content-Type:
application/json``, ``X-Exesdb-Id`` (the delivery id; comma-separated for a batch), and with a
``secret_file`` ``X-Exesdb-Signature: sha256=<hex HMAC-SHA256 of the body>``.

Answers: 2xx acknowledges; 408, 429, 5xx, a timeout or a connection error mean "later"
(:class:`~..sink.SinkUnavailable`: the connector's breaker backs off and the batch is sent
again, with the same ids); any other 4xx refuses the message (or the whole batch) for good: it
is parked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import aiohttp
from exesdb_sdk.errors import ConfigError

from ..sink import Delivery, SinkUnavailable, option, unknown_options

__all__ = ["WebhookSink", "create"]

KNOWN: Final = ("url", "secret_file", "batch", "timeout", "connect_timeout")
_RETRY_STATUS: Final = frozenset({408, 425, 429})
_REASON_CHARS: Final = 200
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"{value!r} is not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{value!r} must be an http:// or https:// URL"
    if not parts.hostname:
        return f"{value!r} names no host"
    return None


def _read_secret(connector: str, path: str) -> bytes:
    try:
        secret = Path(path).expanduser().read_bytes().strip()
    except OSError as exc:
        raise_config(connector, "secret_file", f"{path}: {exc.strerror or exc}")
    if not secret:
        raise_config(connector, "secret_file", f"{path} is empty")
    return secret


def raise_config(connector: str, key: str, problem: str) -> NoReturn:
    """Raise the one-line :class:`ConfigError` for ``key``."""
    raise ConfigError(f"connector {connector}: {key}: {problem}")


class WebhookSink:
    """POSTs deliveries to one URL."""

    kind = "webhook"

    def __init__(
        self, name: str, url: str, secret: bytes | None, batch: bool, timeout: float, connect_timeout: float
    ) -> None:
        self.name = name
        self.url = url
        self._secret = secret
        self.batch = batch
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, raise_for_status=False)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _headers(self, body: bytes, ids: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Exesdb-Id": ids}
        if self._secret is not None:
            headers["X-Exesdb-Signature"] = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        return headers

    async def _post(self, body: bytes, ids: str) -> str | None:
        """``None`` when acknowledged, the reason when refused; raises :class:`SinkUnavailable`."""
        if self._session is None:
            await self.open()
        assert self._session is not None
        try:
            async with self._session.post(self.url, data=body, headers=self._headers(body, ids)) as response:
                status = response.status
                text = (await response.content.read(_REASON_CHARS)).decode("utf-8", "replace")
        except TimeoutError:
            raise SinkUnavailable(f"webhook {self.url}: no answer within {self._timeout.total:g} s") from None
        except aiohttp.ClientError as exc:
            raise SinkUnavailable(f"webhook {self.url}: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return None
        detail = " ".join(text.split())[:_REASON_CHARS]
        if status >= 500 or status in _RETRY_STATUS or status < 200 or 300 <= status < 400:
            raise SinkUnavailable(f"webhook {self.url}: HTTP {status} {detail}".rstrip())
        return f"HTTP {status} {detail}".rstrip()

    async def send(self, batch: Sequence[Delivery]) -> Sequence[str | None]:
        if not batch:
            return []
        if self.batch:
            body = _ENCODER.encode([d.json for d in batch]).encode()
            refused = await self._post(body, ",".join(d.id for d in batch))
            return [refused] * len(batch)
        answers: list[str | None] = []
        for delivery in batch:
            answers.append(await self._post(_ENCODER.encode(delivery.json).encode(), delivery.id))
        return answers


def create(name: str, options: Mapping[str, Any]) -> WebhookSink:
    """The webhook sink of connector ``name`` (options: ``url``, ``secret_file``, ``batch``,
    ``timeout`` and ``connect_timeout`` in seconds)."""
    unknown_options(name, options, KNOWN)
    url = option(name, options, "url", str, check=_url)
    secret_file = option(name, options, "secret_file", str, None)
    secret = _read_secret(name, secret_file) if secret_file is not None else None
    batch = option(name, options, "batch", bool, False)
    positive = lambda v: None if 0 < v <= 3600 else "must be between 0 and 3600 seconds"  # noqa: E731
    timeout = option(name, options, "timeout", float, 10.0, positive)
    connect_timeout = option(name, options, "connect_timeout", float, min(timeout, 5.0), positive)
    return WebhookSink(name, url, secret, batch, timeout, connect_timeout)
