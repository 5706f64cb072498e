"""The admin page in a real browser: headless Chromium driven by playwright-core.

The proxy runs in this event loop in front of two backends with a few connections open;
``admin_page.mjs`` (a node script) loads ``GET /``, sees both backends, clicks Drain on
one and waits for its state to read "draining". The drain is then checked through the
API itself. Draining the whole proxy asks for confirmation first (cancelling posts
nothing), and the page then counts the upgrades refused while the proxy is drained.
Skips when Chromium, node or playwright-core is missing (``browser.missing()``).
``WSPROXY_ADMIN_SCREENSHOT=/tmp/page.png`` keeps a screenshot.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from tests.integration import browser
from tests.integration.peers import backend, make_config, running_proxy

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).with_name("admin_page.mjs")
CONNECTIONS = 4


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    """A blocking GET (run it in a thread: the proxy shares this test's event loop)."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


async def _drive_page(admin_url: str, backend_name: str, token: str | None) -> dict[str, Any]:
    args = [f"--url={admin_url}/", f"--backend={backend_name}"]
    if token is not None:
        args.append(f"--token={token}")
    if screenshot := os.environ.get("WSPROXY_ADMIN_SCREENSHOT"):
        args.append(f"--screenshot={screenshot}")
    return await browser.run_script(SCRIPT, args)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("token", [None, "t0k"], ids=["open", "token"])
async def test_page_shows_two_backends_and_drains_one(token: str | None) -> None:
    browser.skip_unless_available()
    admin = {"token": token} if token is not None else {}
    async with (
        backend("b1") as b1,
        backend("b2") as b2,
        running_proxy(make_config([b1, b2], admin=admin)) as ctx,
        AsyncExitStack() as stack,
    ):
        host, port = ctx.addresses[0]
        for i in range(CONNECTIONS):
            ws = await stack.enter_async_context(connect(f"ws://{host}:{port}/c{i}"))
            await ws.send(f"hello {i}")
            assert await ws.recv() == f"hello {i}"
        assert ctx.admin_address is not None
        admin_host, admin_port = ctx.admin_address
        admin_url = f"http://{admin_host}:{admin_port}"
        if token is not None:
            status, _ = await anyio.to_thread.run_sync(_get, f"{admin_url}/backends")
            assert status == 401  # so the page can only have worked with the token

        result = await _drive_page(admin_url, "b1", token)

        assert result["title"] == "wsproxy admin"
        assert result.get("token_form_shown", False) is (token is not None)
        before = {b["name"]: b for b in result["backends_before"]}
        assert set(before) == {"b1", "b2"}
        assert {b["state"] for b in before.values()} == {"healthy"}
        assert sum(b["active"] for b in before.values()) == CONNECTIONS
        assert {b["button"] for b in before.values()} == {"Drain"}
        after = {b["name"]: b for b in result["backends_after"]}
        assert after["b1"]["state"] == "draining"
        assert after["b1"]["button"] == "Undrain"
        assert after["b2"]["state"] == "healthy"
        assert result["proxy_state_before"] == result["proxy_state_after"] == "ready"
        assert "b1" in result["drain_text"]
        assert result["error_text"] == ""
        assert result["requests_elsewhere"] == []  # self-contained: no CDN, no fonts
        assert result["page_errors"] == []
        # Chromium logs every non-2xx answer; the token variant starts with 401s.
        expected = "the server responded with a status of 401"
        assert [e for e in result["console_errors"]
                if token is None or expected not in e] == []

        # ...and the API itself says so.
        status, body = await anyio.to_thread.run_sync(_get, f"{admin_url}/backends", token)
        assert status == 200
        states = {b["name"]: b["draining"] for b in body["backends"]}
        assert states == {"b1": True, "b2": False}


@pytest.mark.timeout(90)
async def test_page_asks_before_draining_the_proxy_and_counts_refused_upgrades() -> None:
    browser.skip_unless_available()
    async with (
        backend("b1") as b1,
        backend("b2") as b2,
        running_proxy(make_config([b1, b2])) as ctx,
        AsyncExitStack() as stack,
    ):
        host, port = ctx.addresses[0]
        for i in range(CONNECTIONS):
            ws = await stack.enter_async_context(connect(f"ws://{host}:{port}/c{i}"))
            await ws.send(f"hello {i}")
            assert await ws.recv() == f"hello {i}"
        assert ctx.admin_address is not None
        admin_host, admin_port = ctx.admin_address
        admin_url = f"http://{admin_host}:{admin_port}"
        refuse = 3
        result = await browser.run_script(SCRIPT, [
            # No backend drain first: its closes (over drain.spread) would change the
            # count of open connections the confirmation names.
            f"--url={admin_url}/", f"--proxy-url=http://{host}:{port}/",
            f"--refuse={refuse}",
            *([f"--screenshot={shot}"] if (shot := os.environ.get("WSPROXY_ADMIN_SCREENSHOT"))
              else []),
        ])

        # Cancelled: no POST /drain went out, and the proxy stayed ready.
        assert result["refused_hidden_before"] is True
        assert "Drain the whole proxy?" in result["confirm_text"]
        assert f"all {CONNECTIONS} open connections" in result["confirm_text"]
        assert result["toggle_disabled_while_asking"] is True
        assert result["posts_after_cancel"] == []
        assert result["readyz_after_cancel"] == 200
        assert result["proxy_state_after_cancel"] == "ready"
        # Confirmed: one POST /drain, and the proxy is drained.
        assert result["posts_after_confirm"] == ["/drain"]
        assert result["readyz_after_confirm"] == 503
        assert not ctx.ready
        # The refused upgrades, as the page shows them and as GET /drain says.
        assert result["upgrade_statuses"].count(503) == refuse
        assert result["refused_visible"] is True
        assert result["refused_text"] == f"{refuse} upgrades refused since the drain began"
        status, body = await anyio.to_thread.run_sync(_get, f"{admin_url}/drain")
        assert status == 200
        assert body["refused_upgrades"] == refuse
        assert result["error_text"] == ""
        assert result["page_errors"] == []
        # Chromium logs every non-2xx answer: /readyz is 503 once the proxy is drained.
        expected = "the server responded with a status of 503"
        assert [e for e in result["console_errors"] if expected not in e] == []
