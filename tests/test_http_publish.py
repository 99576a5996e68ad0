"""``POST /v1/publish/{instance}/{subtopic}`` against a real broker: plain and durable
publishes, bad input refused with a one-line JSON error and nothing sent, and the README's
curl examples run with the real curl."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from exesdb_sdk import ControlClient, Subscriber
from exesdb_web import WebSettings

from .conftest import BrokerProcess, Lines, wait_until
from .test_http_stream import serving

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
NODE = {"node": "n1", "status": "healthy"}


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``serve(broker, settings)``: the broker's HTTP application, served from a thread."""
    yield from serving(monkeypatch)


def _messages(broker: BrokerProcess) -> dict[str, int]:
    with ControlClient(broker.control) as control:
        return {name: entry["messages"] for name, entry in control.stats()["instances"].items()}


def test_publish_plain_and_durable(broker: BrokerProcess, serve: Any) -> None:
    served = serve(broker)
    with (
        httpx.Client(base_url=served.url, timeout=10) as http,
        Subscriber(broker.backend, control=broker.control) as sub,
    ):
        sub.subscribe("health")
        sub.subscribe("alerts")
        body = {"type": "NodeHealth", "data": NODE, "corr": "c-1", "cause": "k-1", "trace": None}
        first = http.post("/v1/publish/health/node_health:n1", json=body)
        second = http.post("/v1/publish/ex_esdb_health/node_health:n1", json=body)
        assert (first.status_code, first.json(), second.json()) == (200, {"seq": 1}, {"seq": 2})
        got = [sub.recv(timeout=5) for _ in range(2)]
        assert [(m.topic, m.type, m.data, m.corr, m.cause, m.seq) for m in got] == [
            ("ex_esdb_health/node_health:n1", "NodeHealth", NODE, "c-1", "k-1", n) for n in (1, 2)
        ]
        assert got[0].pub == got[1].pub  # one publisher, shared by the application

        alert = {"type": "SystemAlert", "data": {"severity": "critical", "title": "disk full"}}
        durable = http.post("/v1/publish/alerts/critical", params={"durable": "true"}, json=alert)
        assert durable.status_code == 200, durable.text
        assert durable.json() == {"seq": 1, "durable": True}  # the broker's sequence number
        assert sub.recv(timeout=5).data["title"] == "disk full"
    with Subscriber(broker.backend, control=broker.control) as replay:
        replay.subscribe("alerts", replay_from=1)
        assert replay.recv(timeout=5).data["title"] == "disk full"
    assert served.counters["http_publishes"] == 3 and served.counters["http_publish_rejected"] == 0


BIG = 4096


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def _bad_requests() -> list[tuple[str, dict[str, Any], int, str, str]]:
    """(path, httpx request arguments, status, error code, a piece of the message)."""
    ok = {"type": "Custom", "data": {"n": 1}}
    return [
        ("/v1/publish/health/x", {"content": b'{"type": '}, 400, "bad_json", "line 1, column 10"),
        ("/v1/publish/health/x", {"content": b"\xff\xfe\xfa"}, 400, "bad_json", ""),
        ("/v1/publish/health/x", {"json": [ok]}, 400, "bad_request", "must be a JSON object"),
        ("/v1/publish/health/x", {"json": {"data": {}}}, 400, "missing_type", '"type"'),
        ("/v1/publish/health/x", {"json": {"type": "", "data": {}}}, 400, "missing_type", '"type"'),
        ("/v1/publish/health/x", {"json": {**ok, "colour": 1}}, 400, "bad_request", "'colour'"),
        ("/v1/publish/health/x", {"json": {**ok, "corr": 7}}, 400, "bad_request", "'corr'"),
        ("/v1/publish/nosuch/x", {"json": ok}, 404, "unknown_instance", "nosuch"),
        (
            "/v1/publish/health/node_health:n1",
            {"json": {"type": "NodeHealth", "data": {"node": "n1", "status": "bogus"}}},
            400, "invalid_field", "NodeHealth.status",
        ),
        (
            "/v1/publish/alerts/critical",
            {"json": {"type": "SystemAlert", "data": {"severity": "hot", "title": "t"}}},
            400, "invalid_field", "SystemAlert.severity: Invalid enum value 'hot'",
        ),
        (
            "/v1/publish/health/node_health:n1",
            {"json": {"type": "NodeHealth", "data": {"status": "healthy"}}},
            400, "invalid_field", "node",
        ),
        ("/v1/publish/health/x", {"json": {"type": "Custom", "data": [1]}}, 400, "bad_data", "a map"),
        ("/v1/publish/health/x", {"json": {"type": "Custom", "data": {"x": _deep(70)}}}, 400, "too_deep", "64"),
        ("/v1/publish/health/x%01", {"json": ok}, 400, "bad_topic", "control character"),
        ("/v1/publish/health/x", {"json": {"type": "Custom", "data": {"s": "x" * BIG}}}, 413, "too_large", "4096"),
        (  # no Content-Length: the size is counted as the body is read
            "/v1/publish/health/x",
            {"content": iter([b'{"type": "Custom", "data": {"s": "', b"x" * BIG, b'"}}'])},
            413, "too_large", "4096",
        ),
        ("/v1/publish/health/x?durable=true", {"json": ok}, 400, "not_journaled", "ex_esdb_health is not journaled"),
        ("/v1/publish/health/x?durable=maybe", {"json": ok}, 400, "bad_request", "durable"),
        ("/v1/publish/health/x?sync=1", {"json": ok}, 400, "bad_request", "'sync'"),
    ]  # fmt: skip


def test_bad_publishes_get_a_one_line_json_error_and_send_nothing(broker: BrokerProcess, serve: Any) -> None:
    served = serve(broker, WebSettings(max_message_size=BIG))
    bad = _bad_requests()
    with (
        httpx.Client(base_url=served.url, timeout=10) as http,
        Subscriber(broker.backend, control=broker.control) as sub,
    ):
        sub.subscribe()  # every instance
        before = _messages(broker)
        for path, request, status, code, needle in bad:
            response = http.post(path, **request)
            assert response.status_code == status, (path, response.text)
            assert response.headers["content-type"].startswith("application/json")
            assert response.text.count("\n") == 1 and response.text.endswith("\n"), response.text
            error = response.json()["error"]
            assert error["code"] == code and needle in error["message"], (path, error)
        assert http.get("/v1/publish/health/x").status_code == 405  # still a JSON error, not a page
        # nothing was sent: the first message the subscriber gets is this one, the counts moved by it alone
        sentinel = http.post("/v1/publish/audit/sentinel", json={"type": "Custom", "data": {"n": 0}})
        assert sentinel.status_code == 200
        first = sub.recv(timeout=5)
        assert (first.topic, first.data) == ("ex_esdb_audit/sentinel", {"n": 0})
    after: dict[str, int] = {}

    def counted() -> bool:
        after.update(_messages(broker))
        return after["ex_esdb_audit"] == before["ex_esdb_audit"] + 1

    assert wait_until(counted, 5)
    for instance in ("ex_esdb_health", "ex_esdb_alerts"):
        assert after[instance] == before[instance], instance
    assert served.counters["http_publish_rejected"] == len(bad)
    assert served.counters["http_publishes"] == 1


def _readme_http_examples() -> tuple[str, str, str, list[str]]:
    start = README.index("http examples: run by tests/test_http_publish.py")
    block = re.search(r"```sh\n(.*?)```", README[start:], re.DOTALL)
    answer = re.search(r"```\n(.*?)```", README[start + (block.end() if block else 0) :], re.DOTALL)
    assert block and answer
    stream_cmd, publish_cmd = [line for line in block.group(1).splitlines() if line.strip()]
    rest = README[start + block.end() + answer.end() :]
    printed = re.search(r"```\n(.*?)```", rest, re.DOTALL)
    assert printed
    return stream_cmd, publish_cmd, answer.group(1), printed.group(1).splitlines()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.timeout(60)
def test_readme_curl_examples_stream_and_publish(broker: BrokerProcess, serve: Any) -> None:
    served = serve(broker)
    stream_cmd, publish_cmd, answer, printed = _readme_http_examples()
    assert stream_cmd.startswith("curl -N ") and publish_cmd.startswith("curl -X POST ")

    def real(command: str) -> list[str]:
        return [served.url + arg[len("http://127.0.0.1:7180") :] if arg.startswith("http://") else arg
                for arg in shlex.split(command)]  # fmt: skip

    stream = subprocess.Popen(
        [*real(stream_cmd), "--silent", "--max-time", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert stream.stdout is not None
        out = Lines(stream.stdout)
        assert out.wait(r"^id: ", 15), "the stream did not start"
        done = subprocess.run(real(publish_cmd), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == json.loads(answer)
        assert out.wait(r"^data: ", 15), "\n".join(out.lines)
    finally:
        stream.terminate()
        stream.wait(timeout=10)
    out.join()
    assert out.lines[: len(printed) - 1] == printed[:-1]  # the comment and the ids, exactly
    shown, got = json.loads(printed[-1][len("data: ") :]), json.loads(out.lines[len(printed) - 1][len("data: ") :])
    for key in ("topic", "instance", "type", "seq", "corr", "data"):
        assert got[key] == shown[key], key
    assert set(got) == set(shown)
