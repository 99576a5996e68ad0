"""Connectors: named consumers of the bus that carry chosen instances and topics to the systems
people already run (webhooks, Redis Streams, MQTT, NATS JetStream), health-gated, with a
circuit breaker, resuming from a durable cursor on journaled instances.

Built on the SDK only: the broker runs the connectors of its configuration (``[[connectors]]``),
``exesdb connect CONFIG`` runs them beside a remote broker.
"""

from __future__ import annotations

from .sink import Delivery, Sink, SinkRejected, SinkUnavailable

__all__ = ["Delivery", "Sink", "SinkRejected", "SinkUnavailable"]
