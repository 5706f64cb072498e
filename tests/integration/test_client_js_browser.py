"""clients/js in headless Chromium against ``wsproxy run`` (issue 17).

Two proxies run as subprocesses (``wsproxy run``), each in front of the built-in echo
server (in this process):

- ``auth``: JWT auth (HS256, ``close_on_expiry``, a 200 ms sweep; the token travels as
  the ``bearer.`` subprotocol, the client's default);
- ``limit``: ``limits.max_connections: 1`` with ``admission.reject_with: close``.

``client_js_browser.mjs`` loads a page of the auth proxy's origin (``/healthz``), gets
clients/js into it (``/__wsproxy-client.js``, routed by the browser to the file), and
checks in the page: an expired token is refreshed through the ``token`` hook and the
client reconnects and echoes; a revocation (the admin API closes the subject's
connections: 1008 "connection revoked") stops it for good; an admission refusal is
seen as 1013 with the hint and retried no earlier than the hint. The drain of a
backend (1012 and its hint) is test_demo_page.py's, through ``wsproxy demo``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import jwt
import pytest

from tests.integration import browser
from tests.integration.proxy_process import Running, proxy_process
from wsproxy.echo import start_echo_server

pytestmark = pytest.mark.anyio

SCRIPT: Final = Path(__file__).with_name("client_js_browser.mjs")
CLIENT_JS: Final = Path(__file__).resolve().parents[2] / "clients" / "js" / "wsproxy-client.js"
SECRET: Final = "a-test-secret-of-at-least-32-bytes!!"
#: The short-lived token's life: enough for its upgrade and first echo on a loaded machine.
SHORT_LIFE: Final = 3


def token(subject: str, lifetime: int) -> str:
    """A token valid for at least *lifetime* seconds from now (``exp`` rounded up)."""
    now = time.time()
    return jwt.encode({"sub": subject, "iat": int(now), "exp": math.ceil(now) + lifetime},
                      SECRET, "HS256")


@asynccontextmanager
async def proxy(directory: Path, **settings: Any) -> AsyncIterator[tuple[Running, str]]:
    """``wsproxy run`` in front of an echo server: the process and its admin URL."""
    echo = await start_echo_server(name="echo")
    port = echo.sockets[0].getsockname()[1]
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "backends": [{"name": "echo", "url": f"ws://127.0.0.1:{port}"}],
        "logging": {"level": "info"},
        **settings,
    }
    try:
        async with proxy_process(config, directory) as running:
            admin = (await running.wait_for_event("admin.listening"))["address"]
            yield running, f"http://{admin}"
    finally:
        echo.close()


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


@pytest.mark.timeout(120)
async def test_the_js_client_in_a_browser_refreshes_stops_and_honours_a_refusal(
    tmp_path: Path,
) -> None:
    browser.skip_unless_available()
    subject = "revoked-subject"
    # The expiring tokens are made in the page when its hook is asked (a token made
    # here could expire before a slow browser even starts).
    tokens = {"secret": SECRET, "short_life": SHORT_LIFE, "revoke": token(subject, 600),
              "subject": subject}
    (tmp_path / "auth").mkdir()
    (tmp_path / "limit").mkdir()
    async with AsyncExitStack() as stack:
        auth, admin = await stack.enter_async_context(proxy(
            tmp_path / "auth",
            auth={"type": "jwt", "close_on_expiry": True,
                  "jwt": {"algorithms": ["HS256"], "secret": SECRET, "leeway": 0}},
            heartbeat={"interval": "200ms", "timeout": "10s"},
        ))
        limit, _ = await stack.enter_async_context(proxy(
            tmp_path / "limit",
            limits={"max_connections": 1},
            admission={"reject_with": "close"},
        ))
        result = await browser.run_script(SCRIPT, [
            f"--page=http://127.0.0.1:{auth.port}/healthz",
            f"--module-file={CLIENT_JS}",
            f"--auth-ws={auth.url}/",
            f"--admin={admin}",
            f"--tokens={json.dumps(tokens)}",
            f"--limit-ws={limit.url}/",
        ])
    assert result["page_errors"] == []

    # An expired token: 1008 "token expired", the hook asked again, a new socket with
    # the new token (the bearer. subprotocol), the echo again.
    expiry = result["expiry"]
    closes = of(expiry["events"], "close")
    assert [(c["code"], c["reason"]) for c in closes] == [(1008, "token expired")]
    assert expiry["tokenRefresh"] is True
    assert len(expiry["tokens"]) == 2
    assert [s["protocols"] for s in expiry["sockets"]] == [
        [f"bearer.{t}"] for t in expiry["tokens"]]
    claims = [jwt.decode(t, SECRET, ["HS256"], options={"verify_exp": False})
              for t in expiry["tokens"]]
    assert claims[1]["exp"] - claims[0]["exp"] > 500  # the refresh is a new, lasting token
    assert (expiry["before"], expiry["after"]) == ("before expiry", "after refresh")
    assert len(of(expiry["events"], "open")) == 2

    # A revocation: 1008 "connection revoked", terminal, one socket, one token asked for.
    assert result["revoke_status"] == 200
    revoke = result["revoke"]
    assert revoke["echo"] == "before revocation"
    [closed] = of(revoke["events"], "close")
    assert (closed["code"], closed["reason"], closed["terminal"]) == (
        1008, "connection revoked", True)
    [terminal] = of(revoke["events"], "terminal")
    assert (terminal["code"], terminal["requested"]) == (1008, False)
    assert of(revoke["events"], "reconnecting") == []
    assert len(revoke["sockets"]) == 1
    assert revoke["calls"] == 1
    assert revoke["readyState"] == 3
    assert revoke["sent_after"] is False

    # An admission refusal under reject_with: close: the proxy's 101, then 1013 with a
    # hint, which the page can read; the retry came no earlier than the hint.
    refused = result["refused"]
    assert refused["held"] == "holding the slot"
    kinds = [e["type"] for e in refused["events"] if e["type"] != "message"]
    assert kinds == ["open", "close", "reconnecting", "open", "close", "terminal"], kinds
    first_close = of(refused["events"], "close")[0]
    assert first_close["code"] == 1013
    hint = re.fullmatch(r"try again later; retry-after-ms=(\d+)", first_close["reason"])
    assert hint is not None, first_close
    [reconnecting] = of(refused["events"], "reconnecting")
    assert reconnecting["hinted"] is True
    assert reconnecting["delayMs"] == first_close["retryInMs"] == int(hint.group(1))
    first, second = refused["sockets"]
    assert second["made"] - first["closed"] >= int(hint.group(1)), refused["sockets"]
    assert refused["echo"] == "after the refusal"
