"""The demo's page in a real browser: ``wsproxy demo`` as users start it, and Chromium.

``wsproxy demo`` runs as a subprocess on ports the OS picks (``--port 0``; readiness and
the bound ports come from its banner). Its echo backends answer a plain ``GET /`` with a
page that opens a WebSocket to its own origin with clients/js (``/wsproxy-client.js``,
served by the backend from the package); ``demo_page.mjs`` loads that page from the
proxy, waits for the socket to name its backend (the echo backends do when the socket
asks, ``?announce=1``), sends a message with the page's form and waits for the echo.
The page must have come through the proxy (``Via``), from one of the demo's backends,
and the socket must have gone to the proxy too. Then the socket's backend is drained
through the admin API: the page must see 1012 with the proxy's hint, reconnect no
earlier than the hint, land on the other backend and echo again. The demo is then
stopped with SIGINT by its PID and must exit 0. Skips when Chromium, node or
playwright-core is missing (``browser.missing()``).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.integration import browser
from tests.integration.proxy_process import started
from tests.integration.test_process import DEMO_ADMIN, DEMO_URL

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).with_name("demo_page.mjs")
MESSAGE = "hello from the demo page"


@pytest.mark.timeout(90)
async def test_the_demo_page_comes_through_the_proxy_and_echoes_over_its_websocket() -> None:
    browser.skip_unless_available()
    async with started("demo", "--port", "0", "--admin-port", "0") as demo:
        port = int((await demo.wait_for_line(DEMO_URL)).group(2))
        admin = int((await demo.wait_for_line(DEMO_ADMIN)).group(1))
        origin = f"http://127.0.0.1:{port}"

        result = await browser.run_script(SCRIPT, [
            f"--url={origin}/", f"--admin=http://127.0.0.1:{admin}", f"--message={MESSAGE}"])

        os.kill(demo.pid, signal.SIGINT)
        assert await demo.wait() == 0
        assert "Traceback" not in await demo.stderr()

    # The page: relayed by the proxy from one of the demo's echo backends.
    assert result["status"] == 200
    assert "1.1 wsproxy" in result["headers"].get("via", ""), result["headers"]
    assert result["headers"]["content-type"].startswith("text/html")
    assert result["title"] == "wsproxy demo"
    assert result["backend"] in {"echo-1", "echo-2"}
    assert result["requests_elsewhere"] == []  # self-contained: no CDN, no fonts

    # Its socket: to the proxy's own origin, asking its backend to name itself; the page
    # shows the socket's backend (which need not be the page's).
    socket_url = f"ws://127.0.0.1:{port}/?announce=1"
    assert result["socket_backend"] in {"echo-1", "echo-2"}
    other = ({"echo-1", "echo-2"} - {result["socket_backend"]}).pop()
    assert result["sockets"] == [socket_url, socket_url]

    # The drain of that backend closed the socket (1012, the proxy's hint), and the page
    # reconnected after the hint, no earlier, to the other backend.
    assert result["drain_status"] == 200
    assert result["socket_backend_after"] == other
    events = result["drain_events"]
    assert [e["type"] for e in events] == ["close", "reconnecting", "open"], events
    close, reconnecting, _ = events
    hint = re.fullmatch(r"backend draining; retry-after-ms=(\d+)", close["reason"])
    assert close["code"] == 1012, close
    assert hint is not None, close
    assert close["retryInMs"] == reconnecting["delayMs"] == int(hint.group(1))
    assert reconnecting["hinted"] is True
    first, second = result["made"]
    assert second["made"] - first["closed"] >= int(hint.group(1)), (result["made"], close)

    lines = [(line["kind"], line["text"]) for line in result["lines"]]
    assert lines == [
        ("sys", f"open {socket_url}"),
        ("sys", f"socket on {result['socket_backend']}"),
        ("out", f"> {MESSAGE}"),
        ("in", f"< {MESSAGE}"),
        ("err", f"closed 1012 ({close['reason']})"),
        ("sys", f"reconnecting in {hint.group(1)} ms (the server's hint)"),
        ("sys", f"open {socket_url}"),
        ("sys", f"socket on {other}"),
        ("out", f"> {MESSAGE}"),
        ("in", f"< {MESSAGE}"),
    ], result["lines"]
    assert result["page_errors"] == []
    assert result["console_errors"] == [], result  # the page names its (empty) icon
