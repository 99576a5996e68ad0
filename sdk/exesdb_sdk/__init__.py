"""exesdb_sdk: the client library of the exesdb-pubsub bus.

Publish and subscribe to the ten instances (nine observability channels plus store
events) through an ``exesdb-broker``, and query the broker's control endpoint::

    from exesdb_sdk import Publisher, Subscriber

    with Subscriber() as sub, Publisher() as pub:
        sub.subscribe("health")
        pub.publish("health", "store_health:main", "NodeHealth", {"node": "n1", "status": "healthy"})
        print(sub.recv(timeout=5).data)
"""

from ._version import __version__
from .aio import AsyncControlClient, AsyncPublisher, AsyncSubscriber
from .control import ControlClient
from .endpoints import DEFAULT_BACKEND, DEFAULT_CONTROL, DEFAULT_FRONTEND
from .errors import (
    AuthenticationError,
    BindError,
    BrokerUnavailableError,
    ClosedError,
    ConfigError,
    ControlError,
    DurabilityError,
    ExesdbError,
    HandshakeError,
    MessageTooLargeError,
    ProtocolError,
    PublishTimeoutError,
    ReceiveTimeoutError,
    UnknownInstanceError,
    ValidationError,
)
from .instances import Instance
from .protocol import PROTOCOL_VERSION, Message
from .publisher import Publisher, PublisherStats
from .subscriber import Subscriber, SubscriberStats

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_CONTROL",
    "DEFAULT_FRONTEND",
    "PROTOCOL_VERSION",
    "AsyncControlClient",
    "AsyncPublisher",
    "AsyncSubscriber",
    "AuthenticationError",
    "BindError",
    "BrokerUnavailableError",
    "ClosedError",
    "ConfigError",
    "ControlClient",
    "ControlError",
    "DurabilityError",
    "ExesdbError",
    "HandshakeError",
    "Instance",
    "Message",
    "MessageTooLargeError",
    "ProtocolError",
    "PublishTimeoutError",
    "Publisher",
    "PublisherStats",
    "ReceiveTimeoutError",
    "Subscriber",
    "SubscriberStats",
    "UnknownInstanceError",
    "ValidationError",
    "__version__",
]
