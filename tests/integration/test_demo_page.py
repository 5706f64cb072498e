"""The demo's page in a real browser: ``wsproxy demo`` as users start it, and Chromium.

``wsproxy demo`` runs as a subprocess on ports the OS picks (``--port 0``; readiness and
the bound port come from its banner). Its echo backends answer a plain ``GET /`` with a
page that opens a WebSocket to its own origin; ``demo_page.mjs`` loads that page from the
proxy, waits for the socket to open, sends a message with the page's form and waits for
the echo. The page must have come through the proxy (``Via``), from one of the demo's
backends, and the socket must have gone to the proxy too. The demo is then stopped with
SIGINT by its PID and must exit 0. Skips when Chromium, node or playwright-core is
missing (``browser.missing()``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration import browser
from tests.integration.proxy_process import started
from tests.integration.test_process import DEMO_URL

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).with_name("demo_page.mjs")
MESSAGE = "hello from the demo page"


@pytest.mark.timeout(90)
async def test_the_demo_page_comes_through_the_proxy_and_echoes_over_its_websocket() -> None:
    browser.skip_unless_available()
    async with started("demo", "--port", "0", "--admin-port", "0") as demo:
        port = int((await demo.wait_for_line(DEMO_URL)).group(2))
        origin = f"http://127.0.0.1:{port}"

        result = await browser.run_script(SCRIPT, [f"--url={origin}/", f"--message={MESSAGE}"])

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

    # Its socket: one, to the proxy's own origin, open, and the message came back.
    assert result["sockets"] == [f"ws://127.0.0.1:{port}/"]
    lines = [(line["kind"], line["text"]) for line in result["lines"]]
    assert lines == [
        ("sys", f"open ws://127.0.0.1:{port}/"),
        ("out", f"> {MESSAGE}"),
        ("in", f"< {MESSAGE}"),
    ], result["lines"]
    assert result["page_errors"] == []
    assert result["console_errors"] == [], result  # the page names its (empty) icon
