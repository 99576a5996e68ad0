"""The broker's ``publish_many`` control op against a real broker: one result per message in
order, the good ones committed once with consecutive sequence numbers and forwarded live, a
request malformed as a whole refused whole, the role check, and the SDK's fallback to one
``publish`` per message at a broker that does not know the op (a real older broker)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from exesdb_sdk import ControlClient, ControlError, DurabilityError, Subscriber
from exesdb_sdk.protocol import Encoder

from . import conftest
from .conftest import StartBroker, wait_until
from .test_journal import FULL_DISK_BROKER, journal, replay_all
from .test_security import Keys, keys, secure

__all__ = ["keys", "secure"]  # the fixtures this module borrows

pytestmark = pytest.mark.timeout(60)

OLD_BROKER = "49c9b130f413687acb1d3986886019cdea9fbe00"
"""A commit of this repository from before ``publish_many``: its broker answers ``unknown_op``."""
REPO = Path(__file__).resolve().parents[1]

_encoder = Encoder(src="many")


def _message(suffix: str, n: int) -> list[Any]:
    topic = f"ex_esdb_audit/{suffix}"
    return [topic, _encoder.encode(topic.encode(), "Custom", {"n": n})]


def test_each_message_gets_its_own_result_in_order(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path), "--max-message-size", "4096", "--last-values", "audit/many")
    good = [_message("many", n) for n in range(6)]
    messages: list[Any] = [
        good[0],
        ["ex_esdb_metrics/many", good[1][1]],  # not journaled
        good[1],
        ["ex_esdb_audit/many", b"\xc1"],  # not MessagePack
        good[2],
        ["ex_esdb_audit/many"],  # not a pair
        good[3],
        ["ex_esdb_audit/many", b"x" * 5000],  # over max_message_size
        good[4],
        [7, good[4][1]],  # a topic that is not a string
        good[5],
    ]
    with Subscriber(broker.backend) as sub, ControlClient(broker.control) as control:
        sub.subscribe("audit", "many")
        results = control.request("publish_many", {"messages": messages})["results"]
        assert [r if isinstance(r, int) else r["code"] for r in results] == [
            1,
            "not_journaled",
            2,
            "bad_request",
            3,
            "bad_request",
            4,
            "too_large",
            5,
            "bad_request",
            6,
        ]
        assert all(r["message"] for r in results if isinstance(r, dict))
        live = [sub.recv(timeout=5) for _ in range(6)]
        assert [m.data["n"] for m in live] == list(range(6))
        last = control.request("last", {"prefix": "ex_esdb_audit/many"})["records"]
        assert [(topic, body) for topic, _, body in last] == [tuple(good[5])]  # kept as a publish keeps it
        # forwarded once each: the next message live is the one published after them
        assert control.request("publish", {"topic": good[0][0], "body": _message("many", 99)[1]})["seq"] == 7
        assert sub.recv(timeout=5).data["n"] == 99
    records = replay_all(broker)  # answered once everything before it is committed
    assert [r[0] for r in records] == list(range(1, 8))
    assert [r[3] for r in records[:6]] == [body for _, body in good]
    stats = journal(broker)
    assert (stats["durable"], stats["refused"], stats["publish_many"], stats["malformed"]) == (7, 5, 1, 1)


def test_a_request_malformed_as_a_whole_gets_one_error_and_commits_nothing(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    good = _message("whole", 0)
    with ControlClient(broker.control) as control:
        for args in ({}, {"messages": "nope"}, {"messages": {"a": 1}}, {"messages": [good] * 1001}):
            with pytest.raises(ControlError, match="at most 1000 \\[topic, body\\] pairs") as refused:
                control.request("publish_many", args)
            assert refused.value.code == "bad_request"
        assert control.request("publish_many", {"messages": []})["results"] == []
        full = [_message("whole", n) for n in range(1000)]
        assert control.request("publish_many", {"messages": full})["results"] == list(range(1, 1001))
    # the refused requests committed nothing (the stats view is the journal's after its round)
    assert wait_until(lambda: journal(broker)["durable"] == 1000, 10)
    assert journal(broker)["refused"] == 4  # one per request refused whole
    assert [r[0] for r in replay_all(broker)] == list(range(1, 1001))


def test_commit_many_sends_chunks_and_the_broker_groups_them(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    messages = [(topic.encode(), body) for topic, body in (_message("chunks", n) for n in range(200))]
    with ControlClient(broker.control) as control:
        assert control.commit_many(messages, window=16) == list(range(1, 201))
        big = [
            (b"ex_esdb_audit/big", _encoder.encode(b"ex_esdb_audit/big", "Custom", {"p": "x" * 25_000}))
            for _ in range(6)
        ]
        assert control.commit_many(big, window=64) == list(range(201, 207))
    assert wait_until(lambda: journal(broker)["durable"] == 206, 10)
    stats = journal(broker)
    # 200 in chunks of window // 2 = 8, then 6 of 25 KB in chunks of about 60 KiB: two each
    assert stats["publish_many"] == 25 + 3 and stats["durable"] == 206


def test_a_failing_commit_refuses_every_good_message_of_the_request(
    start_broker: StartBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conftest, "broker_command", lambda: FULL_DISK_BROKER)
    broker = start_broker("--data-dir", str(tmp_path))
    topic = b"ex_esdb_audit/big"
    messages = [(topic, _encoder.encode(topic, "Custom", {"n": n, "pad": "x" * 20_000})) for n in range(100)]
    with Subscriber(broker.backend) as sub, ControlClient(broker.control) as control:
        sub.subscribe("audit")
        results = control.commit_many(messages, window=8)
        acked = [r for r in results if isinstance(r, int)]
        failed = [r for r in results if not isinstance(r, int)]
        assert acked == list(range(1, len(acked) + 1)) and acked  # a failed commit takes no numbers
        assert failed and all(isinstance(r, DurabilityError) and r.code == "commit_failed" for r in failed)
        assert len(list(sub.iter(timeout=0.5))) == len(acked)  # the refused ones were not forwarded
        assert control.ping()["pong"]
    assert wait_until(lambda: journal(broker)["refused"] >= len(failed), 10)  # the view after the journal's round
    stats = journal(broker)
    assert stats["refused"] == len(failed) and "commit failed" in stats["last_error"]


def test_publish_many_needs_the_publish_role(secure: Any, keys: Keys) -> None:
    good = _message("keys", 0)
    with ControlClient(secure.control, **keys.client("sub")) as control:
        with pytest.raises(ControlError) as refused:
            control.request("publish_many", {"messages": [good]})
        assert refused.value.code == "forbidden"
        results = control.commit_many([(good[0].encode(), good[1])])
        assert isinstance(results[0], ControlError) and results[0].code == "forbidden"
    for name in ("pub", "adm"):
        with ControlClient(secure.control, **keys.client(name)) as control:
            assert isinstance(control.request("publish_many", {"messages": [good]})["results"][0], int)


def _old_checkout(where: Path) -> Path:
    """The broker and SDK of :data:`OLD_BROKER`, unpacked under ``where`` (skip without git)."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("needs git and this repository's history for an older broker")
    archive = subprocess.run(
        [git, "-C", str(REPO), "archive", OLD_BROKER, "broker/exesdb_broker", "sdk/exesdb_sdk", "web/exesdb_web"],
        capture_output=True,
        timeout=30,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {OLD_BROKER[:8]} not in this clone: {archive.stderr.decode(errors='replace')[:200]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(where, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(where)
    return where


def test_commit_many_falls_back_to_one_publish_per_message_at_an_older_broker(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    old = _old_checkout(tmp_path / "old")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(old / part) for part in ("sdk", "broker", "web"))}
    broker = start_broker("--data-dir", str(tmp_path / "data"), env=env)
    messages = [(topic.encode(), body) for topic, body in (_message("old", n) for n in range(40))]
    messages.insert(10, (b"ex_esdb_metrics/old", messages[0][1]))
    with ControlClient(broker.control) as control:
        with pytest.raises(ControlError) as unknown:
            control.request("publish_many", {"messages": []})
        assert unknown.value.code == "unknown_op"  # it is an older broker
        results = control.commit_many(messages, window=8)
        assert [r if isinstance(r, int) else r.code for r in results] == [
            *range(1, 11),
            "not_journaled",
            *range(11, 41),
        ]
        assert control.commit_many(messages[:3], window=8) == [41, 42, 43]  # remembered: straight to publish
    assert wait_until(lambda: journal(broker)["durable"] == 43, 10)
    stats = journal(broker)
    assert stats["refused"] == 1 and "publish_many" not in stats
