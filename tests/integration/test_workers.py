"""``workers: 2``: a real ``wsproxy run`` with two worker processes, one proxy outside.

The proxy is a subprocess (tests/integration/proxy_process.py); its backend a
`websockets` echo server in this process. Which worker holds a connection is read
from the parent's ``GET /connections`` (``worker``, ``pid``). Progress comes from log
lines and close frames; timing checks are lower bounds only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.peers import Backend, backend, closed_by_proxy
from tests.integration.proxy_process import Running, proxy_process, run_cli_async
from tests.integration.test_resume import Events, cut
from wsproxy_client.resume import ResumableSession, Resumed, ResumeFailed

pytestmark = pytest.mark.anyio

WAIT = 20.0


def config_text(b: Backend, **sections: str) -> str:
    lines = ["listen: {host: 127.0.0.1, port: 0}", "admin: {host: 127.0.0.1, port: 0}",
             f'backends: [{{name: {b.name}, url: "{b.url}"}}]', "workers: 2",
             "logging: {level: info, format: json}"]
    return "\n".join(lines + [f"{k}: {v}" for k, v in sections.items()]) + "\n"


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # the proxy may read it at any SIGHUP


class Admin:
    """The parent's admin API (urllib in a thread)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=WAIT + 10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    async def text(self, method: str, path: str,
                   body: dict[str, Any] | None = None) -> tuple[int, str]:
        return await anyio.to_thread.run_sync(self._call, method, path, body)

    async def json(self, method: str, path: str,
                   body: dict[str, Any] | None = None) -> tuple[int, Any]:
        status, text = await self.text(method, path, body)
        return status, json.loads(text)

    async def connections(self) -> list[dict[str, Any]]:
        status, body = await self.json("GET", "/connections")
        assert status == 200, body
        return list(body["connections"])


@asynccontextmanager
async def workers(tmp_path: Path, **sections: str) -> AsyncIterator[tuple[Running, Admin, Path]]:
    async with backend() as b:
        path = tmp_path / "wsproxy.yaml"
        write(path, config_text(b, **sections))
        async with proxy_process(path, tmp_path, stop_grace=5.0) as proxy:
            admin = await proxy.wait_for_event("admin.listening")
            assert "worker" not in admin  # the parent's, logged before any worker's
            await proxy.wait_for(lambda: proxy.count("proxy.listening") >= 3,
                                 "every worker listening")
            yield proxy, Admin(int(admin["address"].rsplit(":", 1)[1])), path


async def echo(ws: ClientConnection) -> None:
    await ws.send("ping")
    assert await ws.recv() == "ping"


async def open_on_both(proxy: Running, admin: Admin, stack: AsyncExitStack,
                       least: int) -> dict[str, ClientConnection]:
    """*least* connections, and one more if the kernel handed them all to one worker;
    each from an address of its own (the key), which ``GET /connections`` shows.

    Which worker accepts is the kernel's pick (a busy machine may favour one for a
    long run), so the extra one is accepted while the favoured worker is stopped
    (SIGSTOP): the other one has to take it."""
    clients: dict[str, ClientConnection] = {}

    async def one_more() -> None:
        source = f"127.0.0.{len(clients) + 2}"
        clients[source] = await stack.enter_async_context(
            connect(proxy.url, local_addr=(source, 0)))
        await echo(clients[source])

    for _ in range(least):
        await one_more()
    conns = await admin.connections()
    if len({c["worker"] for c in conns}) == 1:
        favoured = conns[0]["pid"]
        os.kill(favoured, signal.SIGSTOP)
        try:
            await one_more()
        finally:
            os.kill(favoured, signal.SIGCONT)
    assert len({c["worker"] for c in await admin.connections()}) == 2
    return clients


def sample(metrics: str, line: str) -> float:
    match = re.search(rf"^{re.escape(line)} (\S+)$", metrics, re.MULTILINE)
    assert match is not None, line
    return float(match.group(1))


async def test_one_proxy_admin_metrics_and_a_drain_spread_over_both(tmp_path: Path) -> None:
    rate = 4  # drain.max_close_rate for the proxy: 2 a second for each worker
    async with workers(tmp_path, drain=f"{{spread: 0s, max_close_rate: {rate}, "
                                       "timeout: 30s}") as (proxy, admin, _), \
            AsyncExitStack() as stack:
        clients = await open_on_both(proxy, admin, stack, least=8)
        conns = await admin.connections()
        assert len(conns) == len(clients)
        assert {c["pid"] for c in conns} == {
            r["pid"] for r in proxy.events("proxy.listening") if "worker" in r}

        status, body = await admin.json("GET", "/backends")
        assert status == 200
        [view] = body["backends"]
        assert view["active"] == len(clients)
        status, metrics = await admin.text("GET", "/metrics")
        assert status == 200
        assert sample(metrics, 'wsproxy_connections_active{backend="b1"}') == len(clients)
        assert sample(metrics, 'wsproxy_connections_total{outcome="upgraded"}') == len(clients)
        assert sample(metrics, "wsproxy_workers") == 2
        assert metrics.count("# TYPE wsproxy_connections_active gauge") == 1
        status, page = await admin.text("GET", "/")
        assert status == 200
        assert "<html" in page.lower()
        status_cli = await run_cli_async("status", "--admin", admin.base)
        out = status_cli.stdout.decode()
        assert re.search(rf"^b1\s+healthy\s+{len(clients)}\s", out, re.MULTILINE), out
        assert f"proxy: ready, {len(clients)} connections" in out

        # A close by id reaches the worker that holds it; the others answer 404.
        last = conns[0]
        status, body = await admin.json("DELETE", f"/connections/{last['id']}")
        assert (status, body) == (200, {"closed": [last["id"]]})
        assert (await admin.json("DELETE", "/connections/nosuchid"))[0] == 404
        assert (await closed_by_proxy(clients.pop(last["client"])))[0] == 1008

        assert (await admin.json("GET", "/readyz"))[0] == 200
        times: list[float] = []
        started = anyio.current_time()

        async def closed(ws: ClientConnection) -> None:
            code, _ = await closed_by_proxy(ws, WAIT)
            assert code == 1001
            times.append(anyio.current_time() - started)

        async with anyio.create_task_group() as tg:
            for ws in clients.values():
                tg.start_soon(closed, ws)
            status, body = await admin.json("POST", "/drain", {})
            assert (status, body["draining"]) == (200, True)
            assert (await admin.json("GET", "/readyz"))[0] == 503
            status, body = await admin.json("GET", "/drain?wait=30s")
        assert (status, body["draining"], body["closed"]) == (200, False, len(clients))
        assert {d["worker"] for d in body["drains"]} == {0, 1}
        # The k-th close no earlier than the sum of the rates allows: each worker may
        # close one at once, then one per 1/(rate/2) s.
        times.sort()
        for k, at in enumerate(times, start=1):
            assert at >= (k - 2) / rate - 0.05, (k, times)
        assert proxy.count("worker.exited") == 0


async def upgrade(proxy: Running, source: str, stack: AsyncExitStack,
                  opened: list[ClientConnection]) -> int:
    """One upgrade from the address *source*: 101 (the connection echoed once and
    kept in *opened*, open until *stack* ends) or the status it was refused with."""
    try:
        ws = await stack.enter_async_context(connect(proxy.url, local_addr=(source, 0)))
    except InvalidStatus as exc:
        return exc.response.status_code
    await echo(ws)
    opened.append(ws)
    return 101


async def test_limits_are_the_proxys(tmp_path: Path) -> None:
    async with workers(tmp_path, limits="{max_connections: 4, max_connections_per_ip: 2}"
                       ) as (proxy, admin, path), AsyncExitStack() as stack:
        admitted: list[ClientConnection] = []

        async def attempt(source: str) -> int:
            return await upgrade(proxy, source, stack, admitted)

        # One address: 2 for the proxy, then 4 in all, wherever they land.
        assert [await attempt("127.0.0.1") for _ in range(6)].count(101) == 2
        statuses = [await attempt(f"127.0.0.{last_byte}") for last_byte in range(2, 10)]
        assert statuses.count(101) == 2
        assert set(statuses) == {101, 503}
        assert len(await admin.connections()) == 4
        for ws in admitted:
            await ws.close()
        await proxy.wait_for(lambda: proxy.count("connection.closed") == len(admitted),
                             "the closes done")

        # admission: 1 upgrade a second for the proxy (burst 2: one for each worker)
        write(path, path.read_text() + "admission: {max_upgrade_rate: 1, burst: 2}\n")
        assert await admin.json("POST", "/reload", {}) == (200, {"reloaded": True})
        await proxy.wait_for(lambda: proxy.count("config.reloaded") == 2, "both reloaded")
        admitted.clear()
        started = anyio.current_time()
        for last_byte in range(20, 30):
            await attempt(f"127.0.0.{last_byte}")
        elapsed = anyio.current_time() - started
        assert 1 <= len(admitted) <= 2 + elapsed * 1, (len(admitted), elapsed)


async def test_the_connection_limits_count_every_workers_connections(
        tmp_path: Path) -> None:
    """Whichever worker the kernel hands them to: one worker alone takes all of a
    limit, and a worker counts what the other one holds."""
    async with workers(tmp_path, limits="{max_connections: 3, max_connections_per_ip: 2}"
                       ) as (proxy, _, _), AsyncExitStack() as stack:
        first, second = (r["pid"] for r in proxy.events("worker.ready"))
        opened: list[ClientConnection] = []

        async def attempt(source: str) -> int:
            return await upgrade(proxy, source, stack, opened)

        with stopped(first):  # the second worker takes these
            assert [await attempt("127.0.0.2") for _ in range(2)] == [101, 101]
        with stopped(second):  # the first one: the address is full, one slot is left
            assert [await attempt(f"127.0.0.{n}") for n in (2, 3, 4)] == [503, 101, 503]
        await opened[0].close()  # the second worker's
        await proxy.wait_for(lambda: proxy.count("connection.closed") == 1, "a slot back")
        with stopped(second):
            assert [await attempt(f"127.0.0.{n}") for n in (2, 4)] == [101, 503]


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The worker *pid* stopped (SIGSTOP) for the block: the other one accepts."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_killed_worker_replaced_sighup_and_sigterm(tmp_path: Path) -> None:
    async with workers(tmp_path, drain="{spread: 1s, timeout: 10s}") as (
            proxy, admin, path), AsyncExitStack() as stack:
        clients = await open_on_both(proxy, admin, stack, least=2)
        conns = await admin.connections()
        victim = conns[0]["pid"]
        lost = {c["client"] for c in conns if c["pid"] == victim}
        os.kill(victim, signal.SIGKILL)
        for source, ws in clients.items():
            if source in lost:  # no close frame: 1006
                with pytest.raises(ConnectionClosed) as info:
                    with anyio.fail_after(WAIT):
                        await ws.recv()
                assert info.value.rcvd is None
            else:
                await echo(ws)
        exited = await proxy.wait_for_event("worker.exited")
        assert (exited["pid"], exited["reason"], exited["connections_cut"]) == (
            victim, "killed", len(lost))
        # Its replacement killed at once: a crash, restarted after a back-off.
        await proxy.wait_for(lambda: proxy.count("worker.started") == 3, "a replacement")
        os.kill(proxy.events("worker.started")[2]["pid"], signal.SIGKILL)
        await proxy.wait_for(lambda: proxy.count("worker.exited") == 2, "it exited")
        backoff = 0.0  # doubling from 0.5 s while a worker lives under 10 s
        for record in proxy.events("worker.exited"):
            backoff = max(0.5, backoff * 2) if record["lived_s"] < 10 else 0.0
            assert record["restart_in_s"] == backoff, record
        await proxy.wait_for(lambda: proxy.count("worker.ready") == 3, "a new worker")
        survivors = [ws for source, ws in clients.items() if source not in lost]
        for ws in survivors:
            await echo(ws)
        _, metrics = await admin.text("GET", "/metrics")
        assert sample(metrics, 'wsproxy_worker_exits_total{reason="killed"}') == 2
        assert sample(metrics, "wsproxy_worker_connections_cut_total") == len(lost)
        assert sample(metrics, "wsproxy_workers") == 2
        assert len({c["pid"] for c in await admin.connections()} - {victim}) >= 1

        # SIGHUP: an invalid file is refused once, by the parent; a valid one reloads both.
        good = path.read_text()
        write(path, good + "limits: {max_connections: -1}\n")
        proxy.signal(signal.SIGHUP)
        refused = await proxy.wait_for_event("config.reload_refused")
        assert "worker" not in refused
        assert proxy.count("config.reloaded") == 0
        write(path, good.replace("spread: 1s", "spread: 2s"))
        proxy.signal(signal.SIGHUP)
        await proxy.wait_for(lambda: proxy.count("config.reloaded") == 2, "both reloaded")
        assert {r["worker"] for r in proxy.events("config.reloaded")} == {0, 1}
        assert proxy.count("config.reload_refused") == 1

        # SIGTERM: every worker drains; the parent exits 0 after the last connection.
        proxy.signal(signal.SIGTERM)
        for ws in survivors:
            assert (await closed_by_proxy(ws, WAIT))[0] == 1001
        assert await proxy.wait(WAIT) == 0
        assert proxy.count("worker.exited") == 4  # the two killed, then both at the end


async def test_tls_listener_inherited_by_both_workers(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "proxy.pem", tmp_path / "proxy.key"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    async with backend() as b:
        text = config_text(b).replace(
            "port: 0}", f'port: 0, tls: {{certfile: "{certfile}", keyfile: "{keyfile}"}}}}', 1)
        path = tmp_path / "wsproxy.yaml"
        write(path, text)
        async with proxy_process(path, tmp_path, stop_grace=5.0) as proxy, \
                AsyncExitStack() as stack:
            await proxy.wait_for(lambda: proxy.count("proxy.listening") >= 3, "all listening")
            url = f"wss://{proxy.addresses[0]}"
            await echo(await stack.enter_async_context(connect(url, ssl=client)))
            await proxy.wait_for(lambda: proxy.count("connection.opened") == 1, "its line")
            [first] = {r["pid"] for r in proxy.events("connection.opened")}
            os.kill(first, signal.SIGSTOP)  # the other worker has to take the next one
            try:
                await echo(await stack.enter_async_context(connect(url, ssl=client)))
            finally:
                os.kill(first, signal.SIGCONT)
            await proxy.wait_for(lambda: proxy.count("connection.opened") == 2, "its line")
            assert len({r["pid"] for r in proxy.events("connection.opened")}) == 2


async def test_workers_drain_when_the_parent_is_killed(tmp_path: Path) -> None:
    async with workers(tmp_path, drain="{spread: 0s, timeout: 5s}") as (proxy, admin, _), \
            AsyncExitStack() as stack:
        clients = await open_on_both(proxy, admin, stack, least=2)
        proxy.signal(signal.SIGKILL)  # the workers get SIGTERM from the kernel
        for ws in clients.values():
            assert (await closed_by_proxy(ws, WAIT))[0] == 1001
        await proxy.wait_for(lambda: proxy.count("proxy.stopped") == 2, "both stopped")
        assert {r["worker"] for r in proxy.events("proxy.stopped")} == {0, 1}


async def test_a_worker_that_cannot_start_stops_the_proxy(tmp_path: Path) -> None:
    path = tmp_path / "wsproxy.yaml"
    write(path, "listen: {host: 127.0.0.1, port: 0}\nadmin: {host: 127.0.0.1, port: 0}\n"
                'backends: [{name: b, url: "wss://127.0.0.1:9"}]\nworkers: 2\n'
                f"backend_tls: {{ca_file: {tmp_path / 'missing.pem'}}}\n")
    done = await run_cli_async("run", "-c", str(path))
    assert done.returncode == 1  # as one process that cannot load the file
    assert b"No such file" in done.stderr
    assert b"worker.failed_to_start" in done.stdout



async def drained_in_both(proxy: Running, admin: Admin, drain: str) -> None:
    """Each worker, the replacement too, holds the drain (its own ``GET /drain`` entry),
    and upgrades from fresh addresses, whichever worker takes them, are refused."""
    status, body = await admin.json("GET", "/drain")
    assert status == 200, body
    assert {d["worker"] for d in body["drains"] if d["name"] == drain} == {0, 1}, body
    for n in range(8):
        with pytest.raises(InvalidStatus) as info:
            async with connect(proxy.url, local_addr=(f"127.0.1.{n + 2}", 0)):
                pass
        assert info.value.response.status_code == 503


async def test_a_replaced_worker_starts_with_the_operators_drains(tmp_path: Path) -> None:
    async with workers(tmp_path) as (proxy, admin, _):
        [name] = proxy.events("proxy.listening")[0]["backends"]
        assert (await admin.json("POST", f"/backends/{name}/drain", {}))[0] == 200
        # A worker killed while the backend is drained: its replacement drains it too.
        os.kill(proxy.events("worker.ready")[0]["pid"], signal.SIGKILL)
        await proxy.wait_for(lambda: proxy.count("worker.ready") == 3, "a replacement")
        await drained_in_both(proxy, admin, name)
        assert (await admin.json("POST", f"/backends/{name}/undrain", {}))[0] == 200
        async with connect(proxy.url) as ws:
            await echo(ws)

        # The same for the whole proxy.
        assert (await admin.json("POST", "/drain", {"spread": "0s"}))[0] == 200
        os.kill(proxy.events("worker.ready")[1]["pid"], signal.SIGKILL)
        await proxy.wait_for(lambda: proxy.count("worker.ready") == 4, "a replacement")
        await drained_in_both(proxy, admin, "proxy")
        assert (await admin.json("GET", "/readyz"))[0] == 503
        # Undrained: every worker, the replacement too, is ready and takes upgrades.
        assert (await admin.json("POST", "/undrain", {}))[0] == 200
        assert (await admin.json("GET", "/readyz"))[0] == 200
        assert (await admin.json("GET", "/drain"))[1]["drains"] == []
        for n in range(8):
            async with connect(proxy.url, local_addr=(f"127.0.2.{n + 2}", 0)) as ws:
                await echo(ws)


async def test_a_replaced_worker_runs_the_config_last_validated(tmp_path: Path) -> None:
    """The file changed on disk without a SIGHUP (a ConfigMap updated, say) is not
    what a replacement runs: it runs what its sibling runs, the file as last validated;
    the next SIGHUP validates the new one (here refused: broken)."""
    async with workers(tmp_path) as (proxy, _, path):
        write(path, path.read_text() + "limits: {max_connections: -1}\n")
        os.kill(proxy.events("worker.ready")[0]["pid"], signal.SIGKILL)
        await proxy.wait_for(lambda: proxy.count("worker.ready") == 3, "a replacement")
        assert proxy.count("worker.failed_to_start") == 0
        for n in range(8):
            async with connect(proxy.url, local_addr=(f"127.0.3.{n + 2}", 0)) as ws:
                await echo(ws)
        proxy.signal(signal.SIGHUP)
        refused = await proxy.wait_for_event("config.reload_refused")
        assert "max_connections" in " ".join(refused["errors"])


async def test_a_resume_reaches_the_worker_that_holds_its_session(tmp_path: Path) -> None:
    """The client's socket is cut; it comes back while the worker that holds its
    session is stopped (SIGSTOP), so the other one accepts it and hands it over."""
    async with workers(tmp_path, resume="{enabled: true}") as (proxy, admin, _):
        gate = anyio.Event()
        events = Events()
        session = ResumableSession(proxy.url, before_resume=gate.wait, on_event=events)
        async with session:
            await session.send("one")
            assert await session.recv() == "one"
            [held] = await admin.connections()
            cut(session)
            with anyio.fail_after(WAIT):
                # Nothing to wait on but the parent's view: no line marks a hold.
                while [c.get("resume") for c in await admin.connections()] != ["held"]:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            os.kill(held["pid"], signal.SIGSTOP)
            try:
                gate.set()
                await proxy.wait_for(lambda: proxy.count("resume.handed_over") == 1,
                                     "the other worker hands it over")
            finally:
                os.kill(held["pid"], signal.SIGCONT)
            await events.until(Resumed)
            [line] = proxy.events("resume.handed_over")
            assert line["pid"] != held["pid"]
            assert line["to_worker"] == held["worker"]
            await session.send("two")
            assert await session.recv() == "two"
            [now] = await admin.connections()
            assert (now["pid"], now["resume"]) == (held["pid"], "attached")
        assert not events.of(ResumeFailed)
