"""A rollout rehearsal without a cluster: one of two pods deleted the Kubernetes way.

Two "pods", A and B, each an app (``wsproxy echo-backend``) behind its own sidecar
(``wsproxy run``), as in deploy/kubernetes/overlays/sidecar. In front of them a
"load balancer": the list of pods whose ``GET /readyz`` on the main port answered 200
at the last probe (a probe every 100 ms, failureThreshold 1: what a kubelet and the
endpoints controller do, faster). Twenty clients connect through it round robin, each
sending a numbered message every 50 ms and checking the echoes; on a close with a
reconnect hint they wait the hint (capped), reconnect through a ready pod, and resend
what was not echoed yet.

Then pod A is deleted the way the kubelet deletes a pod (deploy/README.md, "The
termination sequence"): at t = 0 SIGTERM to wsproxy (no preStop hook) and, at the same
moment, the app container's preStop hook (the shipped wsproxy-prestop.sh: POST /drain,
then GET /drain?wait=10s on A's admin port); the app gets its SIGTERM only when the
hook has returned. Checked: A turns unready at once and the load balancer drops it;
every client of A gets 1001 with a ``retry-after-ms=`` hint (after ``drain.delay``),
reconnects to B and goes on; no message is lost, doubled or reordered; A's wsproxy
exits 0 within its grace period; the app outlived the drain (no 1006/1014 anywhere).

Processes are tests/integration/proxy_process.py's ``started`` (killed by PID if they
outlive the test); progress comes from log lines, probes, close frames and events,
never from a sleep. The sleeps here are the probe period, the clients' send pace and
the reconnect hint: the behaviour being rehearsed, not synchronisation.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.integration.peers import raw_exchange
from tests.integration.proxy_process import Running, started

pytestmark = pytest.mark.anyio
log = logging.getLogger(__name__)

PRESTOP = (Path(__file__).parents[2] / "deploy" / "kubernetes" / "overlays" / "sidecar"
           / "wsproxy-prestop.sh")
CLIENTS = 20
DELAY, SPREAD, TIMEOUT = 1.0, 2.0, 4.0
#: terminationGracePeriodSeconds for these settings: delay + timeout + 5 s margin.
GRACE = DELAY + TIMEOUT + 5.0
#: The preStop hook's cap on its wait (WSPROXY_DRAIN_WAIT).
HOOK_WAIT = 10
PROBE_PERIOD = 0.1
PROBE_TIMEOUT = 1.0
SEND_PERIOD = 0.05
#: The clients wait the close's retry-after-ms hint, at most this long.
HINT_CAP = 1.0
#: Echoes a client must see on its current connection to count as "going on".
GOING_ON = 5
#: Bound on each step (what normally takes a fraction of a second to a few seconds),
#: generous for a loaded machine: a bound that fails the test, not a pace.
WAIT = 20.0
HINT = re.compile(r"^proxy draining; retry-after-ms=(\d+)$")


# The pods ---------------------------------------------------------------------------------


@dataclass
class Pod:
    name: str
    app: Running
    proxy: Running
    port: int
    admin: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def events(self) -> list[dict[str, Any]]:
        """The JSON lines of the proxy's stdout so far."""
        return self.proxy.records

    @property
    def stderr(self) -> str:
        return self.proxy.stderr_so_far


async def listening(proxy: Running) -> tuple[str, str]:
    """The main and admin addresses, from ``proxy.listening`` and ``admin.listening``."""
    [main] = (await proxy.wait_for_event("proxy.listening"))["addresses"]
    admin = (await proxy.wait_for_event("admin.listening"))["address"]
    return main, admin


@asynccontextmanager
async def pods(tmp_path: Path, *names: str) -> AsyncIterator[list[Pod]]:
    """Start every pod's app, then every pod's wsproxy in front of it (all at once)."""
    async with started("echo-backend", "--port", "0") as app_a, \
            started("echo-backend", "--port", "0") as app_b:
        apps = dict(zip(names, [app_a, app_b], strict=True))
        configs = {}
        for name, app in apps.items():
            address = (await app.wait_for_event("echo.listening"))["address"]
            configs[name] = tmp_path / f"pod-{name}.yaml"
            configs[name].write_text(
                "listen: {host: 127.0.0.1, port: 0}\n"
                "admin: {host: 127.0.0.1, port: 0}\n"
                "backends:\n"
                f'  - {{name: app, url: "ws://{address}"}}\n'
                f"drain: {{delay: {DELAY}s, spread: {SPREAD}s, timeout: {TIMEOUT}s}}\n"
                "logging: {level: info, format: json}\n",
                encoding="utf-8",
            )
        async with started("run", "-c", str(configs[names[0]])) as proxy_a, \
                started("run", "-c", str(configs[names[1]])) as proxy_b:
            result = []
            for name, proxy in zip(names, [proxy_a, proxy_b], strict=True):
                main, admin = await listening(proxy)
                result.append(Pod(name, apps[name], proxy, int(main.rsplit(":", 1)[1]),
                                  f"http://{admin}"))
            yield result


# The load balancer --------------------------------------------------------------------------


class Watch:
    """Wake whoever waits for a condition whenever something it may depend on changed."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def until(self, predicate: Callable[[], bool], bound: float, what: str) -> None:
        try:
            with anyio.fail_after(bound):
                while not predicate():
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"not within {bound}s: {what}") from None


async def readyz(port: int) -> int | None:
    """One readiness probe on the main port: the status, or None (refused, no answer)."""
    try:
        with anyio.fail_after(PROBE_TIMEOUT):
            answer = await raw_exchange(
                port, b"GET /readyz HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n",
                read_until_eof=False)
    except (OSError, anyio.BrokenResourceError):  # TimeoutError is an OSError
        return None
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    return int(match.group(1)) if match else None


class LoadBalancer:
    """Round robin over the pods whose last readiness probe answered 200."""

    def __init__(self, pods: list[Pod], watch: Watch) -> None:
        self.pods = pods
        self.watch = watch
        self.ready: set[str] = set()
        #: (time, pod, status) of every probe whose answer differed from the one before.
        self.changes: list[tuple[float, str, int | None]] = []
        #: (time, pod) of every pick.
        self.picks: list[tuple[float, str]] = []
        self._turn = 0

    async def probe(self, pod: Pod) -> None:
        last: int | str | None = "never"
        while True:
            status = await readyz(pod.port)
            if status != last:
                self.changes.append((anyio.current_time(), pod.name, status))
                last = status
            if status == 200:
                self.ready.add(pod.name)
            else:
                self.ready.discard(pod.name)
            self.watch.notify()
            await anyio.sleep(PROBE_PERIOD)  # the probe's period

    async def pick(self) -> Pod:
        await self.watch.until(lambda: bool(self.ready), WAIT, "a ready pod")
        ready = [pod for pod in self.pods if pod.name in self.ready]
        pod = ready[self._turn % len(ready)]
        self._turn += 1
        self.picks.append((anyio.current_time(), pod.name))
        return pod

    def first(self, pod: str, status: int | None, after: float) -> float | None:
        return next((t for t, name, st in self.changes
                     if name == pod and st == status and t >= after), None)


# The clients ------------------------------------------------------------------------------


@dataclass
class Session:
    """One connection of a client, through one pod."""

    pod: str
    opened: float
    echoes: int = 0
    #: (time, code or None when no close frame came, reason) once it has closed.
    close: tuple[float, int | None, str] | None = None
    #: Closed by the client itself at the end of the test.
    final: bool = False
    #: Messages sent again on this connection (not echoed before the last close).
    resent: int = 0


class Client:
    """Numbered messages every SEND_PERIOD; resends what was not echoed after a reconnect."""

    def __init__(self, n: int, lb: LoadBalancer, stop: anyio.Event, watch: Watch) -> None:
        self.name = f"c{n:02d}"
        self.lb = lb
        self.stop = stop
        self.watch = watch
        self.next_seq = 0
        self.unacked: deque[int] = deque()
        self.received: list[int] = []
        self.sessions: list[Session] = []
        self.failures: list[tuple[float, str, str]] = []
        self.strays: list[str] = []
        self.acked_all = anyio.Event()
        self.done = False

    def _check_done(self) -> None:
        if self.stop.is_set() and not self.unacked:
            self.acked_all.set()

    async def run(self) -> None:
        while not self.done:
            pod = await self.lb.pick()
            try:
                ws = await connect(f"{pod.url}/{self.name}", ping_interval=None,
                                   open_timeout=10, close_timeout=5)
            except (InvalidHandshake, OSError) as exc:
                self.failures.append((anyio.current_time(), pod.name, repr(exc)))
                assert len(self.failures) < 20, self.failures
                await anyio.sleep(0.1)  # the client's back-off before its next try
                continue
            session = Session(pod.name, anyio.current_time())
            self.sessions.append(session)
            self.watch.notify()
            async with ws, anyio.create_task_group() as tg:
                session.resent = len(self.unacked)
                tg.start_soon(self._send, ws)
                await self._receive(ws, session)
                tg.cancel_scope.cancel()
            self.watch.notify()
            if not session.final:
                assert session.close is not None
                hint = re.search(r"retry-after-ms=(\d+)", session.close[2])
                await anyio.sleep(min(int(hint.group(1)) / 1000, HINT_CAP) if hint else 0.1)

    async def _send(self, ws: ClientConnection) -> None:
        try:
            for seq in list(self.unacked):  # not echoed before the last close: again
                await ws.send(f"{self.name}:{seq}")
            while True:
                with anyio.move_on_after(SEND_PERIOD):  # the pace of the messages
                    await self.stop.wait()
                if self.stop.is_set():
                    break
                seq = self.next_seq
                self.next_seq += 1
                self.unacked.append(seq)
                await ws.send(f"{self.name}:{seq}")
            self._check_done()
            await self.acked_all.wait()
            self.done = True
            await ws.close()
        except ConnectionClosed:
            pass  # the receiver records the close; what was not echoed is sent again

    async def _receive(self, ws: ClientConnection, session: Session) -> None:
        try:
            while True:
                message = await ws.recv()
                name, _, seq = str(message).partition(":")
                if name != self.name or not seq.isdigit():
                    self.strays.append(str(message))
                    continue
                self.received.append(int(seq))
                if self.unacked and self.unacked[0] == int(seq):
                    self.unacked.popleft()
                session.echoes += 1
                self.watch.notify()
                self._check_done()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            session.close = (anyio.current_time(), rcvd.code if rcvd else None,
                             rcvd.reason if rcvd else "")
            session.final = self.done


# The rehearsal ----------------------------------------------------------------------------


@pytest.mark.timeout(120)  # about 7 s; far more on a loaded machine
async def test_deleting_a_pod_moves_its_clients_to_the_other_without_losing_a_message(
    tmp_path: Path,
) -> None:
    started_at = anyio.current_time()
    async with pods(tmp_path, "A", "B") as (a, b), anyio.create_task_group() as tg:
        watch = Watch()
        lb = LoadBalancer([a, b], watch)
        for pod in (a, b):
            tg.start_soon(lb.probe, pod)
        await watch.until(lambda: lb.ready == {"A", "B"}, WAIT, "both pods ready")

        stop = anyio.Event()
        clients = [Client(n, lb, stop, watch) for n in range(CLIENTS)]
        hook: dict[str, Any] = {}
        app_a: dict[str, Any] = {}
        proxy_a: dict[str, Any] = {}

        async def prestop_then_sigterm_the_app() -> None:
            env = {**os.environ, "WSPROXY_ADMIN": a.admin, "WSPROXY_DRAIN_WAIT": str(HOOK_WAIT)}
            with anyio.fail_after(HOOK_WAIT + 5):
                result = await anyio.run_process(["sh", str(PRESTOP)], env=env, check=False)
            hook.update(at=anyio.current_time(), rc=result.returncode,
                        stderr=result.stderr.decode("utf-8", "replace"))
            app_a["alive_when_hook_returned"] = a.app.process.returncode is None
            os.kill(a.app.pid, signal.SIGTERM)  # the kubelet, once the hook has returned
            app_a["rc"] = await a.app.wait()

        async def proxy_exit() -> None:
            try:
                with anyio.fail_after(GRACE):
                    proxy_a["rc"] = await a.proxy.process.wait()
            except TimeoutError:
                proxy_a["rc"] = "still running at the end of the grace period"
            proxy_a["at"] = anyio.current_time()

        with anyio.fail_after(3 * WAIT):  # the whole rehearsal; each step has its own bound
            async with anyio.create_task_group() as clients_tg:
                for client in clients:
                    clients_tg.start_soon(client.run)
                await watch.until(
                    lambda: all(c.sessions and c.sessions[-1].echoes >= GOING_ON
                                for c in clients),
                    WAIT, "every client connected and echoing")
                of_a = [c for c in clients if c.sessions[0].pod == "A"]
                of_b = [c for c in clients if c.sessions[0].pod == "B"]
                assert len(of_a) == len(of_b) == CLIENTS // 2  # round robin

                # Pod A is deleted: SIGTERM to wsproxy and the app's preStop hook at once.
                async with anyio.create_task_group() as deletion:
                    t0 = anyio.current_time()
                    deletion.start_soon(prestop_then_sigterm_the_app)
                    os.kill(a.proxy.pid, signal.SIGTERM)
                    deletion.start_soon(proxy_exit)
                await watch.until(
                    lambda: all(c.sessions[-1].pod == "B" and c.sessions[-1].echoes >= GOING_ON
                                for c in clients),
                    WAIT, "every client going on through pod B")
                stop.set()  # the clients wait for their last echoes and close (1000)

        # Pod B goes too, the same way (without clients, it only waits out its delay).
        b_deleted = anyio.current_time()
        os.kill(b.proxy.pid, signal.SIGTERM)
        b_rc = await b.proxy.wait()
        os.kill(b.app.pid, signal.SIGTERM)
        b_app_rc = await b.app.wait()
        tg.cancel_scope.cancel()
    took = anyio.current_time() - started_at

    # Timings, relative to the SIGTERM.
    unready = lb.first("A", 503, t0)
    closes = [(s.close[0], s.close[1], s.close[2]) for c in of_a for s in c.sessions
              if s.pod == "A" and s.close is not None]
    last_close = max(t for t, _, _ in closes) if closes else None
    first_close = min(t for t, _, _ in closes) if closes else None

    def rel(t: float | None) -> str:
        return "never" if t is None else f"{t - t0:.2f}s"

    timings = (f"SIGTERM -> unready (503 probe) {rel(unready)}, first close {rel(first_close)}, "
               f"last close {rel(last_close)}, proxy exit {rel(proxy_a.get('at'))}, "
               f"preStop returned {rel(hook.get('at'))}; "
               f"{sum(c.next_seq for c in clients)} messages, "
               f"{sum(s.resent for c in clients for s in c.sessions)} resent; test {took:.1f}s")
    log.warning("rollout timings: %s", timings)

    # Pod A turned unready at once and the load balancer dropped it: before drain.delay
    # was over and the first client was closed (an order, which no slow machine turns).
    assert unready is not None, lb.changes
    assert first_close is not None
    assert unready <= first_close, timings
    assert not [t for t, pod in lb.picks if pod == "A" and t > unready], lb.picks
    # B stayed ready until it was deleted in turn.
    assert [st for t, pod, st in lb.changes if pod == "B" and t < b_deleted] == [200]

    # Every client of A: one 1001 with a hint, after drain.delay, then on B for good.
    assert len(closes) == len(of_a), [c.sessions for c in of_a]
    for _, code, reason in closes:
        assert code == 1001, closes
        match = HINT.match(reason)
        assert match is not None, reason
        assert 0 <= int(match.group(1)) <= 1000, reason
    # Not before drain.delay: stale load balancers may still send clients meanwhile.
    assert first_close is not None
    assert first_close - t0 >= DELAY - 0.05, timings
    for client in of_a:
        assert [s.pod for s in client.sessions] == ["A", "B"], (client.name, client.sessions)
        assert client.sessions[1].opened >= client.sessions[0].close[0]  # type: ignore[index]
    for client in of_b:
        assert [s.pod for s in client.sessions] == ["B"], (client.name, client.sessions)
    # No other close than the 1001s and the clients' own closes at the end: no 1006
    # (a connection lost without a close frame), no 1014 (the app gone before wsproxy).
    for client in clients:
        assert client.sessions[-1].final, (client.name, client.sessions)
        assert client.sessions[-1].close is not None
        assert client.sessions[-1].close[1] == 1000, (client.name, client.sessions)
        assert not client.failures, (client.name, client.failures)
        assert not client.strays, (client.name, client.strays)

    # No message lost, doubled or reordered: every number echoed once, in order.
    for client in clients:
        assert client.received == list(range(client.next_seq)), client.name
        assert not client.unacked, client.name
        assert client.next_seq >= 2 * GOING_ON

    # A's wsproxy exited 0 within the grace period, after its last close, cleanly.
    assert proxy_a["rc"] == 0, (proxy_a, a.stderr)
    assert proxy_a["at"] - t0 <= GRACE, timings
    assert last_close is not None
    assert proxy_a["at"] >= last_close - 0.05
    events = a.proxy.event_names()
    assert "drain.started" in events, events
    assert "proxy.stopped" in events, events
    closing = [r for r in a.events if r.get("event") == "drain.closing"]
    assert [r["connections"] for r in closing] == [len(of_a)], closing
    assert "drain.timeout" not in events, events
    assert "Traceback" not in a.stderr

    # The app outlived the drain: its preStop hook waited for the last close, the app
    # was still serving then, and it stopped cleanly on its own SIGTERM afterwards.
    assert hook["rc"] == 0, hook
    assert "sleeping" not in hook["stderr"], hook  # it reached the admin API and waited
    assert "nothing listens" not in hook["stderr"], hook
    assert hook["at"] >= last_close - 0.05, (timings, hook)
    # GET /drain?wait= answered "nothing left", or was cut off as wsproxy exited.
    assert '"left": 0' in hook["stderr"] or "went away" in hook["stderr"], hook
    assert app_a == {"alive_when_hook_returned": True, "rc": 0}, app_a

    # Pod B, deleted last with no clients left, stops cleanly too.
    assert (b_rc, b_app_rc) == (0, 0)
