"""Node socket.io as two backends behind wsproxy, with socket.io-client (issue 16).

Two ``sio_server.mjs`` processes (socket.io 4, each answering ``whoami`` with its name)
behind an in-process proxy with ``plain_http: proxy``; ``sio_clients.mjs`` runs 10
socket.io-client clients through it with default transports (polling, then the upgrade
to websocket), polling only and websocket only. Every client must connect, get every
echo acknowledged, and see one backend for its whole session: the one its session
connected on (the backends print each session's ``cid`` as it connects) — and neither
backend may refuse a request (engine.io's "Session ID unknown", what a poll or an
upgrade that reached the other backend gets).

- ``balance: cookie``: socket.io-client in Node keeps cookies with
  ``withCredentials: true`` (engine.io-client's cookie jar, sent on the polls and the
  upgrade), so the proxy's sticky cookie holds a session on its backend.
- ``balance: hash:cid``: the same clients without cookies, each with a stable
  ``query: {cid}``.
- A control: ``round_robin`` without cookies breaks polling sessions, so the checks
  above would see a session split across the backends.

SockJS (``sockjs`` and ``sockjs-client``): two ``sockjs_server.mjs`` echo servers and
``sockjs_clients.mjs`` with each transport (websocket, xhr-streaming, xhr-polling):
``balance: hash:cid`` on the query sockjs-client repeats on every session URL, or
``balance: cookie`` for a client that keeps cookies; a control shows both needed.

A drain: socket.io clients on one backend, ``POST /backends/a/drain``, each reconnects
to the other by itself.

The Node modules come from ``npm install --prefix $WSPROXY_NODE_DIR socket.io
socket.io-client sockjs sockjs-client`` (``.ci/run`` does it and sets
``WSPROXY_REQUIRE_NODE=1``): without them these tests skip, saying what is missing; with
``WSPROXY_REQUIRE_NODE`` set they fail.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import pytest

from tests.integration.peers import make_config, proxy, running_proxy
from tests.integration.proxy_process import Running, started
from tests.integration.test_admin import admin

pytestmark = pytest.mark.anyio

HERE: Final = Path(__file__).parent
NODE_DIR: Final = Path(os.environ.get("WSPROXY_NODE_DIR", "/tmp/wsproxy-node"))
MODULES: Final = ("socket.io", "socket.io-client")
#: Set (to anything but "" or "0") where these tests must run: CI.
REQUIRE_ENV: Final = "WSPROXY_REQUIRE_NODE"
#: Bound on each wait inside the client script (connect, each ack, the upgrade); the
#: script ends itself at twice that, and is killed at three times.
WAIT_MS: Final = 20_000
CLIENTS: Final = 10
ECHOES: Final = 5
WHOAMI: Final = 3
DEFAULT = "polling,websocket"


def missing(modules: tuple[str, ...] = MODULES) -> str | None:
    """Why tests that need node and *modules* cannot run here, or None when they can."""
    if shutil.which("node") is None:
        return "no node on PATH"
    for module in modules:
        if not (NODE_DIR / "node_modules" / module / "package.json").is_file():
            return (f"{module} not installed under {NODE_DIR} (npm install --prefix DIR "
                    f"{' '.join(modules)}, or set WSPROXY_NODE_DIR)")
    return None


def skip_unless_available(modules: tuple[str, ...] = MODULES, what: str = "socket.io") -> None:
    """Skip when node or a module is missing; fail instead where ``WSPROXY_REQUIRE_NODE``."""
    reason = missing(modules)
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so the Node {what} tests must run",
                    pytrace=False)
    pytest.skip(reason)


def node_env() -> dict[str, str]:
    return {**os.environ, "WSPROXY_NODE_DIR": str(NODE_DIR)}


@asynccontextmanager
async def two_backends() -> AsyncIterator[dict[str, Running]]:
    """Backends "a" and "b", yielded once each printed its port (stopped by PID after)."""
    async with AsyncExitStack() as stack:
        servers: dict[str, Running] = {}
        for name in ("a", "b"):
            servers[name] = await stack.enter_async_context(started(
                str(HERE / "sio_server.mjs"), name, command=("node",), env=node_env()))
        for server in servers.values():
            await server.wait_for_event("listening")
        yield servers


def backend_config(servers: dict[str, Running]) -> list[dict[str, str]]:
    return [{"name": name, "url": f"ws://127.0.0.1:{s.events('listening')[0]['port']}"}
            for name, s in servers.items()]


async def run_clients(url: str, transports: str, *, cookies: bool) -> dict[str, Any]:
    """``sio_clients.mjs`` against *url* (bounded); its JSON report."""
    command = ["node", str(HERE / "sio_clients.mjs"), f"--url={url}",
               f"--clients={CLIENTS}", f"--echoes={ECHOES}", f"--whoami={WHOAMI}",
               f"--transports={transports}", f"--cookies={int(cookies)}",
               f"--timeout-ms={WAIT_MS}"]
    with anyio.fail_after(WAIT_MS / 1000 * 3):
        done = await anyio.run_process(command, env=node_env(), check=False)
    output = done.stdout.decode().strip()
    assert output, f"no output from sio_clients.mjs; stderr:\n{done.stderr.decode()}"
    report: dict[str, Any] = json.loads(output.splitlines()[-1])
    return report


async def sessions(balance: str, transports: str, *, cookies: bool
                   ) -> tuple[dict[str, Any], dict[str, Running]]:
    """Run the clients through a proxy with *balance*; the report and the backends."""
    async with two_backends() as servers:
        config = make_config(backend_config(servers), plain_http="proxy", balance=balance)
        async with proxy(config, scheme="http") as url:
            report = await run_clients(url, transports, cookies=cookies)
        return report, servers


def misrouted(servers: dict[str, Running]) -> dict[str, list[dict[str, Any]]]:
    """Per backend, the requests it refused that belong to a session it never opened: a
    session split across backends.

    A refusal of a session the backend opened itself is not one: a client that exits
    right after its disconnect leaves requests of its closed session behind (seen under
    load as "Session ID unknown" on the backend that had it), which says nothing of
    where the proxy sent them.
    """
    issued = {n: {e["sid"] for e in s.events("session")} for n, s in servers.items()}
    return {n: [e for e in s.events("connection_error") if e.get("sid") not in issued[n]]
            for n, s in servers.items()}


def assert_sticky(report: dict[str, Any], servers: dict[str, Running], transports: str
                  ) -> None:
    """10/10 connected, every echo acked, each session on the one backend it began on."""
    failed = [c for c in report["clients"] if c["error"] is not None]
    assert report["ok"], json.dumps(report, indent=1)
    assert not failed, json.dumps(report, indent=1)
    assert report["connected"] == CLIENTS
    assert report["acked"] == report["expected_acks"] == CLIENTS * ECHOES
    assert misrouted(servers) == {"a": [], "b": []}
    connects = {r["cid"]: (n, r) for n, s in servers.items() for r in s.events("connect")}
    assert len(connects) == CLIENTS
    for client in report["clients"]:
        began_on, connect = connects[client["cid"]]
        assert client["backends"] == [began_on], client
        assert len(client["transports"]) == WHOAMI
        if transports == DEFAULT:
            # The session began by polling (the backend saw it connect so) and its
            # last whoami went after the upgrade, to the same backend.
            assert connect["transport"] == "polling", connect
            assert client["transports"][-1] == "websocket", client
        else:
            assert connect["transport"] == transports, connect
            assert set(client["transports"]) == {transports}, client
    # Both backends held sessions, so one backend for each was not a given.
    assert {n for n, _ in connects.values()} == {"a", "b"}, connects


@pytest.mark.parametrize("transports", [DEFAULT, "polling", "websocket"])
async def test_socketio_clients_stay_on_their_backend_with_cookie(transports: str) -> None:
    skip_unless_available()
    report, servers = await sessions("cookie", transports, cookies=True)
    assert_sticky(report, servers, transports)


async def test_socketio_clients_without_cookies_stay_with_hash_on_a_query_key() -> None:
    skip_unless_available()
    report, servers = await sessions("hash:cid", DEFAULT, cookies=False)
    # c0..c9 hashed over "a" and "b": a fixed split, both sides taken.
    assert_sticky(report, servers, DEFAULT)


async def test_without_affinity_polling_sessions_break() -> None:
    """The control: what the checks above catch when nothing keeps a session on one
    backend (the issue's "0 of 6 connect")."""
    skip_unless_available()
    report, servers = await sessions("round_robin", "polling", cookies=False)
    refused = sum(len(errors) for errors in misrouted(servers).values())
    assert report["connected"] < CLIENTS or refused > 0, json.dumps(report, indent=1)
    with pytest.raises(AssertionError):
        assert_sticky(report, servers, "polling")


@pytest.mark.parametrize("transports", [DEFAULT, "polling", "websocket"])
async def test_a_drain_moves_every_socketio_client_to_the_other_backend(transports: str
                                                                        ) -> None:
    """Clients on "a" (``balance: cookie``, ``withCredentials``); ``POST /backends/a/drain``
    with a 1 s spread: each reconnects by itself to "b" within the spread and its own
    back-off, what was acked stays acked, "a" sees no new session once the drain began,
    and ``GET /drain?wait`` reports the drain done only after a's last exchange ended."""
    skip_unless_available()
    spread = 1.0
    async with two_backends() as servers, AsyncExitStack() as stack:
        config = make_config(backend_config(servers), plain_http="proxy", balance="cookie")
        ctx = await stack.enter_async_context(running_proxy(config))
        host, port = ctx.addresses[0]
        # Every session on "a": "b" drained (it has nothing, so that drain ends at once)
        # while the clients connect, then undrained.
        assert (await admin(ctx, "POST", "/backends/b/drain",
                            json_body={"spread": "0s"})).status == 200
        clients = await stack.enter_async_context(started(
            str(HERE / "sio_clients.mjs"), f"--url=http://{host}:{port}",
            f"--clients={CLIENTS}", f"--echoes={ECHOES}", "--whoami=1",
            f"--transports={transports}", "--cookies=1", "--reconnect=1",
            f"--timeout-ms={WAIT_MS}", command=("node",), env=node_env()))
        await clients.wait_for_event("ready", WAIT_MS / 1000)
        assert (await admin(ctx, "POST", "/backends/b/undrain", json_body={})).status == 200
        assert len(servers["a"].events("connect")) == CLIENTS
        assert servers["b"].events("connect") == []

        connects_before = len(servers["a"].events("connect"))
        answer = await admin(ctx, "POST", "/backends/a/drain",
                             json_body={"spread": f"{spread}s"})
        assert answer.status == 200, answer
        done = await admin(ctx, "GET", f"/drain?wait={WAIT_MS // 1000}s")
        assert done.json()["draining"] is False, done.json()
        report = await clients.wait_for_event("report", WAIT_MS / 1000 * 2)

        assert report["ok"], json.dumps(report, indent=1)
        assert [c for c in report["clients"] if c["error"] is not None] == []
        assert report["acked"] == report["expected_acks"] == CLIENTS * ECHOES
        for client in report["clients"]:
            assert client["backends"] == ["a", "b"], client
            assert client["reconnected_ms"] < (spread + WAIT_MS / 1000) * 1000, client
        assert len(servers["a"].events("connect")) == connects_before  # none after the drain
        assert len(servers["b"].events("connect")) == CLIENTS

        # a's exchanges: every one ends (the pipe may lag the drain's answer: wait for the
        # lines). That the drain is not reported done while one is open is tested with a
        # parked long-poll in test_http_backend_drain.py; here a's own clock (a "close"
        # event, which a busy event loop may run late) cannot be ordered against ours.
        a = servers["a"]

        def ends(kind: str) -> list[dict[str, Any]]:
            return [e for e in a.events("exchange") if e["kind"] == kind and e["phase"] == "end"]

        def starts(kind: str) -> int:
            return sum(1 for e in a.events("exchange")
                       if e["kind"] == kind and e["phase"] == "start")

        await a.wait_for(lambda: all(len(ends(k)) == starts(k) for k in ("http", "upgrade")),
                         "every exchange on a ended", 10)
        assert [e for e in ends("http") if e["answered"]] or transports == "websocket"


SOCKJS_MODULES: Final = ("sockjs", "sockjs-client")
SOCKJS_TRANSPORTS: Final = ("websocket", "xhr-streaming", "xhr-polling")


def skip_unless_sockjs() -> None:
    """As ``skip_unless_available`` for the SockJS tests (``sockjs``, ``sockjs-client``)."""
    skip_unless_available(SOCKJS_MODULES, "SockJS")


async def sockjs_sessions(balance: str, transports: str, *, timeout_ms: int = WAIT_MS,
                          cookies: bool = False
                          ) -> tuple[dict[str, Any], dict[str, Running]]:
    """``sockjs_clients.mjs`` through a proxy with *balance* over two ``sockjs_server.mjs``."""
    async with AsyncExitStack() as stack:
        servers: dict[str, Running] = {}
        for name in ("a", "b"):
            servers[name] = await stack.enter_async_context(started(
                str(HERE / "sockjs_server.mjs"), name, command=("node",), env=node_env()))
        for server in servers.values():
            await server.wait_for_event("listening")
        config = make_config(backend_config(servers), plain_http="proxy", balance=balance)
        url = await stack.enter_async_context(proxy(config, scheme="http"))
        command = ["node", str(HERE / "sockjs_clients.mjs"), f"--url={url}/echo",
                   f"--clients={CLIENTS}", f"--echoes={ECHOES}",
                   f"--transports={transports}", f"--timeout-ms={timeout_ms}",
                   f"--cookies={int(cookies)}"]
        with anyio.fail_after(timeout_ms / 1000 * 3):
            done = await anyio.run_process(command, env=node_env(), check=False)
        output = done.stdout.decode().strip()
        assert output, f"no output from sockjs_clients.mjs; stderr:\n{done.stderr.decode()}"
        report: dict[str, Any] = json.loads(output.splitlines()[-1])
        return report, servers


@pytest.mark.parametrize("transports", SOCKJS_TRANSPORTS)
async def test_sockjs_sessions_stay_on_their_backend_with_hash_on_a_query_key(
        transports: str) -> None:
    """sockjs-client in Node keeps no cookies, but it repeats the URL's query on every
    session request (/echo/<server>/<session>/<transport>?cid=...): ``balance: hash:cid``
    holds each session on one backend. 10/10 open, every echo back, one backend each,
    no request refused (a session request on the other backend gets a 404)."""
    skip_unless_sockjs()
    report, servers = await sockjs_sessions("hash:cid", transports)
    assert_sockjs_sticky(report, servers, transports)


@pytest.mark.parametrize("transports", ["xhr-streaming", "xhr-polling"])
async def test_sockjs_sessions_stay_on_their_backend_with_cookie(transports: str) -> None:
    """A client that keeps cookies (a browser; here a jar per session around the Node XHR
    driver): ``balance: cookie`` holds each session, the query not needed."""
    skip_unless_sockjs()
    report, servers = await sockjs_sessions("cookie", transports, cookies=True)
    assert_sockjs_sticky(report, servers, transports)


def assert_sockjs_sticky(report: dict[str, Any], servers: dict[str, Running], transports: str
                         ) -> None:
    assert report["ok"], json.dumps(report, indent=1)
    assert [c for c in report["clients"] if c["error"] is not None] == [], report
    assert report["opened"] == CLIENTS
    assert report["echoed"] == report["expected_echoes"] == CLIENTS * ECHOES
    assert {n: s.events("refused") for n, s in servers.items()} == {"a": [], "b": []}
    connects = {r["cid"]: (n, r) for n, s in servers.items() for r in s.events("connect")}
    assert len(connects) == CLIENTS
    for client in report["clients"]:
        began_on, connect = connects[client["cid"]]
        assert client["backends"] == [began_on], client
        assert client["transport"] == connect["transport"] == transports, (client, connect)
    assert {n for n, _ in connects.values()} == {"a", "b"}, connects


@pytest.mark.parametrize("balance", ["round_robin", "cookie"])
async def test_sockjs_polling_without_affinity_breaks(balance: str) -> None:
    """The control: with round_robin, or with ``balance: cookie`` for a client that keeps
    no cookies (sockjs-client in Node as it comes), a session's requests reach both
    backends and the sessions break ("Server lost session")."""
    skip_unless_sockjs()
    report, servers = await sockjs_sessions(balance, "xhr-polling", timeout_ms=3000)
    # A split session shows as a 404 on the backend that never had it (a send that
    # reached it) or, when only polls went astray, as the client's "Server lost session"
    # (the other backend opened a new session under the poll): either is the break.
    refused = sum(len(s.events("refused")) for s in servers.values())
    lost = sum(1 for c in report["clients"] if c["error"] == "closed 1006 Server lost session")
    assert refused + lost > 0, json.dumps(report, indent=1)
    assert report["echoed"] < CLIENTS * ECHOES, json.dumps(report, indent=1)


def test_missing_modules_skip_unless_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(f"{__name__}.NODE_DIR", tmp_path / "none")
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    if shutil.which("node") is None:
        pytest.skip("no node on PATH")
    with pytest.raises(pytest.skip.Exception, match=r"socket\.io not installed"):
        skip_unless_available()
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        skip_unless_available()


def test_missing_sockjs_modules_skip_unless_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(f"{__name__}.NODE_DIR", tmp_path / "none")
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    if shutil.which("node") is None:
        pytest.skip("no node on PATH")
    with pytest.raises(pytest.skip.Exception, match=r"sockjs not installed"):
        skip_unless_sockjs()
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        skip_unless_sockjs()
