"""exesdb_broker: the exesdb-pubsub broker daemon, and the ``Broker`` class to embed it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exesdb_sdk import BindError, __version__

    from .broker import Broker
    from .config import BrokerConfig, load_config

__all__ = ["BindError", "Broker", "BrokerConfig", "__version__", "load_config"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that the daemon's entry point (._start) runs before the heavy
    # imports: a Ctrl-C during start-up then stops it cleanly (see ._start).
    if name in ("BindError", "__version__"):
        import exesdb_sdk

        return getattr(exesdb_sdk, name)
    if name == "Broker":
        from .broker import Broker

        return Broker
    if name in ("BrokerConfig", "load_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'exesdb_broker' has no attribute {name!r}")
