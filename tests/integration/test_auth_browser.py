"""A real browser authenticates to the proxy: headless Chromium driven by playwright-core.

Browsers cannot put an Authorization header on a WebSocket, so the two ways a page can
carry a token are the subprotocol offer (``new WebSocket(url, ["bearer." + token])``)
and a cookie. Two proxies (``auth.type: api_key``) sit in front of one echo backend:
one takes the token from the subprotocol, the other from the cookie ``session`` and
accepts only the Origin of page server A. Test pages are served by plain HTTP servers on
127.0.0.1 (A, and B as a foreign origin); cookies are per host, not per port, so the
cookie A sets is sent to the proxy on 127.0.0.1 as well. ``auth_browser.mjs`` loads each
page in its own browser context and reports what the page showed.

Skips when Chromium, node or playwright-core is missing (``browser.missing()``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.integration import browser
from tests.integration.peers import backend, make_config, running_proxy

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).with_name("auth_browser.mjs")

SUB_SUBJECT = "browser-subprotocol"
COOKIE_SUBJECT = "browser-cookie"

# The page: opens one WebSocket, sends a message, shows the echo and ws.protocol, closes.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsproxy auth</title>
<link rel="icon" href="data:,"></head>
<body>
<p>protocol: <span id="protocol"></span></p>
<p>echo: <span id="echo"></span></p>
<div id="out"></div>
<script>
const out = document.getElementById("out");
const ws = new WebSocket(%(url)s, %(protocols)s);
ws.onopen = () => {
  out.dataset.opened = "1";
  document.getElementById("protocol").textContent = ws.protocol;
  ws.send(%(message)s);
};
ws.onmessage = (event) => {
  document.getElementById("echo").textContent = event.data;
  ws.close(1000);
};
ws.onerror = () => { out.dataset.error = "1"; };
ws.onclose = (event) => { out.dataset.code = String(event.code); out.dataset.done = "1"; };
</script>
</body></html>
"""


def page(url: str, protocols: list[str], message: str) -> bytes:
    return (
        PAGE
        % {
            "url": json.dumps(url),
            "protocols": json.dumps(protocols),
            "message": json.dumps(message),
        }
    ).encode()


def login_page(token: str) -> tuple[bytes, list[tuple[str, str]]]:
    return (
        b"<!doctype html><title>login</title><link rel=icon href='data:,'>logged in",
        [("Set-Cookie", f"session={token}; Path=/; SameSite=Lax")],
    )


@dataclass
class PageServer:
    """A plain HTTP server on 127.0.0.1 serving ``pages`` (path -> body, extra headers)."""

    port: int
    pages: dict[str, tuple[bytes, list[tuple[str, str]]]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def page_server() -> Iterator[PageServer]:
    info: PageServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            info.requests.append((self.path, dict(self.headers.items())))
            body, headers = info.pages.get(self.path, (b"not found", []))
            self.send_response(200 if self.path in info.pages else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    info = PageServer(port=server.server_address[1])
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield info
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def _run_browser(scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    result = await browser.run_script(SCRIPT, stdin=json.dumps(scenarios).encode())
    scenarios_seen: dict[str, Any] = result["scenarios"]
    return scenarios_seen


def _handshake_refused(seen: dict[str, Any], status: int) -> bool:
    """Chromium logs why a WebSocket handshake was refused on the console: the status,
    or for a 401 with ``WWW-Authenticate`` that it has no credentials to answer it."""
    expected = (
        "HTTP Authentication failed; no valid credentials available"
        if status == 401
        else f"Unexpected response code: {status}"
    )
    return any(expected in line for line in seen["console_errors"] + seen["socket_errors"])


@pytest.mark.timeout(90)
async def test_a_browser_authenticates_with_a_subprotocol_token_and_with_a_cookie(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    browser.skip_unless_available()
    # Keys made here, never committed; hex keeps them valid as subprotocol tokens.
    sub_key, cookie_key, wrong_key = (secrets.token_hex(16) for _ in range(3))
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        "".join(
            f"- {{sha256: {hashlib.sha256(key.encode()).hexdigest()}, subject: {subject}}}\n"
            for key, subject in ((sub_key, SUB_SUBJECT), (cookie_key, COOKIE_SUBJECT))
        )
    )
    api_key = {
        "type": "api_key",
        "api_key": {"keys_file": str(keys_file)},
        "subprotocol_prefix": "bearer.",
    }
    attempts: list[Any] = []

    def seen(connection: object, request: Any) -> None:
        attempts.append(request)  # every handshake the backend is sent, even refused ones

    with capture_logs() as logs, page_server() as site_a, page_server() as site_b:
        async with (
            backend("b1", process_request=seen) as b,
            running_proxy(
                make_config([b], auth={**api_key, "token_from": ["subprotocol"]})
            ) as sub_ctx,
            running_proxy(
                make_config(
                    [b],
                    auth={**api_key, "token_from": ["cookie:session"]},
                    allowed_origins=[site_a.origin],
                )
            ) as cookie_ctx,
        ):
            sub_ws = "ws://{}:{}/chat".format(*sub_ctx.addresses[0])
            cookie_ws = "ws://{}:{}/chat".format(*cookie_ctx.addresses[0])
            site_a.pages.update(
                {
                    "/login": login_page(cookie_key),
                    "/login-wrong": login_page(wrong_key),
                    "/sub-good": (page(sub_ws, [f"bearer.{sub_key}"], "hello sub"), []),
                    "/sub-wrong": (page(sub_ws, [f"bearer.{wrong_key}"], "hello wrong"), []),
                    "/cookie": (page(cookie_ws, [], "hello cookie"), []),
                }
            )
            site_b.pages["/cookie"] = (page(cookie_ws, [], "hello from elsewhere"), [])

            results = await _run_browser(
                [
                    {"name": "sub_good", "url": f"{site_a.origin}/sub-good"},
                    {"name": "sub_wrong", "url": f"{site_a.origin}/sub-wrong"},
                    {
                        "name": "cookie_good",
                        "url": f"{site_a.origin}/cookie",
                        "before": [f"{site_a.origin}/login"],
                    },
                    {
                        "name": "cookie_wrong",
                        "url": f"{site_a.origin}/cookie",
                        "before": [f"{site_a.origin}/login-wrong"],
                    },
                    {
                        "name": "cookie_other_origin",
                        "url": f"{site_b.origin}/cookie",
                        "before": [f"{site_a.origin}/login"],
                    },
                ]
            )

    for name, result in results.items():
        assert result["page_errors"] == [], name

    # Subprotocol: the 101 selected the auth entry (Chromium fails the handshake
    # otherwise), the echo came back, the backend saw the subject and not the token.
    sub = results["sub_good"]
    assert sub["opened"], sub
    assert sub["protocol"] == f"bearer.{sub_key}"
    assert sub["echo"] == "hello sub"
    assert sub["close_code"] == 1000
    assert not sub["error_event"]
    assert sub["console_errors"] == []

    # Cookie: set by page server A for 127.0.0.1, sent to the proxy's port too.
    cookie = results["cookie_good"]
    assert {"name": "session", "domain": "127.0.0.1"} in cookie["cookies"]
    assert cookie["opened"], cookie
    assert cookie["echo"] == "hello cookie"
    assert cookie["protocol"] == ""  # no subprotocol offered, none selected
    assert cookie["close_code"] == 1000
    assert not cookie["error_event"]
    assert cookie["console_errors"] == []

    # A wrong token, either way: the browser's WebSocket fails (error, then 1006), 401.
    for name in ("sub_wrong", "cookie_wrong"):
        failed = results[name]
        assert not failed["opened"], failed
        assert failed["error_event"], failed
        assert failed["close_code"] == 1006
        assert failed["echo"] == ""
        assert _handshake_refused(failed, 401), failed

    # The cookie from a page of another origin (B, not in allowed_origins): 403, although
    # the browser holds the good cookie and sends it to 127.0.0.1 (B itself received it).
    other = results["cookie_other_origin"]
    assert not other["opened"], other
    assert other["error_event"]
    assert other["close_code"] == 1006
    assert _handshake_refused(other, 403), other
    assert f"session={cookie_key}" in other["document_cookie"]
    b_cookie = [headers.get("Cookie", "") for path, headers in site_b.requests if path == "/cookie"]
    assert b_cookie
    assert f"session={cookie_key}" in b_cookie[0]

    # The backend saw exactly the two good connections, with their subjects, no token.
    assert len(attempts) == 2
    assert sorted(headers["X-Auth-Subject"] for _, headers in b.requests) == sorted(
        [SUB_SUBJECT, COOKIE_SUBJECT]
    )
    for path, headers in b.requests:
        assert path == "/chat"
        assert headers.get_all("X-Auth-Subject") in ([SUB_SUBJECT], [COOKIE_SUBJECT])
        for key in (sub_key, cookie_key, wrong_key):
            assert key not in path
            assert key not in " ".join(headers.get_all("Sec-WebSocket-Protocol"))
            assert key not in " ".join(headers.get_all("Cookie"))
            assert key not in str(headers)

    # The proxy says the same: two 401s (wrong key) and one 403 (origin).
    rejected = [e for e in logs if e.get("event") == "connection.rejected"]
    assert sorted(int(e["status"]) for e in rejected) == [401, 401, 403], rejected
    assert ["origin" in e.get("reason", "") for e in rejected if e.get("status") == 403] == [True]

    # ...and no token reached a log line.
    text = repr(logs) + "".join(capsys.readouterr())
    for key in (sub_key, cookie_key, wrong_key):
        assert key not in text
