"""The HTTP surface of the bus: health and Prometheus metrics, the broker's stats, the bus as
Server-Sent Events and HTTP publishes, and the live dashboard.

It is a client of the bus, built on the SDK only: the broker runs it in its own process (on
``127.0.0.1:7180`` by default, over inproc endpoints), and ``exesdb dashboard`` runs it beside a
remote broker, over the broker's public endpoints.
"""

from __future__ import annotations

from .access import BusAccess
from .app import WebSettings, create_app
from .server import WebServer

__all__ = ["BusAccess", "WebServer", "WebSettings", "create_app"]
