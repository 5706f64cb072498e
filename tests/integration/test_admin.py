"""The admin API over real HTTP: every endpoint, the auth rules, the bad requests.

The HTTP client is h11's client side on an anyio stream (a peer we did not write);
the proxy runs in-process on 127.0.0.1 port 0, clients are `websockets` connections.
test_metrics.py and test_ops_cli.py reuse the helpers at the top of this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import h11
import pytest
from anyio.abc import SocketStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection

from tests.integration.peers import Backend, backend, make_config, raw_exchange, running_proxy
from wsproxy.config import ProxyConfig, load_config
from wsproxy.supervisor import ProxyContext, serve

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token"
AUTH = (("Authorization", f"Bearer {TOKEN}"),)
#: A bound on every wait of this module; each normally takes milliseconds.
WAIT = 10.0  # generous: a loaded machine; the drains waited for (?wait=8s) end first
CONNECTION_FIELDS = {"id", "client", "backend", "subject", "age_s", "messages_to_backend",
                     "messages_to_client", "bytes_to_backend", "bytes_to_client"}


# Helpers -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self
        return json.loads(self.body)


_NO_JSON: Any = object()


class HTTPConnection:
    """One keep-alive HTTP/1.1 connection to the admin port (h11 on the client side)."""

    def __init__(self, stream: SocketStream, host: str,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        self._stream = stream
        self._host = host
        self._headers = list(headers)
        self._conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, path: str, *, json_body: Any = _NO_JSON,
                      body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> Answer:
        conn = self._conn
        if conn.our_state is h11.DONE:
            conn.start_next_cycle()
        all_headers = [("Host", self._host), *self._headers, *headers]
        if json_body is not _NO_JSON:
            body = json.dumps(json_body).encode()
            all_headers.append(("Content-Type", "application/json"))
        if body or method in ("POST", "DELETE"):
            all_headers.append(("Content-Length", str(len(body))))
        data = conn.send(h11.Request(method=method, target=path, headers=all_headers)) or b""
        if body:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await self._stream.send(data)
        head: h11.Response | None = None
        chunks: list[bytes] = []
        with anyio.fail_after(WAIT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        conn.receive_data(await self._stream.receive())
                    except anyio.EndOfStream:
                        conn.receive_data(b"")
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"unexpected {event!r}")
        assert head is not None
        headers_seen = {k.decode().lower(): v.decode() for k, v in head.headers}
        return Answer(head.status_code, headers_seen, b"".join(chunks))


@asynccontextmanager
async def admin_connection(ctx: ProxyContext, token: str | None = None
                           ) -> AsyncIterator[HTTPConnection]:
    assert ctx.admin_address is not None
    host, port = ctx.admin_address
    headers = [("Authorization", f"Bearer {token}")] if token else []
    async with await anyio.connect_tcp(host, port) as stream:
        yield HTTPConnection(stream, f"{host}:{port}", headers)


async def admin(ctx: ProxyContext, method: str, path: str, *, token: str | None = None,
                **kwargs: Any) -> Answer:
    """One request on a connection of its own."""
    async with admin_connection(ctx, token) as http:
        return await http.request(method, path, **kwargs)


def tagging_echo(name: str) -> Callable[[ServerConnection], Any]:
    """An echo handler that answers "who" with its backend's name."""

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(name if message == "who" else message)

    return handler


@asynccontextmanager
async def two_backends() -> AsyncIterator[tuple[Backend, Backend]]:
    async with backend("b1", tagging_echo("b1")) as b1, backend("b2", tagging_echo("b2")) as b2:
        yield b1, b2


async def open_clients(ctx: ProxyContext, count: int, stack: AsyncExitStack,
                       ) -> list[ClientConnection]:
    """*count* clients, each echoed once (so they are open on both legs)."""
    host, port = ctx.addresses[0]
    clients = []
    for _ in range(count):
        ws = await stack.enter_async_context(connect(f"ws://{host}:{port}", compression=None))
        await ws.send("who")
        await ws.recv()
        clients.append(ws)
    return clients


async def backend_of(ws: ClientConnection) -> str:
    await ws.send("who")
    answer = await ws.recv()
    assert isinstance(answer, str)
    return answer


async def closed_with(ws: ClientConnection) -> int | None:
    with anyio.fail_after(WAIT):
        await ws.wait_closed()
    return ws.close_code


@asynccontextmanager
async def proxy_from_file(path: Path) -> AsyncIterator[ProxyContext]:
    """The proxy of the config file *path*, which ``POST /reload`` reads again."""
    async with anyio.create_task_group() as tg:
        ctx: ProxyContext = await tg.start(partial(serve, load_config(path),
                                                   config_path=str(path)))
        try:
            yield ctx
        finally:
            ctx.shutdown(spread=0)
            ctx.hurry()


def write_config(path: Path, backends: Sequence[Backend], **extra: Any) -> None:
    raw = {"listen": {"host": "127.0.0.1", "port": 0}, "admin": {"host": "127.0.0.1", "port": 0},
           "backends": [{"name": b.name, "url": b.url} for b in backends],
           "logging": {"level": "warning"}, **extra}
    path.write_text(json.dumps(raw))  # JSON is YAML


def with_token(backends: Sequence[Backend], **overrides: Any) -> ProxyConfig:
    return make_config(list(backends), admin={"token": TOKEN}, **overrides)


# Every endpoint ------------------------------------------------------------------------


async def test_page_and_probes() -> None:
    async with backend() as b, running_proxy(make_config([b])) as ctx:
        page = await admin(ctx, "GET", "/")
        assert page.status == 200
        assert page.headers["content-type"].startswith("text/html")
        assert b"<html" in page.body.lower()
        health = await admin(ctx, "GET", "/healthz")
        assert (health.status, health.json()) == (200, {"status": "ok"})
        ready = await admin(ctx, "GET", "/readyz")
        assert ready.status == 200
        metrics = await admin(ctx, "GET", "/metrics")
        assert metrics.status == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert b"# TYPE wsproxy_connections_active gauge" in metrics.body


async def test_backends_lists_every_backend_with_its_fields() -> None:
    async with (
        two_backends() as (b1, b2),
        running_proxy(make_config([b1, b2], balance="round_robin")) as ctx,
        AsyncExitStack() as stack,
    ):
        clients = await open_clients(ctx, 3, stack)  # round robin: 2 on one, 1 on the other
        names = [await backend_of(ws) for ws in clients]
        answer = await admin(ctx, "GET", "/backends")
        assert answer.status == 200
        rows = {row["name"]: row for row in answer.json()["backends"]}
        assert set(rows) == {"b1", "b2"}
        for b in (b1, b2):
            row = rows[b.name]
            assert {"name", "url", "healthy", "draining", "active"} <= set(row)
            assert (row["url"], row["healthy"], row["draining"], row["active"]) == (
                b.url, True, False, names.count(b.name))
        assert sorted(names.count(b.name) for b in (b1, b2)) == [1, 2]


async def test_connections_lists_fields_top_and_sort_by_traffic() -> None:
    async with (
        backend("b1", tagging_echo("b1")) as b,
        running_proxy(make_config([b])) as ctx,
        AsyncExitStack() as stack,
    ):
        clients = await open_clients(ctx, 3, stack)
        ids = [headers["X-Request-Id"] for _, headers in b.requests]
        busy = clients[1]
        for i in range(4):
            await busy.send(f"message {i}")
            assert await busy.recv() == f"message {i}"

        rows = (await admin(ctx, "GET", "/connections")).json()["connections"]
        assert [row["id"] for row in rows] == ids  # default: oldest first
        for row in rows:
            assert set(row) >= CONNECTION_FIELDS
            assert (row["client"], row["backend"], row["subject"]) == ("127.0.0.1", "b1", None)
            assert row["age_s"] >= 0
        by_id = {row["id"]: row for row in rows}
        assert by_id[ids[0]]["messages_to_backend"] == by_id[ids[0]]["messages_to_client"] == 1
        busy_row = by_id[ids[1]]
        assert busy_row["messages_to_backend"] == busy_row["messages_to_client"] == 5
        # Frame headers of 2 bytes, plus 4 mask bytes towards the backend; the backend
        # answered "who" with "b1".
        assert busy_row["bytes_to_backend"] == len("who") + 4 * len("message 0") + 5 * 6
        assert busy_row["bytes_to_client"] == len("b1") + 4 * len("message 0") + 5 * 2

        top = (await admin(ctx, "GET", "/connections?sort=traffic&top=1")).json()
        assert [row["id"] for row in top["connections"]] == [ids[1]]
        oldest = (await admin(ctx, "GET", "/connections?sort=age&top=2")).json()
        assert [row["id"] for row in oldest["connections"]] == ids[:2]


async def test_proxy_drain_spread_status_wait_and_undrain() -> None:
    async with (
        backend() as b,
        running_proxy(make_config([b])) as ctx,
        AsyncExitStack() as stack,
    ):
        clients = await open_clients(ctx, 2, stack)
        started = await admin(ctx, "POST", "/drain", json_body={"spread": "1s"})
        assert (started.status, started.json()) == (200, {"draining": True, "spread_s": 1.0})
        assert (await admin(ctx, "GET", "/readyz")).status == 503
        status = (await admin(ctx, "GET", "/drain")).json()
        assert status["draining"] is True
        assert {"left", "closed", "seconds_left"} <= set(status)
        assert 0 <= status["seconds_left"] <= 1.0

        done = await admin(ctx, "GET", "/drain?wait=8s")
        assert done.status == 200
        assert done.json()["draining"] is False
        assert (done.json()["left"], done.json()["closed"]) == (0, 2)
        assert [await closed_with(ws) for ws in clients] == [1001, 1001]
        assert (await admin(ctx, "GET", "/readyz")).status == 503  # unready until undrain

        undone = await admin(ctx, "POST", "/undrain", json_body={})
        assert undone.json() == {"draining": False, "was_draining": True}
        assert (await admin(ctx, "GET", "/readyz")).status == 200
        assert (await admin(ctx, "GET", "/drain")).json()["draining"] is False
        [again] = await open_clients(ctx, 1, stack)  # new upgrades are welcome again
        await again.send("back")
        assert await again.recv() == "back"


async def test_backend_drain_closes_only_its_clients_with_1012_and_undrain_restores() -> None:
    async with (
        two_backends() as (b1, b2),
        running_proxy(make_config([b1, b2], balance="round_robin")) as ctx,
        AsyncExitStack() as stack,
    ):
        clients = await open_clients(ctx, 4, stack)
        names = [await backend_of(ws) for ws in clients]
        assert sorted(names) == ["b1", "b1", "b2", "b2"]

        started = await admin(ctx, "POST", "/backends/b1/drain", json_body={"spread": "1s"})
        assert started.json() == {"backend": "b1", "draining": True, "spread_s": 1.0}
        rows = {r["name"]: r for r in (await admin(ctx, "GET", "/backends")).json()["backends"]}
        assert (rows["b1"]["draining"], rows["b2"]["draining"]) == (True, False)
        assert (await admin(ctx, "GET", "/readyz")).status == 200  # the proxy still takes

        done = (await admin(ctx, "GET", "/drain?wait=8s")).json()
        assert (done["draining"], done["left"], done["closed"]) == (False, 0, 2)
        for ws, name in zip(clients, names, strict=True):
            if name == "b1":
                assert await closed_with(ws) == 1012
            else:
                assert await backend_of(ws) == "b2"  # untouched
        [newcomer] = await open_clients(ctx, 1, stack)
        assert await backend_of(newcomer) == "b2"  # a draining backend gets no upgrades

        undone = await admin(ctx, "POST", "/backends/b1/undrain", json_body={})
        assert undone.json() == {"backend": "b1", "draining": False, "was_draining": True}
        rows = {r["name"]: r for r in (await admin(ctx, "GET", "/backends")).json()["backends"]}
        assert rows["b1"]["draining"] is False
        # round robin over both again: two newcomers land on both backends
        more = await open_clients(ctx, 2, stack)
        assert sorted([await backend_of(ws) for ws in more]) == ["b1", "b2"]


async def test_delete_connection_closes_that_client_with_1008() -> None:
    async with (
        backend() as b,
        running_proxy(make_config([b])) as ctx,
        AsyncExitStack() as stack,
    ):
        first, second = await open_clients(ctx, 2, stack)
        first_id = b.requests[0][1]["X-Request-Id"]
        answer = await admin(ctx, "DELETE", f"/connections/{first_id}")
        assert (answer.status, answer.json()) == (200, {"closed": [first_id]})
        assert await closed_with(first) == 1008
        await second.send("still here")
        assert await second.recv() == "still here"
        gone = await admin(ctx, "DELETE", f"/connections/{first_id}")
        assert gone.status == 404
        assert "error" in gone.json()


async def test_close_connections_by_backend_and_subject() -> None:
    async with (
        two_backends() as (b1, b2),
        running_proxy(make_config([b1, b2], balance="round_robin")) as ctx,
        AsyncExitStack() as stack,
    ):
        clients = await open_clients(ctx, 4, stack)
        names = [await backend_of(ws) for ws in clients]
        nobody = await admin(ctx, "POST", "/connections/close", json_body={"subject": "ann"})
        assert nobody.json() == {"closed": []}

        answer = await admin(ctx, "POST", "/connections/close", json_body={"backend": "b1"})
        assert answer.status == 200
        b1_ids = {headers["X-Request-Id"] for _, headers in b1.requests}
        assert set(answer.json()["closed"]) == b1_ids
        for ws, name in zip(clients, names, strict=True):
            if name == "b1":
                assert await closed_with(ws) == 1008
            else:
                assert await backend_of(ws) == "b2"

        custom = await admin(ctx, "POST", "/connections/close",
                             json_body={"backend": "b2", "code": 4000, "reason": "moving"})
        assert len(custom.json()["closed"]) == 2
        assert [await closed_with(ws) for ws, n in zip(clients, names, strict=True)
                if n == "b2"] == [4000, 4000]
        for body in ({}, {"backend": "b1", "code": 1005}, {"backend": "b1", "code": "x"}):
            refused = await admin(ctx, "POST", "/connections/close", json_body=body)
            assert refused.status == 400, body
            assert "error" in refused.json()


async def test_close_reason_with_a_lone_surrogate_is_a_400_not_a_crash() -> None:
    async with (
        backend() as b,
        running_proxy(make_config([b])) as ctx,
        AsyncExitStack() as stack,
    ):
        await open_clients(ctx, 1, stack)
        answer = await admin(ctx, "POST", "/connections/close",
                             body=b'{"backend": "b1", "reason": "\\ud800"}',
                             headers=(("Content-Type", "application/json"),))
        assert answer.status == 400
        assert (await admin(ctx, "GET", "/healthz")).status == 200


async def test_reload_without_a_config_file_is_refused_with_errors() -> None:
    async with backend() as b, running_proxy(make_config([b])) as ctx:
        answer = await admin(ctx, "POST", "/reload", json_body={})
        assert answer.status == 400
        body = answer.json()
        assert body["reloaded"] is False
        assert body["errors"]
        assert all(isinstance(e, str) for e in body["errors"])


async def test_reload_adds_a_backend_and_refuses_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "wsproxy.yaml"
    async with two_backends() as (b1, b2):
        write_config(path, [b1])
        async with proxy_from_file(path) as ctx, AsyncExitStack() as stack:
            [client] = await open_clients(ctx, 1, stack)
            write_config(path, [b1, b2])
            answer = await admin(ctx, "POST", "/reload", json_body={})
            assert (answer.status, answer.json()) == (200, {"reloaded": True})
            names = [r["name"] for r in (await admin(ctx, "GET", "/backends")).json()["backends"]]
            assert sorted(names) == ["b1", "b2"]
            assert await backend_of(client) == "b1"  # an unchanged backend keeps its clients

            write_config(path, [b1], heartbeat={"interval": "soon"})
            refused = await admin(ctx, "POST", "/reload", json_body={})
            assert refused.status == 400
            body = refused.json()
            assert body["reloaded"] is False
            assert any("heartbeat.interval" in e for e in body["errors"]), body
            names = [r["name"] for r in (await admin(ctx, "GET", "/backends")).json()["backends"]]
            assert sorted(names) == ["b1", "b2"]  # the old config stays


# Auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer"],
                         ids=["none", "wrong", "basic", "empty"])
async def test_token_is_needed_for_the_api(authorization: str | None) -> None:
    headers = [("Authorization", authorization)] if authorization else []
    async with backend() as b, running_proxy(with_token([b])) as ctx:
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/backends", {}), ("GET", "/metrics", {}),
            ("POST", "/drain", {"json_body": {}}),
            ("DELETE", "/connections/abc", {}),
        ]
        for method, path, kwargs in calls:
            answer = await admin(ctx, method, path, headers=headers, **kwargs)
            assert answer.status == 401, path
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert "error" in answer.json()
        assert ctx.ready  # the refused POST /drain did nothing
        ok = await admin(ctx, "GET", "/backends", headers=AUTH)
        assert ok.status == 200


async def test_page_and_probes_need_no_token() -> None:
    async with backend() as b, running_proxy(with_token([b])) as ctx:
        for path in ("/", "/healthz", "/readyz"):
            assert (await admin(ctx, "GET", path)).status == 200, path


async def test_post_needs_json_content_type_and_same_origin() -> None:
    async with backend() as b, running_proxy(with_token([b])) as ctx:
        assert ctx.admin_address is not None
        host, port = ctx.admin_address
        plain = await admin(ctx, "POST", "/drain", token=TOKEN, body=b"{}",
                            headers=(("Content-Type", "text/plain"),))
        assert plain.status == 415
        missing = await admin(ctx, "POST", "/undrain", token=TOKEN)
        assert missing.status == 415
        evil = await admin(ctx, "POST", "/drain", token=TOKEN, json_body={},
                           headers=(("Origin", "http://evil.example"),))
        assert evil.status == 403
        evil_delete = await admin(ctx, "DELETE", "/connections/abc", token=TOKEN,
                                  headers=(("Origin", "http://evil.example"),))
        assert evil_delete.status == 403
        assert ctx.ready  # none of them drained anything
        same = await admin(ctx, "POST", "/drain", token=TOKEN, json_body={"spread": "0s"},
                           headers=(("Origin", f"http://{host}:{port}"),))
        assert same.status == 200
        assert not ctx.ready


async def test_bad_requests_get_json_errors() -> None:
    async with backend() as b, running_proxy(make_config([b])) as ctx:
        cases: list[tuple[str, str, dict[str, Any], int]] = [
            ("GET", "/nope", {}, 404),
            ("GET", "/backends/b1", {}, 404),
            ("POST", "/drain", {"body": b"{not json", "headers": (
                ("Content-Type", "application/json"),)}, 400),
            ("POST", "/drain", {"json_body": ["a", "list"]}, 400),
            ("POST", "/drain", {"json_body": {"spread": "soon"}}, 400),
            ("POST", "/drain", {"json_body": {"spread": -1}}, 400),
            ("POST", "/backends/b1/drain", {"json_body": {"spread": "1 fortnight"}}, 400),
            ("GET", "/drain?wait=soon", {}, 400),
            ("GET", "/connections?sort=size", {}, 400),
            ("GET", "/connections?top=many", {}, 400),
            ("POST", "/backends/nope/drain", {"json_body": {}}, 404),
            ("POST", "/backends/nope/undrain", {"json_body": {}}, 404),
        ]
        for method, path, kwargs, status in cases:
            answer = await admin(ctx, method, path, **kwargs)
            assert answer.status == status, (method, path, kwargs)
            assert isinstance(answer.json()["error"], str)
        assert ctx.ready
        assert not ctx.drains


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/backends", "GET"),
    ("POST", "/healthz", "GET"),
    ("GET", "/undrain", "POST"),
    ("PUT", "/drain", "GET, POST"),
    ("GET", "/backends/b1/drain", "POST"),
    ("GET", "/connections/close", "POST"),
])
async def test_wrong_method_is_405_with_allow(method: str, path: str, allow: str) -> None:
    async with backend() as b, running_proxy(make_config([b])) as ctx:
        answer = await admin(ctx, method, path)
        assert answer.status == 405
        assert answer.headers["allow"] == allow
        assert "error" in answer.json()


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: nine\r\n\r\n",
], ids=["garbage", "bad-header", "no-host", "bad-length"])
async def test_malformed_http_is_400_without_a_traceback(
    request_bytes: bytes, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with backend() as b, running_proxy(make_config([b])) as ctx:
        assert ctx.admin_address is not None
        reply = await raw_exchange(ctx.admin_address[1], request_bytes)
        assert reply.startswith(b"HTTP/1.1 400 "), reply
        assert b"Traceback" not in reply
        assert (await admin(ctx, "GET", "/healthz")).status == 200  # the server lives on
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    async with (
        backend() as b,
        running_proxy(with_token([b])) as ctx,
        admin_connection(ctx, TOKEN) as http,
    ):
        first = await http.request("GET", "/backends")
        assert first.status == 200
        assert first.headers.get("connection") != "close"
        second = await http.request("POST", "/drain", json_body={"spread": "0s"})
        assert second.status == 200
        third = await http.request("GET", "/nope")  # an error answer keeps it open too
        assert third.status == 404
        fourth = await http.request("GET", "/drain?wait=1s")  # nothing open: done at once
        assert fourth.json()["draining"] is False
