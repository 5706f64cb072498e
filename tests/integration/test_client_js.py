"""clients/js against a real ``wsproxy run``: ``node --test clients/js/test/`` (issue 17).

The proxy runs as its users run it (a ``wsproxy run`` subprocess), with JWT auth
(``close_on_expiry``, a 200 ms sweep) and resumable sessions (for the clients that
opt in) in front of two `websockets` backends in this
process, ``b1`` and ``b2``. Each echoes, answers ``whoami`` with its name, and on the
paths ``/close/CODE?reason=R`` closes every connection with that code and reason as
soon as it is open, ``/close-once/CODE/KEY?reason=R`` only the first connection per KEY
(the next one echoes): the backend's close is relayed by the proxy as it is, so the
client meets a 4xxx, a 1011 without hint or a 1012 with a known hint on demand.

node gets the proxy's and the admin API's URLs and the JWT secret through the
environment (``WSPROXY_URL``, ``WSPROXY_ADMIN``, ``WSPROXY_JWT_SECRET``) and runs every
test file in ``clients/js/test/`` (the unit tests too). Any failing node test fails this
test, with node's report. Without node this skips, unless ``WSPROXY_REQUIRE_NODE=1``
(``.ci/run``), which makes it fail instead. Node 20 has no global WebSocket without
``--experimental-websocket`` (undici's, the same API as a browser's), so that flag is
passed; the client itself has no dependency.

The TypeScript types are checked too: ``tsc --strict`` over a usage example.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.integration.peers import backend
from tests.integration.proxy_process import proxy_process

pytestmark = pytest.mark.anyio

ROOT: Final = Path(__file__).resolve().parents[2]
CLIENT_DIR: Final = ROOT / "clients" / "js"
SECRET: Final = "a-test-secret-of-at-least-32-bytes!!"
REQUIRE_ENV: Final = "WSPROXY_REQUIRE_NODE"
NODE_DIR: Final = Path(os.environ.get("WSPROXY_NODE_DIR", "/tmp/wsproxy-node"))
#: The whole node run; each node test bounds its own waits far below this.
NODE_BOUND: Final = 240.0
#: Bound on each node test (milliseconds).
TEST_BOUND_MS: Final = 60_000


def skip_without_node() -> str:
    """The path of node; skips (or fails under ``WSPROXY_REQUIRE_NODE``) without it."""
    node = shutil.which("node")
    if node is not None:
        return node
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"no node on PATH; {REQUIRE_ENV} is set, so these tests must run here",
                    pytrace=False)
    pytest.skip("no node on PATH")


def handler(name: str, seen: set[str]) -> Callable[[ServerConnection], Awaitable[None]]:
    """Echo, ``whoami``, and the closes on demand described above; *seen* holds the
    close-once keys, shared by the backends (a reconnect may reach the other one)."""

    async def handle(ws: ServerConnection) -> None:
        assert ws.request is not None
        target = urlsplit(ws.request.path)
        parts = target.path.strip("/").split("/")
        reason = parse_qs(target.query).get("reason", [""])[0]
        if parts[0] == "close" or (parts[0] == "close-once" and parts[2] not in seen):
            if parts[0] == "close-once":
                seen.add(parts[2])
            await ws.close(int(parts[1]), reason)
            return
        with contextlib.suppress(ConnectionClosed):  # a drain or a revocation ends it
            async for message in ws:
                await ws.send(name if message == "whoami" else message)

    return handle


@pytest.mark.timeout(NODE_BOUND + 60)
async def test_the_js_client_against_a_running_wsproxy(tmp_path: Path) -> None:
    node = skip_without_node()
    seen: set[str] = set()
    async with backend("b1", handler("b1", seen)) as b1, backend("b2", handler("b2", seen)) as b2:
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "backends": [{"name": b.name, "url": b.url} for b in (b1, b2)],
            "auth": {
                "type": "jwt", "close_on_expiry": True,
                "token_from": ["header", "subprotocol", "query:access_token"],
                "jwt": {"algorithms": ["HS256"], "secret": SECRET, "leeway": 0},
            },
            # The expiry sweep visits connections a few times a second.
            "heartbeat": {"interval": "200ms", "timeout": "10s"},
            "drain": {"spread": "0s"},
            # For the clients that opt in ({resume: true}); the others see no difference.
            "resume": {"enabled": True},
            "logging": {"level": "info"},
        }
        async with proxy_process(config, tmp_path) as proxy:
            admin = (await proxy.wait_for_event("admin.listening"))["address"]
            env = {
                **os.environ,
                "WSPROXY_URL": f"ws://127.0.0.1:{proxy.port}",
                "WSPROXY_ADMIN": f"http://{admin}",
                "WSPROXY_JWT_SECRET": SECRET,
            }
            # Each test bounded, and node ends when they have, whatever a failed test
            # left running (a reconnecting client keeps the event loop alive).
            command = [node, "--experimental-websocket", "--test", "--test-force-exit",
                       f"--test-timeout={TEST_BOUND_MS}", "--test-reporter=tap",
                       str(CLIENT_DIR / "test")]
            with anyio.fail_after(NODE_BOUND):
                done = await anyio.run_process(command, cwd=CLIENT_DIR, env=env, check=False)
            report = done.stdout.decode() + done.stderr.decode()
            assert done.returncode == 0, report
            # Every test ran (none skipped for want of the environment) and passed.
            assert re.search(r"^# fail 0$", report, re.M), report
            assert re.search(r"^# skipped 0$", report, re.M), report
            assert re.search(r"^# pass [1-9]", report, re.M), report


def test_the_types_describe_the_api() -> None:
    """``tsc --strict`` over clients/js/test/types/usage.mts: the README's uses of the API
    compile against wsproxy-client.d.ts, and the misuses marked ``@ts-expect-error``
    do not. TypeScript comes from ``$WSPROXY_NODE_DIR`` (``.ci/run`` installs it)."""
    tsc = NODE_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.is_file():
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"no TypeScript at {tsc}; {REQUIRE_ENV} is set, so this must run here",
                        pytrace=False)
        pytest.skip(f"no TypeScript at {tsc} (npm install --prefix DIR typescript)")
    done = subprocess.run([str(tsc), "-p", str(CLIENT_DIR / "test" / "types")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
