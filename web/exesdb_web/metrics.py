"""``/metrics``: the broker's ``stats`` in the Prometheus text format, through prometheus-client.

Each scrape takes one control ``stats`` snapshot and renders it with :class:`StatsCollector`
(every family from the same snapshot, so they agree with each other and with ``exesdb
stats`` at that moment), the process collector (in the broker: the broker's own process)
and the application's own counters as ``exesdb_http_<name>_total``. The bus instance is
the label ``channel``: Prometheus reserves ``instance`` for the scrape target. When the
broker does not answer, ``exesdb_broker_up`` is 0 and only the process and HTTP families
are exposed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from aiohttp import web
from exesdb_sdk.errors import BrokerUnavailableError, ControlError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .app import BUS, COUNTERS

__all__ = ["StatsCollector", "render", "routes"]

routes = web.RouteTableDef()

_TIMEOUT: Final = 2.0


def _counter(name: str, doc: str, value: Any = None, labels: Mapping[str, Mapping[str, Any]] | None = None) -> Metric:
    """A counter family: one value, or one sample per label value (``{"channel": {...}}``)."""
    return _family(CounterMetricFamily, name, doc, value, labels)


def _gauge(name: str, doc: str, value: Any = None, labels: Mapping[str, Mapping[str, Any]] | None = None) -> Metric:
    return _family(GaugeMetricFamily, name, doc, value, labels)


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    value: Any,
    labels: Mapping[str, Mapping[str, Any]] | None,
) -> Metric:
    if labels is None:
        return kind(name, doc, value=float(value or 0))
    ((label, values),) = labels.items()
    family = kind(name, doc, labels=[label])
    for key, number in sorted(values.items()):
        family.add_metric([str(key)], float(number or 0))
    return family


class StatsCollector(Collector):
    """The families of one ``stats`` reply (``None``: the broker did not answer) and the
    application's counters."""

    def __init__(self, stats: dict[str, Any] | None, counters: Mapping[str, int]) -> None:
        self.stats = stats
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        yield _gauge(
            "exesdb_broker_up", "Whether the broker answered the control stats request", self.stats is not None
        )
        for name, value in sorted(self.counters.items()):
            yield _counter(f"exesdb_http_{name}", f"HTTP surface: {name.replace('_', ' ')}", value)
        if self.stats is not None:
            yield from _broker_families(self.stats)


def _broker_families(stats: dict[str, Any]) -> Iterator[Metric]:
    instances: dict[str, dict[str, Any]] = stats.get("instances", {})
    info = GaugeMetricFamily(
        "exesdb_broker_info",
        "The broker's version, protocol and node (value 1)",
        labels=["version", "protocol", "node"],
    )
    info.add_metric([str(stats.get("version", "")), str(stats.get("protocol", "")), str(stats.get("node", ""))], 1)
    yield info
    yield _gauge("exesdb_uptime_seconds", "Seconds since the broker started", stats.get("uptime"))
    yield _gauge("exesdb_start_time_seconds", "When the broker started (Unix time)", stats.get("started_at", 0) / 1e9)
    per = {key: {name: figures.get(key, 0) for name, figures in instances.items()} for key in ("messages", "bytes")}
    envelopes = {name: figures.get("envelopes", 0) for name, figures in instances.items()}
    yield _counter("exesdb_messages", "Messages forwarded, by bus instance", labels={"channel": per["messages"]})
    yield _counter("exesdb_envelopes", "Envelopes the messages arrived in", labels={"channel": envelopes})
    yield _counter("exesdb_bytes", "Bytes of the messages forwarded, by bus instance", labels={"channel": per["bytes"]})
    yield _counter(
        "exesdb_malformed", "Malformed messages, by reason", labels={"reason": stats.get("malformed_by_reason", {})}
    )
    yield _gauge("exesdb_subscribers", "Subscriber connections", stats.get("subscribers"))
    yield _gauge("exesdb_publishers", "Publisher connections", stats.get("publishers"))
    counting = stats.get("counting", {})
    yield _gauge("exesdb_counting_exact", "1 while the per-instance counts are exact", counting.get("exact", True))
    yield _counter(
        "exesdb_tap_missed_frames", "Frames the counting tap is proven to have missed", counting.get("missed_frames")
    )
    forwarded = stats.get("forwarded")
    if forwarded is not None:
        frames = {"in": forwarded["frames_in"], "out": forwarded["frames_out"]}
        sizes = {"in": forwarded["bytes_in"], "out": forwarded["bytes_out"]}
        yield _counter("exesdb_proxy_frames", "Frames through the proxy, by direction", labels={"direction": frames})
        yield _counter("exesdb_proxy_bytes", "Bytes through the proxy, by direction", labels={"direction": sizes})
    yield from _journal_families(stats.get("journal", {}))
    yield from _connector_families(stats.get("connectors"))
    yield from _federation_families(stats.get("federation"))
    restarts = stats.get("restarts", {})
    yield _counter(
        "exesdb_thread_restarts",
        "Supervised thread restarts, by thread",
        labels={"thread": restarts.get("by_thread", {})},
    )
    yield from _security_families(stats.get("security", {}))
    fds = stats.get("fds", {})
    if fds:
        yield _gauge("exesdb_fds_used", "File descriptors in use", fds.get("used"))
        yield _gauge("exesdb_fds_limit", "File descriptor limit", fds.get("limit"))
        yield _gauge("exesdb_fds_peak", "Most file descriptors in use at once", fds.get("peak"))
        yield _counter("exesdb_fd_warnings", "Warnings about the file descriptor limit", fds.get("warnings"))
        yield _counter("exesdb_accept_pauses", "Times accepting was paused at the descriptor limit", fds.get("pauses"))
        yield _counter(
            "exesdb_accept_failures", "Failed accepts, by endpoint", labels={"endpoint": fds.get("accept_failures", {})}
        )


def _journal_families(journal: dict[str, Any]) -> Iterator[Metric]:
    if not journal:
        return
    state = GaugeMetricFamily("exesdb_journal_state", "The journal's state (1 for the current one)", labels=["state"])
    for name in ("ok", "disabled", "starting", "unavailable"):
        state.add_metric([name], 1 if journal.get("state") == name else 0)
    if journal.get("state") not in ("ok", "disabled", "starting", "unavailable"):
        state.add_metric([str(journal.get("state"))], 1)
    yield state
    counters = {
        "received": "Messages the journal received",
        "committed": "Records committed (live and durable)",
        "committed_live": "Live messages committed",
        "refused": "Durable publishes refused",
        "failed": "Commits that failed",
        "gaps": "Gaps recorded in the journal",
        "shed_alerts": "Alerts raised when the journal shed",
        "malformed": "Malformed messages the journal skipped",
        "trimmed": "Records removed by age or count",
        "last_value_writes": "Last-value writes",
        "last_values_dropped": "Last-value updates dropped",
        "drained_at_stop": "Messages committed while draining at stop",
    }
    for key, doc in counters.items():
        yield _counter(f"exesdb_journal_{key}", doc, journal.get(key))
    yield _counter(
        "exesdb_journal_durable_acks", "Durable publishes committed and acknowledged", journal.get("durable")
    )
    yield _counter(
        "exesdb_journal_dropped",
        "Messages the journal shed, by bus instance",
        labels={"channel": journal.get("dropped_by_instance", {})},
    )
    yield _counter(
        "exesdb_journal_drops",
        "Messages the journal shed, by reason",
        labels={"reason": journal.get("dropped_by_reason", {})},
    )
    yield _gauge("exesdb_journal_backlog", "Messages received, not yet committed", journal.get("backlog"))
    yield _gauge("exesdb_journal_in_feeds", "Messages still in the journal's feeds", journal.get("in_feeds"))
    yield _gauge("exesdb_journal_buffer_bytes", "Bytes held in the journal's buffer", journal.get("buffer_bytes"))
    yield _gauge("exesdb_journal_buffer_limit_bytes", "The journal buffer's bound", journal.get("buffer_limit"))
    yield _gauge("exesdb_journal_last_values", "Topics with a kept last value", journal.get("last_values"))
    yield _gauge(
        "exesdb_journal_head",
        "The latest broker sequence, by journaled instance",
        labels={"channel": journal.get("heads", {})},
    )


_CONNECTOR_COUNTERS: Final = {
    "delivered": "Messages a connector's sink acknowledged",
    "parked": "Messages a connector's sink refused for good, kept to be replayed (now)",
    "missed": "Messages a connector never received (sequence gaps, journal gap markers)",
    "dropped": "Live messages a connector's full buffer dropped",
    "failures": "Failed deliveries to a connector's sink (each retried)",
}


def _connector_families(connectors: Any) -> Iterator[Metric]:
    """``exesdb_connector_*{connector=}`` from ``stats.connectors`` (absent without connectors)."""
    if not isinstance(connectors, dict) or not connectors:
        return
    entries = {str(name): entry for name, entry in connectors.items() if isinstance(entry, dict)}
    for key, doc in _CONNECTOR_COUNTERS.items():
        family = (GaugeMetricFamily if key == "parked" else CounterMetricFamily)(
            f"exesdb_connector_{key}", doc, labels=["connector"]
        )
        for name, entry in sorted(entries.items()):
            family.add_metric([name], float(entry.get(key) or 0))
        yield family
    state = GaugeMetricFamily(
        "exesdb_connector_up", "1 while a connector runs (not failed or paused)", labels=["connector"]
    )
    lag = GaugeMetricFamily(
        "exesdb_connector_lag", "Journal records past a connector's cursor", labels=["connector", "channel"]
    )
    buffered = GaugeMetricFamily("exesdb_connector_buffered", "Messages in a connector's buffer", labels=["connector"])
    for name, entry in sorted(entries.items()):
        state.add_metric([name], 1.0 if entry.get("state") == "running" else 0.0)
        buffered.add_metric([name], float(entry.get("buffered") or 0))
        for channel, value in sorted((entry.get("lag") or {}).items()):
            lag.add_metric([name, str(channel)], float(value or 0))
    yield state
    yield lag
    yield buffered


def _federation_families(federation: Any) -> Iterator[Metric]:
    """``exesdb_federation_*`` from ``stats.federation`` (absent when federation is off)."""
    if not isinstance(federation, dict) or federation.get("state", "off") == "off":
        return
    yield _gauge("exesdb_federation_up", "1 while the federation bridge is connected to NATS",
                 federation.get("state") == "connected")  # fmt: skip
    yield _counter("exesdb_federation_exported", "Messages exported to NATS", federation.get("exported"))
    yield _counter("exesdb_federation_imported", "Messages imported from NATS", federation.get("imported"))
    yield _counter("exesdb_federation_gaps", "Imported messages missing by sequence", federation.get("gaps"))
    yield _counter("exesdb_federation_reconnects", "Reconnections to NATS", federation.get("reconnects"))
    yield _counter(
        "exesdb_federation_dropped", "Messages the bridge could not carry, by reason",
        labels={"reason": federation.get("dropped") or {}},
    )  # fmt: skip
    jetstream = federation.get("jetstream")
    if isinstance(jetstream, dict) and jetstream.get("state", "off") != "off":
        yield from _jetstream_families(jetstream)


def _jetstream_families(jetstream: dict[str, Any]) -> Iterator[Metric]:
    """``exesdb_federation_jetstream_*``: the journaled instances through JetStream, per channel."""
    yield _gauge("exesdb_federation_jetstream_up", "1 while the journaled federation works",
                 jetstream.get("state") == "ok")  # fmt: skip
    found = jetstream.get("instances")
    instances: dict[str, Any] = found if isinstance(found, dict) else {}
    families = (
        ("exported", CounterMetricFamily, "Journal records exported to JetStream"),
        ("imported", CounterMetricFamily, "Messages from JetStream committed to this journal"),
        ("lost", CounterMetricFamily, "Messages lost to a stream's or journal's limits before crossing"),
        ("reordered", CounterMetricFamily, "Exported messages that reached the stream after later ones"),
        ("export_lag", GaugeMetricFamily, "Journal records not yet exported"),
        ("import_lag", GaugeMetricFamily, "Stream messages not yet committed here"),
    )
    for key, kind, documentation in families:
        family = kind(f"exesdb_federation_jetstream_{key}", documentation, labels=["channel"])
        for channel, entry in sorted(instances.items()):
            if isinstance(entry, dict):
                family.add_metric([str(channel)], float(entry.get(key) or 0))
        yield family


def _security_families(security: dict[str, Any]) -> Iterator[Metric]:
    if not security:
        return
    yield _gauge("exesdb_security_enabled", "1 when CURVE is on", security.get("enabled", False))
    yield _counter(
        "exesdb_handshake_failures",
        "Failed handshakes, by kind",
        labels={"kind": security.get("handshake_failures_by_kind", {})},
    )
    by_endpoint = security.get("handshake_failures_by_endpoint", {})
    yield _counter(
        "exesdb_endpoint_handshake_failures", "Failed handshakes, by endpoint", labels={"endpoint": by_endpoint}
    )
    yield _counter("exesdb_forbidden_ops", "Control ops refused for the key's role", security.get("forbidden_ops"))
    yield _counter(
        "exesdb_access_violations_published", "AccessViolation messages published", security.get("violations_published")
    )
    yield _counter(
        "exesdb_access_violations_suppressed",
        "AccessViolation messages held back by the rate limit",
        security.get("violations_suppressed"),
    )
    yield _gauge("exesdb_allowlist_keys", "Keys in each allowlist", labels={"role": security.get("allowlists", {})})
    yield _counter("exesdb_security_reloads", "Allowlist reloads", security.get("reloads"))


def render(stats: dict[str, Any] | None, counters: Mapping[str, int]) -> bytes:
    """The exposition text of one snapshot, with the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats, counters))
    registry.register(ProcessCollector(registry=None))
    return generate_latest(registry)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """One ``stats`` snapshot as Prometheus text."""
    stats: dict[str, Any] | None
    try:
        stats = await request.app[BUS].request("stats", timeout=_TIMEOUT)
    except (BrokerUnavailableError, ControlError):
        stats = None
    counters = request.app[COUNTERS]
    counters["metrics_scrapes"] += 1
    body = render(stats, counters)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
