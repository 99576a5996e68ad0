"""exesdb_broker: the exesdb-pubsub broker daemon, and the ``Broker`` class to embed it."""

from exesdb_sdk import BindError, __version__

from .broker import Broker
from .config import BrokerConfig, load_config

__all__ = ["BindError", "Broker", "BrokerConfig", "__version__", "load_config"]
