"""``exesdb connect CONFIG`` (run connectors beside a remote broker) and ``exesdb connectors``
(list them, their parked messages, send those again)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from exesdb_sdk import ControlClient
from exesdb_sdk.errors import ConfigError

__all__ = ["list_connectors", "run_connect"]


def run_connect(config: str, *, frontend: str | None, backend: str | None, control: str | None, state_dir: str) -> int:
    """Run the connectors of ``config`` until SIGINT or SIGTERM (status 0)."""
    from exesdb_connect.config import load_connectors
    from exesdb_connect.connector import ConnectorRunner

    configs = load_connectors(config)
    if not configs:
        raise ConfigError(f"config file {config}: no [[connectors]] table")
    runner = ConnectorRunner(configs, state_dir=state_dir, frontend=frontend, backend=backend, control=control)

    async def main() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for signo in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signo, stop.set)
        task = asyncio.create_task(runner.run(stop, ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if ready.is_set():
            names = ", ".join(f"{c.name} ({c.sink})" for c in configs)
            print(f"exesdb connect: running {names}; state in {runner.store.path}", file=sys.stderr, flush=True)
        await task

    asyncio.run(main())
    return 0


def _line(name: str, entry: dict[str, Any]) -> str:
    cursor = ",".join(f"{i.removeprefix('ex_esdb_')}:{s}" for i, s in (entry.get("cursor") or {}).items()) or "-"
    lag = sum((entry.get("lag") or {}).values())
    reason = f" reason={entry['reason']}" if entry.get("reason") else ""
    return (
        f"{name:<16} {entry.get('sink', '?'):<8} {entry.get('state', '?'):<8} "
        f"delivered={entry.get('delivered', 0)} parked={entry.get('parked', 0)} missed={entry.get('missed', 0)} "
        f"dropped={entry.get('dropped', 0)} cursor={cursor} lag={lag}{reason}"
    )


def list_connectors(
    *,
    control: str | None,
    timeout: float,
    as_json: bool,
    parked: str | None,
    replay: str | None,
    state_dir: str | None,
    limit: int,
) -> int:
    """Print connectors (one line each), or one connector's parked messages, or requeue them.
    With ``state_dir``, read a standalone ``exesdb connect``'s ``connectors.db`` instead of asking the broker."""
    if state_dir is not None:
        from exesdb_connect.cursor import StateStore

        store = StateStore(state_dir)
        try:
            if replay is not None:
                reply: dict[str, Any] = {"name": replay, "requeued": store.request_replay(replay)}
            elif parked is not None:
                found = store.parked(parked, limit)
                reply = {"name": parked, "total": store.parked_count(parked), "parked": [p.summary() for p in found]}
            else:
                raise ConfigError("--state-dir needs --parked NAME or --replay NAME (the list comes from the broker)")
        finally:
            store.close()
    else:
        with ControlClient(control, timeout=timeout) as client:
            if replay is not None:
                reply = client.request("connector_replay", {"name": replay})
            elif parked is not None:
                reply = client.request("connector_parked", {"name": parked, "limit": limit})
            else:
                reply = client.request("connectors")
    reply = {k: v for k, v in reply.items() if k not in ("ok", "id")}
    if as_json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif replay is not None:
        print(f"{reply['name']}: {reply['requeued']} parked message(s) requeued (sent again within a second)")
    elif parked is not None:
        print(f"{reply['name']}: {reply['total']} parked message(s)")
        for p in reply["parked"]:
            print(f"  #{p['row']} {p['id']} {p['topic']} {p['reason']}")
    else:
        connectors = reply.get("connectors") or {}
        if not connectors:
            print("no connectors configured")
        for name, entry in connectors.items():
            print(_line(name, entry))
    return 0
