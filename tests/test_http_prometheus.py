"""A real Prometheus server scrapes a test broker's ``/metrics`` on loopback, and its query API
gives back the message count ``stats`` shows."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from exesdb_sdk import ControlClient, Publisher
from exesdb_sdk.messages import NodeHealth

from .conftest import BrokerProcess, StartBroker, wait_until
from .peers import free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (apt-get install prometheus)")
COUNT = 25
QUERY = 'exesdb_messages_total{channel="ex_esdb_health"}'


@pytest.fixture
def http_broker(start_broker: StartBroker) -> BrokerProcess:
    return start_broker("--metrics-interval", "3600", http=True)


@pytest.fixture
def prometheus(http_broker: BrokerProcess, tmp_path: Path) -> Iterator[str]:
    assert PROMETHEUS is not None and http_broker.http is not None
    target = http_broker.http.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: exesdb\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _queried(url: str) -> float | None:
    """The value Prometheus has for :data:`QUERY`, or ``None`` (not up yet, not scraped yet)."""
    try:
        reply = httpx.get(url + "/api/v1/query", params={"query": QUERY}, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    results = reply.get("data", {}).get("result", [])
    return float(results[0]["value"][1]) if results else None


@pytest.mark.timeout(60)
def test_prometheus_scrapes_the_count_stats_shows(http_broker: BrokerProcess, prometheus: str) -> None:
    with Publisher(http_broker.frontend, control=http_broker.control) as pub:
        for n in range(COUNT):
            pub.publish_message(NodeHealth(node=f"n{n}", status="healthy"))
    with ControlClient(http_broker.control) as control:
        assert wait_until(lambda: control.stats()["instances"]["ex_esdb_health"]["messages"] == COUNT, 10)
        shown = control.stats()["instances"]["ex_esdb_health"]["messages"]
    assert wait_until(lambda: _queried(prometheus) == shown, 30, interval=0.2), _queried(prometheus)
    up = httpx.get(prometheus + "/api/v1/query", params={"query": 'up{job="exesdb"}'}, timeout=2).json()
    assert up["data"]["result"][0]["value"][1] == "1"
