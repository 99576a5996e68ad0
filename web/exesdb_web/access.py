"""How the HTTP application reaches the broker: its endpoints, keys and (in the broker's own
process) its ZeroMQ context, from which it makes SDK clients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from exesdb_sdk import AsyncControlClient, AsyncPublisher, AsyncSubscriber
from exesdb_sdk.curve import KeyPath
from exesdb_sdk.errors import ConfigError

__all__ = ["BusAccess"]


@dataclass(slots=True)
class BusAccess:
    """The broker as the HTTP application sees it.

    In the broker's process ``context`` is the broker's own and the endpoints are its inproc
    ones (no CURVE handshake, no TCP hop); ``health`` then reports what only the process can see
    (``None``: serving; else why not). Standalone, the endpoints are the broker's public ones,
    with this client's CURVE keys when the broker wants them.

    ``restricted_frontend`` and ``restricted_backend`` are the restricted class's pair (``None``:
    the application serves no restricted instance).
    """

    frontend: str
    backend: str
    control: str
    client_key: KeyPath | None = None
    server_key: KeyPath | None = None
    context: zmq.Context[Any] | None = None
    health: Callable[[], str | None] | None = None
    restricted_frontend: str | None = None
    restricted_backend: str | None = None
    _async_context: zmq.asyncio.Context | None = field(default=None, init=False, repr=False)

    def async_context(self) -> zmq.asyncio.Context:
        """The asyncio context every client of the application shares (made on first use, in
        the application's event loop; a shadow of ``context`` when one is given)."""
        if self._async_context is None:
            self._async_context = (
                zmq.asyncio.Context() if self.context is None else zmq.asyncio.Context.shadow(self.context.underlying)
            )
        return self._async_context

    @property
    def serves_restricted(self) -> bool:
        """Whether the restricted class's endpoints are known (else its instances are refused)."""
        return self.restricted_frontend is not None and self.restricted_backend is not None

    def subscriber(self, *, restricted: bool = False, **options: Any) -> AsyncSubscriber:
        """A new subscriber to the broker's backend, or with ``restricted`` to the restricted
        class's (``options`` as for :class:`AsyncSubscriber`)."""
        return AsyncSubscriber(
            self._endpoint(self.restricted_backend if restricted else self.backend),
            control=self.control,
            context=self.async_context(),
            client_key=self.client_key,
            server_key=self.server_key,
            **options,
        )

    def publisher(self, *, restricted: bool = False, **options: Any) -> AsyncPublisher:
        """A new (not yet connected) publisher to the broker's frontend, or with ``restricted``
        to the restricted class's."""
        return AsyncPublisher(
            self._endpoint(self.restricted_frontend if restricted else self.frontend),
            control=self.control,
            context=self.async_context(),
            client_key=self.client_key,
            server_key=self.server_key,
            **options,
        )

    def control_client(self, **options: Any) -> AsyncControlClient:
        """A new client of the broker's control endpoint."""
        return AsyncControlClient(
            self.control,
            context=self.async_context(),
            client_key=self.client_key,
            server_key=self.server_key,
            **options,
        )

    @staticmethod
    def _endpoint(endpoint: str | None) -> str:
        if endpoint is None:  # the routes check serves_restricted first
            raise ConfigError("the restricted class's endpoints are not known to this HTTP surface")
        return endpoint

    def close(self) -> None:
        """Terminate the shared context if this object made it (a shadow is left to its owner)."""
        context, self._async_context = self._async_context, None
        if context is not None and self.context is None:
            context.term()
