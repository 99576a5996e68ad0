"""The webhook peer: a real HTTP receiver (aiohttp) in its own process, on a free loopback port.

It records every message it accepts to a JSON-lines file (flushed before it answers) and
answers 400 to a message whose data has ``"poison": true``; it checks the signature when given
the secret and answers 401 to a bad one. Run as a script: ``python peer_webhook.py PORT FILE [SECRET_FILE]``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__:
    from .peers import Received, accepts, free_port, stop_process
else:  # run as the receiver's script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import Received, accepts, free_port, stop_process  # type: ignore[no-redef]

START_TIMEOUT = 10.0


class WebhookPeer:
    """The far side of a webhook connector (see tests/peers.py for the interface)."""

    kind = "webhook"

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.log = tmp_path / "webhook-received.jsonl"
        self.secret_file = tmp_path / "webhook.secret"
        self.secret_file.write_text("s3cret-for-tests\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.port), str(self.log), str(self.secret_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(self.port, timeout=0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the webhook receiver did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, 5)

    def close(self) -> None:
        self.stop()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def sink_options(self) -> dict[str, Any]:
        return {"url": self.url(), "secret_file": str(self.secret_file), "timeout": 2.0}

    def received(self) -> list[Received]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                out.append(Received(entry["id"], entry["topic"], entry["data"]))
        return out

    def poison(self) -> tuple[str, str, dict[str, Any]]:
        return ("ex_esdb_alerts", "poisoned", {"poison": True, "why": "the receiver refuses it"})


def make_peer(tmp_path: Path) -> WebhookPeer:
    return WebhookPeer(tmp_path)


def _serve(port: int, log_path: str, secret_path: str | None) -> None:
    from aiohttp import web

    secret = Path(secret_path).read_bytes().strip() if secret_path else None
    out = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the receiver's life

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if secret is not None:
            expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get("X-Exesdb-Signature", ""), expected):
                return web.Response(status=401, text="bad signature")
        document = json.loads(body)
        items = document if isinstance(document, list) else [document]
        ids = request.headers.get("X-Exesdb-Id", "").split(",")
        if any(isinstance(i.get("data"), dict) and i["data"].get("poison") is True for i in items):
            return web.Response(status=400, text="poison refused")
        for ident, item in zip(ids, items, strict=False):
            out.write(json.dumps({"id": ident, "topic": item["topic"], "data": item["data"]}) + "\n")
        out.flush()
        os.fsync(out.fileno())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True, shutdown_timeout=1)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
