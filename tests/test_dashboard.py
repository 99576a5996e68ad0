"""The dashboard at ``/`` in a real browser (Debian's chromium, headless, driven by selenium
through chromium-driver) against a real broker; its static routes over plain HTTP; and the demo's
where-to-look line.

The web application runs standalone in the test (``WebServer`` in a thread, a client of the
broker's public endpoints); the messages come from the SDK through the broker.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from exesdb_sdk import ControlClient, Publisher
from exesdb_sdk import broadcast as bus
from exesdb_sdk.messages import AlertAck, BrokerMetrics, NodeHealth, SubscriptionHealth, SystemAlert
from exesdb_web import dashboard
from exesdb_web.access import BusAccess
from exesdb_web.server import WebServer

from .conftest import BrokerProcess, StartBroker, wait_until
from .peers import free_port

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "web" / "exesdb_web" / "static"
ARTIFACTS = ROOT / ".artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
DEADLINE = 10.0
"""Seconds the page has to show a message (it paints within 0.2 s, polls stats every 2 s)."""


@pytest.fixture
def web_server(broker: BrokerProcess) -> Iterator[WebServer]:
    """The application on a free 127.0.0.1 port, a client of ``broker``."""
    server = WebServer(BusAccess(broker.frontend, broker.backend, broker.control), "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, name="test-web", daemon=True)
    thread.start()
    assert server.ready.wait(10), "the web server did not start"
    assert server.error is None, server.error
    yield server
    server.stop()
    thread.join(10)
    assert not thread.is_alive(), "the web server did not stop"


# --------------------------------------------------------------------------- plain HTTP


def test_the_page_and_its_assets_are_served_from_the_package(web_server: WebServer) -> None:
    with httpx.Client(base_url=web_server.url, timeout=5) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
            got = http.get(asset)
            assert got.status_code == 200, asset
            assert got.content == (STATIC / asset.removeprefix("/static/")).read_bytes()
        assert http.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")
        assert http.head("/").status_code == 200

        for bad, status in [
            ("/static/nope.js", 404),
            ("/static/index.html", 404),  # only the listed assets, not every file of the directory
            ("/static/..%2fapp.py", 404),
            ("/static/%2e%2e%2f__init__.py", 404),
        ]:
            got = http.get(bad)
            assert got.status_code == status, bad
            assert got.text.count("\n") == 1 and got.headers["content-type"].startswith("application/json"), got.text
            assert "error" in got.json()
            assert "import" not in got.text  # no source served
        posted = http.post("/", content=b"x")
        assert posted.status_code == 405 and posted.json()["error"]["code"] == "method_not_allowed"


def test_the_assets_load_nothing_from_elsewhere_and_write_no_markup() -> None:
    names = {path.name for path in STATIC.iterdir()}
    assert names == dashboard.ASSETS | {"index.html"}
    for path in STATIC.iterdir():
        source = path.read_text()
        # the SVG namespace is a name, not a fetch
        urls = set(re.findall(r"https?://[^\s\"')]+", source)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{path.name} refers to {urls}"
        assert "@import" not in source and "<script>" not in source, path.name
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,1700",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, what: str, predicate: Any, timeout: float = DEADLINE) -> Any:
    """``predicate(driver)`` once it is truthy (within ``timeout``); fails naming ``what`` and the page."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d: Any) -> Any:
        try:
            return predicate(d)
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(check)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        raise AssertionError(f"the page did not show {what} within {timeout} s; it shows:\n{body}") from None


def _text(driver: Any, selector: str) -> str:
    text: str = driver.find_element("css selector", selector).text
    return text


def _wait_text(driver: Any, what: str, selector: str, *parts: str) -> str:
    """The text of ``selector`` once it has every one of ``parts``, read afresh each time: the
    page redraws a card or a row as news comes, so an element found once may be replaced."""

    def complete(d: Any) -> str | None:
        text = _text(d, selector)
        return text if all(part in text for part in parts) else None

    text: str = _wait(driver, what, complete)
    return text


def _console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.timeout(60)
def test_the_dashboard_shows_the_bus_live_in_a_real_browser(
    browser: Any, broker: BrokerProcess, web_server: WebServer
) -> None:
    _console_errors(browser)  # what earlier pages logged is theirs
    browser.get(web_server.url + "/")
    _wait(browser, "a live stream", lambda d: d.find_element("tag name", "body").get_attribute("data-stream") == "live")
    _wait(
        browser,
        "the instances from /v1/stats",
        lambda d: d.find_elements("css selector", "#instances tr[data-instance]"),
    )
    _wait(browser, "a healthy quiet broker", lambda d: _text(d, "#state") == "HEALTHY")

    xss = '<img src=x id="pwned" onerror="document.title=1">'
    alert = SystemAlert(severity="critical", title="Disk full on node-7", description="/var at 99%", node="node-7")
    with Publisher(broker.frontend) as pub:
        pub.publish_message(NodeHealth(node="node-7", status="unhealthy", load_avg=3.5, memory_usage=0.91))
        pub.publish_message(NodeHealth(node=xss, status="healthy"))
        pub.publish_message(
            SubscriptionHealth(
                store="orders",
                subscription="orders:projection",
                status="failed",
                event="circuit_breaker_opened",
                error_count=3,
                last_error="projection database unavailable",
            )
        )
        pub.publish_message(alert)
        bus.broadcast_store_events(
            "orders", "$all", [{"event_type": "OrderPlaced", "stream_id": "o-7", "version": 7}], publisher=pub
        )

        _wait_text(browser, "node-7 unhealthy", '[data-node="node-7"]', "unhealthy", "load 3.50", "mem 91%")
        _wait_text(
            browser,
            "the failed subscription",
            '[data-store="orders"] [data-subscription="orders:projection"]',
            "failed",
            "breaker open",
            "projection database unavailable",
        )
        item = _wait_text(browser, "the critical alert", '#alerts li[data-severity="critical"]', "Disk full on node-7")
        assert "acknowledged" not in item
        _wait(browser, "the FAILING banner", lambda d: _text(d, "#state") == "FAILING")
        assert browser.find_element("id", "banner").get_attribute("data-state") == "fail"
        reasons = _text(browser, "#reasons")
        assert "node-7" in reasons and "orders:projection" in reasons, reasons

        # bus text is text: the would-be tag is shown as written and never becomes an element
        _wait(
            browser,
            "the odd node name as text",
            lambda d: any(xss == e.text for e in d.find_elements("css selector", ".card .name")),
        )
        assert browser.find_elements("id", "pwned") == [] and browser.title == "exesdb dashboard"

        # every broker heard of, from its BrokerMetrics (which cross a federation as any message does)
        figures = {"uptime": 60.0, "messages": 9, "envelopes": 9, "bytes": 900, "malformed": 0, "publishers": 2}
        pub.publish_message(BrokerMetrics(node="broker-b", rate=12.5, subscribers=3, **figures))
        _wait(browser, "broker-b in the brokers list",
              lambda d: "12.5 msg/s · 3 sub · 2 pub" in _text(d, "#internals"))  # fmt: skip
        assert "broker-b" in _text(browser, "#internals")

        pub.publish_message(AlertAck(alert_id=alert.alert_id, acknowledged_by="alice", note="on it"))
        _wait(
            browser,
            "the acknowledgement",
            lambda d: "acknowledged by alice: on it" in _text(d, "#alerts li[data-severity='critical']"),
        )

    # the instance table has the broker's own figures, from the next polls
    with ControlClient(broker.control) as control:
        # the tap counts at idle priority: it may be behind what the page already shows
        assert wait_until(lambda: control.stats()["instances"]["ex_esdb_health"]["messages"] >= 3, 10)
        health = control.stats()["instances"]["ex_esdb_health"]["messages"]
    cells = '#instances tr[data-instance="health"] td'
    _wait(browser, f"{health} health messages", lambda d: d.find_elements("css selector", cells)[3].text == str(health))

    # the tail: every message a line, and its filters
    tail = browser.find_element("id", "tail")
    _wait(browser, "the tail lines", lambda d: len(tail.find_elements("css selector", ".line")) >= 5)
    assert "SystemAlert" in tail.text and "AlertAck" in tail.text
    assert "Events store=orders 1 event (OrderPlaced o-7 v7)" in tail.text
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "tail-instance")).select_by_visible_text("alerts")
    shown = [line for line in tail.find_elements("css selector", ".line") if line.is_displayed()]
    assert shown and all(line.get_attribute("data-instance") == "alerts" for line in shown)
    browser.find_element("id", "tail-topic").send_keys("acks")
    shown = [line for line in tail.find_elements("css selector", ".line") if line.is_displayed()]
    assert [line.get_attribute("data-topic") for line in shown] == ["ex_esdb_alerts/acks"]

    assert _console_errors(browser) == []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    print(f"dashboard screenshot: {shot}")

    # the broker goes away: the banner says so, from across the room
    broker.stop()
    _wait(
        browser,
        "the broker unreachable",
        lambda d: "stats:" in _text(d, "#reasons") and _text(d, "#state") == "FAILING",
    )


class _ScriptedStream:
    """The page's assets with a ``/v1/stream`` that sends what a later server may send: a gap
    marker, an event name the page does not know, unreadable data; and a ``/v1/stats`` that
    fails with the one-line JSON error."""

    EVENTS = (
        ": exesdb stream\n\n"
        'event: gap\ndata: {"missed": 7}\n\n'
        'event: future-thing\ndata: {"type": "NodeHealth", "data": {"node": "ghost", "status": "unhealthy"}}\n\n'
        "data: this is not json\n\n"
        'data: {"topic":"ex_esdb_health/node_health:n1","instance":"ex_esdb_health","type":"NodeHealth",'
        '"ts":"2025-01-01T00:00:00.000000Z","src":"t","seq":1,"corr":null,"data":{"node":"n1","status":"healthy"}}\n\n'
    )

    def __init__(self) -> None:
        self.url = ""
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(self.EVENTS.encode())
        assert self._stop is not None
        await self._stop.wait()
        return response

    async def _stats(self, request: web.Request) -> web.Response:
        from exesdb_web.app import json_error

        return json_error(503, "broker_unavailable", "no reply from tcp://127.0.0.1:1 within 2 s")

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application()
        app.add_routes(dashboard.routes)
        app.router.add_get("/v1/stream", self._stream)
        app.router.add_get("/v1/stats", self._stats)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


@pytest.mark.timeout(30)
@pytest.mark.timeout(60)
def test_the_broker_s_own_dashboard_shows_its_federation_state(browser: Any, start_broker: StartBroker) -> None:
    # the broker's own HTTP surface; its federation's NATS server is not there (a free, closed port)
    broker = start_broker("--federation-nats", f"nats://127.0.0.1:{free_port()}", http=True)
    assert broker.http is not None
    browser.get(broker.http + "/")
    _wait(browser, "the federation's state", lambda d: "reconnecting" in _text(d, "#internals"))
    _wait(browser, "a warning banner", lambda d: "federation reconnecting" in _text(d, "#reasons"))
    assert browser.find_element("id", "banner").get_attribute("data-state") == "warn"


def test_the_page_shows_gaps_skips_what_it_does_not_know_and_names_a_failing_stats(browser: Any) -> None:
    scripted = _ScriptedStream()
    scripted.thread.start()
    assert scripted.ready.wait(10)
    try:
        _console_errors(browser)  # what earlier pages logged is theirs
        browser.get(scripted.url + "/")
        _wait(browser, "the gap line", lambda d: "7 message(s) missed" in _text(d, "#tail"))
        _wait(browser, "the message after the bad ones", lambda d: d.find_elements("css selector", '[data-node="n1"]'))
        assert browser.find_elements("css selector", '[data-node="ghost"]') == []  # unknown event names are skipped
        internals = _text(browser, "#internals")
        assert re.search(r"stream gaps\s+1\b", internals) and re.search(r"missed in gaps\s+7\b", internals)
        assert re.search(r"unreadable\s+1\b", internals), internals
        _wait(browser, "the stats error", lambda d: "no reply from tcp://127.0.0.1:1" in _text(d, "#reasons"))
        assert _text(browser, "#state") == "FAILING"
        errors = _console_errors(browser)  # the refused /v1/stats is logged by the browser itself; nothing else
        assert all("/v1/stats" in error for error in errors), errors
    finally:
        scripted.stop()


# --------------------------------------------------------------------------- exesdb demo


def test_the_demo_line_says_where_to_look_only_when_the_broker_serves_http() -> None:
    from exesdb_cli.demo import watch_line

    assert watch_line({"ok": True, "http": "http://127.0.0.1:7180"}) == "watch it live: http://127.0.0.1:7180/"
    assert watch_line({"ok": True, "http": None}) is None
    assert watch_line({"ok": True}) is None


@pytest.mark.timeout(40)
def test_the_demo_prints_the_dashboard_url_its_broker_reports(clean_env: dict[str, str], tmp_path: Path) -> None:
    exesdb = str(Path(sys.executable).with_name("exesdb"))
    with (
        (tmp_path / "stderr").open("w+") as errors,
        subprocess.Popen(
            [exesdb, "demo", "--duration", "1.5"],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**clean_env, "PYTHONUNBUFFERED": "1"},  # its first line while it runs, not at its exit
        ) as demo,
    ):
        try:
            assert demo.stdout is not None
            first = demo.stdout.readline()
            control = re.search(r"control=(\S+)", first)
            assert control, first
            with ControlClient(control.group(1), timeout=5) as client:
                ping = client.ping()
            # the rest through the same reader: its buffer may already hold the next lines
            # (communicate() would read past them, from the pipe itself)
            out = demo.stdout.read()
            demo.wait(30)
        finally:
            if demo.poll() is None:
                demo.kill()
        errors.seek(0)
        assert demo.returncode == 0, errors.read()
    lines = out.splitlines()
    if ping.get("http"):
        assert lines[0] == f"watch it live: {ping['http'].rstrip('/')}/", lines[:2]
    else:
        assert not any("watch it live" in line for line in lines)
