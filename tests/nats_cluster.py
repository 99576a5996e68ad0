"""A real NATS cluster for federation tests: ``size`` ``nats-server`` processes on free loopback
ports, routed to each other (``cluster { name, listen, routes }`` in temporary configs), each
with its monitoring endpoint, whose ``/routez`` says when the cluster has formed (the nodes do not
advertise each other to clients: a client knows the servers it is given), and JetStream
on (a store directory each), whose ``/jsz`` says when its meta leader is elected."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.peer_nats import BINARY, SKIP_REASON
from tests.peers import free_port, stop_process

__all__ = ["BINARY", "SKIP_REASON", "NatsCluster"]

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@dataclass
class _Node:
    name: str
    port: int
    cluster_port: int
    http_port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


class NatsCluster:
    """``size`` routed nats-servers; :meth:`kill` one with SIGKILL mid-test."""

    def __init__(self, tmp_path: Path, size: int = 3) -> None:
        self.dir = tmp_path / "nats-cluster"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            _Node(f"n{i}", free_port(), free_port(), free_port(), self.dir / f"n{i}.conf", self.dir / f"n{i}.log")
            for i in range(size)
        ]
        for node in self.nodes:
            routes = ", ".join(f"nats-route://127.0.0.1:{other.cluster_port}" for other in self.nodes if other != node)
            node.config.write_text(
                f"server_name: {node.name}\n"
                f"listen: 127.0.0.1:{node.port}\n"
                f"http: 127.0.0.1:{node.http_port}\n"
                + (
                    f"cluster {{ name: exesdb-test, listen: 127.0.0.1:{node.cluster_port}, routes: [{routes}],"
                    " no_advertise: true }\n"
                    if size > 1
                    else ""  # JetStream refuses a cluster of one
                )
                + f"jetstream {{ store_dir: {json.dumps(str(self.dir / node.name))}, max_memory_store: 64MB,"
                " max_file_store: 8GB }\n"
            )

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [node.url for node in self.nodes]

    def start(self) -> None:
        """Start every node; return once each has a route to every other (``/routez``)."""
        if BINARY is None:
            raise RuntimeError(SKIP_REASON)
        for node in self.nodes:
            with node.log.open("ab") as log:
                node.process = subprocess.Popen(
                    [BINARY, "-c", str(node.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
        deadline = time.monotonic() + START_TIMEOUT
        for node in self.nodes:
            while self.routes(node) < len(self.nodes) - 1:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"nats-server {node.name} exited: {node.log.read_bytes()[-400:]!r}")
                if time.monotonic() > deadline:
                    tail = node.log.read_bytes()[-600:].decode(errors="replace")
                    raise RuntimeError(f"the NATS cluster did not form in {START_TIMEOUT:g} s; {node.name}: {tail}")
                time.sleep(0.05)
        for node in self.nodes:
            while not self.jetstream_ready(node, clustered=len(self.nodes) > 1):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JetStream of the NATS cluster had no leader in {START_TIMEOUT:g} s")
                time.sleep(0.05)

    @staticmethod
    def jetstream_ready(node: _Node, clustered: bool) -> bool:
        """Whether ``node``'s JetStream is up and, ``clustered``, knows its meta leader (``/jsz``)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/jsz", timeout=1) as reply:
                jsz = json.load(reply)
                return bool((jsz.get("meta_cluster") or {}).get("leader")) if clustered else "config" in jsz
        except (OSError, urllib.error.URLError, ValueError):
            return False

    @staticmethod
    def routes(node: _Node) -> int:
        """The routes ``node`` reports on ``/routez`` (-1: it does not answer yet)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/routez", timeout=1) as reply:
                count: int = json.load(reply).get("num_routes", 0)
                return count
        except (OSError, urllib.error.URLError, ValueError):
            return -1

    def connections(self, index: int) -> int:
        """Client connections of node ``index`` (``/connz``; -1 when it does not answer)."""
        node = self.nodes[index]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/connz", timeout=1) as reply:
                count: int = json.load(reply).get("num_connections", 0)
                return count
        except (OSError, urllib.error.URLError, ValueError):
            return -1

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` and reap it."""
        process = self.nodes[index].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(STOP_TIMEOUT)

    def restart(self, index: int) -> None:
        """Start node ``index`` again (after :meth:`kill`), on its ports and store; return once it
        has its routes back and JetStream knows its leader."""
        node = self.nodes[index]
        with node.log.open("ab") as log:
            node.process = subprocess.Popen(
                [str(BINARY), "-c", str(node.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT
        while self.routes(node) < len(self.nodes) - 1 or not self.jetstream_ready(node, len(self.nodes) > 1):
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {node.name} did not come back: {node.log.read_bytes()[-400:]!r}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop every node (SIGTERM, wait, then kill)."""
        for node in self.nodes:
            process, node.process = node.process, None
            stop_process(process, STOP_TIMEOUT)
