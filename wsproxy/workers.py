"""``workers: N``: a parent process and N worker processes, one proxy to the outside.

The parent binds the listening sockets once and hands them to each worker (inherited
descriptors, not ``SO_REUSEPORT``): one accept queue that every worker takes from, so
a worker that dies loses no connection waiting in its own queue, and the port stays
bound while it is replaced. Each worker is ``wsproxy _worker``, a process of its own
(spawned, not forked: nothing of the parent's event loop or threads is inherited)
that runs today's ``serve()`` on those sockets with its share of the rate limits
(``worker_config``), the connection limits counted over all of them
(wsproxy.io.shared_counts), and its own admin listener on 127.0.0.1, private to the parent
(a random token that only the parent knows).

The parent serves the admin API on ``admin.host:admin.port`` (``ParentAdmin``): it
checks the operator's token, asks every live worker the same question and merges the
answers (``/connections`` joined, ``/backends`` summed, ``/metrics`` one scrape with
every sample summed, a drain or a close fanned out to all). It restarts a worker that
exits (with a back-off while they crash), forwards SIGTERM (each worker drains; the
parent exits 0 when all are done) and turns SIGHUP into one validated reload.

A worker that loses its parent (killed with SIGKILL) is sent SIGTERM by the kernel
(``PR_SET_PDEATHSIG``) and drains as on any stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Final
from urllib.parse import urlencode

import anyio
import h11
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from wsproxy.admin.api import JSON, MAX_WAIT, HTTPError, Request, Response, authorize
from wsproxy.admin.server import serve_admin
from wsproxy.auth.factory import build_authenticator
from wsproxy.config import ProxyConfig, parse_config_text, read_config_text
from wsproxy.errors import ConfigError
from wsproxy.io.listen_socket import listening_sockets
from wsproxy.io.shared_counts import SharedCounts, table_size
from wsproxy.log import get_logger
from wsproxy.supervisor import LISTEN_BACKLOG, STARTUP_ONLY, Drained, log_restart_needed
from wsproxy.tls import backend_context, server_context

log = get_logger()

#: The environment variable that carries the parent's private admin token to a worker.
TOKEN_ENV: Final = "WSPROXY_WORKER_TOKEN"
#: A worker that lived less than this was a crash: the next start waits (doubling).
CRASH_WINDOW: Final = 10.0
FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 30.0
#: How long a worker's admin listener may take to answer (but GET /drain?wait).
ASK_TIMEOUT: Final = 10.0
#: How long a worker may take to start listening before it is killed and restarted.
START_TIMEOUT: Final = 60.0
#: Metrics merged by max rather than summed (a flag, a build label).
_NOT_SUMMED: Final = {"wsproxy_draining": max, "wsproxy_build_info": max,
                      "wsproxy_backend_healthy": min}


# A worker's config --------------------------------------------------------------------


def _share(total: int, index: int, count: int) -> int:
    """Worker *index*'s share of *total* (0: no limit); the shares sum to *total*, but
    none is under 1."""
    if total == 0:
        return 0
    return max(1, total // count + (1 if index < total % count else 0))


def worker_config(config: ProxyConfig, index: int, count: int, token: str) -> ProxyConfig:
    """What worker *index* of *count* runs under: its share of the proxy's upgrade
    rate and close rate (the connection limits are the proxy's, counted over all the
    workers: wsproxy.io.shared_counts), and its private admin listener."""
    admission, drain = config.admission, config.drain
    return dataclasses.replace(
        config,
        admin=dataclasses.replace(config.admin, host="127.0.0.1", port=0, token=token),
        admission=dataclasses.replace(
            admission,
            max_upgrade_rate=admission.max_upgrade_rate / count,
            burst=_share(admission.burst, index, count),
        ),
        drain=dataclasses.replace(drain, max_close_rate=drain.max_close_rate / count),
        workers=1,
    )


#: The signal the kernel sends a worker whose parent died (PR_SET_PDEATHSIG).
PARENT_DIED: Final = signal.SIGUSR2


def die_with_parent(parent: int) -> None:
    """SIGTERM to this process, once, when its parent dies (Linux); exits if it
    already has.

    The kernel sends the death signal each time the *thread* that is this process's
    parent exits, and a killed parent's threads exit one by one, each passing its
    children on to the next: a worker got SIGTERM two or three times. One that came
    after the drain, once the loop had given SIGTERM back to its default action,
    killed the worker before it wrote its last lines. So the death signal is
    PARENT_DIED, which the worker turns into one SIGTERM (a drain) and ignores after.
    """

    def parent_died(signum: int, frame: object) -> None:
        signal.signal(PARENT_DIED, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(PARENT_DIED, parent_died)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, PARENT_DIED)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(1)


# The parent -----------------------------------------------------------------------------


@dataclasses.dataclass
class Worker:
    """One live worker: its process and its private admin port."""

    index: int
    pid: int
    admin_port: int


class Parent:
    """The parent of the workers: their processes, the sockets, the signals."""

    def __init__(self, config: ProxyConfig, config_path: str,
                 sockets: list[socket.socket]) -> None:
        self.config = config
        self.startup_config = config
        self.config_path = config_path
        #: The text of the file as the parent last validated it, which every worker
        #: reads (at its start, and on each reload the parent asks for): a worker
        #: started after the file changed on disk, unvalidated, runs what its
        #: siblings run, and not a broken file it could not start with.
        self.validated = _ValidatedCopy(config_path)
        self.sockets = sockets
        self.count = config.workers
        self.token = secrets.token_urlsafe(24)
        self.live: dict[int, Worker] = {}
        self.stopping = False
        #: A worker exited before it ever listened: the proxy does not start (exit 1).
        self.failed_to_start = False
        self.exits: Counter[str] = Counter()
        #: Connections that workers held when they exited unasked (their clients cut).
        self.cut = 0
        self.counts = SharedCounts(self.count, table_size(config.limits.max_connections))
        self.started_once = [anyio.Event() for _ in range(self.count)]
        self._pids: dict[int, int] = {}
        #: The operator's drains that every worker took: a replacement starts with them.
        self.drained = Drained()

    # Workers…

    def _command(self, index: int, report_fd: int) -> list[str]:
        fds = ",".join(str(s.fileno()) for s in self.sockets)
        drained = ["--drained-proxy"] if self.drained.proxy else []
        for name in sorted(self.drained.backends):
            drained += ["--drained-backend", name]
        return [sys.executable, "-m", "wsproxy", "_worker", "-c", self.validated.path,
                "--index", str(index), "--count", str(self.count), "--fds", fds,
                "--report-fd", str(report_fd), "--counts-fd", str(self.counts.fd),
                "--parent", str(os.getpid()), "--handoff-dir", self.validated.directory,
                *drained]

    def drains_done(self, method: str, path: str) -> None:
        """Every live worker took the drain or undrain *path* (``/drain``,
        ``/backends/NAME/undrain``...): remember it for the workers started later."""
        if method != "POST":
            return
        parts = path.strip("/").split("/")
        drained = self.drained
        if parts in (["drain"], ["undrain"]):
            self.drained = dataclasses.replace(drained, proxy=parts == ["drain"])
        elif len(parts) == 3 and parts[0] == "backends" and parts[2] in ("drain", "undrain"):
            name = {parts[1]}
            backends = drained.backends | name if parts[2] == "drain" else drained.backends - name
            self.drained = dataclasses.replace(drained, backends=backends)

    async def keep_worker(self, index: int) -> None:
        """Run worker *index* until the proxy stops, restarting it when it exits."""
        try:
            await self._keep_worker(index)
        finally:
            self.started_once[index].set()  # started or given up: nothing waits for it

    async def _keep_worker(self, index: int) -> None:
        backoff = 0.0
        while not self.stopping:
            read_fd, write_fd = os.pipe()
            try:
                process = await anyio.open_process(
                    self._command(index, write_fd), stdin=subprocess.DEVNULL, stdout=None,
                    stderr=None,
                    pass_fds=[*(s.fileno() for s in self.sockets), write_fd, self.counts.fd],
                    start_new_session=True, env={**os.environ, TOKEN_ENV: self.token},
                )
            finally:
                os.close(write_fd)
            started = time.monotonic()
            self._pids[index] = process.pid
            log.info("worker.started", worker=index, pid=process.pid)
            try:
                with anyio.move_on_after(START_TIMEOUT):
                    line = await anyio.to_thread.run_sync(_read_line, read_fd,
                                                          abandon_on_cancel=True)
                    if line.isdigit():
                        self.live[index] = Worker(index, process.pid, int(line))
                        log.info("worker.ready", worker=index, pid=process.pid)
                        self.started_once[index].set()
                if index not in self.live and process.returncode is None:
                    process.kill()  # never reported its admin port: try again
                status = await process.wait()
            finally:
                os.close(read_fd)
                self.live.pop(index, None)
                self._pids.pop(index, None)
            cut = self.counts.take(index)
            if self.stopping and status == 0:
                log.info("worker.exited", worker=index, pid=process.pid, status=status)
                return
            if not self.started_once[index].is_set() and not self.stopping:
                # as one process that fails to start: the proxy does not start
                log.error("worker.failed_to_start", worker=index, pid=process.pid,
                          status=status)
                self.failed_to_start = self.stopping = True
                self.signal_workers(signal.SIGTERM)
                break
            reason = "killed" if status < 0 else "failed" if status else "exited"
            self.exits[reason] += 1
            self.cut += cut
            lived = time.monotonic() - started
            backoff = (min(MAX_BACKOFF, max(FIRST_BACKOFF, backoff * 2))
                       if lived < CRASH_WINDOW else 0.0)
            log.warning("worker.exited", worker=index, pid=process.pid, status=status,
                        reason=reason, lived_s=round(lived, 3), connections_cut=cut,
                        restart_in_s=None if self.stopping else backoff)
            if self.stopping:
                return
            await anyio.sleep(backoff)

    def signal_workers(self, signum: int) -> None:
        for pid in list(self._pids.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            log.info("proxy.signal", signal=signal.Signals(signum).name)
            if signum == signal.SIGHUP:
                await self.reload()
                continue
            self.stopping = True
            self.signal_workers(signal.SIGTERM)  # a second one: the workers hurry

    # Reloading…

    def validate(self) -> tuple[ProxyConfig | None, list[str]]:
        """The config file, checked once here (as a worker would load it)."""
        try:
            text = read_config_text(self.config_path)
            config = parse_config_text(text)
            build_authenticator(config.auth)
            backend_context(config.backend_tls)
        except ConfigError as exc:
            return None, [str(p) for p in exc.problems]
        except OSError as exc:
            return None, [f"{exc}"]
        self.validated.write(text)
        return config, []

    async def reload(self) -> list[str]:
        """Validate the file once; valid, every worker reloads it. The errors, if not."""
        config, errors = self.validate()
        if config is None:
            log.error("config.reload_refused", errors=errors)
            return errors
        log_restart_needed(config, self.startup_config, (*STARTUP_ONLY, "workers"))
        self.config = config
        if config.discovery.dns is None:  # a backend removed, then back, is a new one
            names = {b.name for b in config.backends}
            self.drained = Drained(self.drained.proxy, self.drained.backends & names)
        answers = await self.ask_all("POST", "/reload", b"{}")
        failed = [e for _, status, body in answers if status != 200
                  for e in json.loads(body).get("errors", [])]
        return failed

    # Asking the workers…

    async def ask_all(self, method: str, target: str, body: bytes = b"",
                      bound: float = ASK_TIMEOUT) -> list[tuple[Worker, int, bytes]]:
        """The answer of every live worker to one request (a worker that does not answer
        is left out: it is dying, and will be replaced)."""
        answers: list[tuple[Worker, int, bytes]] = []

        async def ask(worker: Worker) -> None:
            try:
                with anyio.fail_after(bound):
                    status, data = await _request(worker.admin_port, method, target, body,
                                                  self.token)
            except (OSError, TimeoutError, h11.ProtocolError, anyio.EndOfStream,
                    anyio.BrokenResourceError):
                return
            answers.append((worker, status, data))

        async with anyio.create_task_group() as tg:
            for worker in list(self.live.values()):
                tg.start_soon(ask, worker)
        answers.sort(key=lambda a: a[0].index)
        return answers


class _ValidatedCopy:
    """A private copy of the config file (mode 0600, in a directory of its own that the
    parent removes at exit), replaced whole each time the parent validates the file."""

    def __init__(self, source: str) -> None:
        #: Mode 0700 (mkdtemp): also where the workers' hand-over sockets are
        #: (io.handoff), which only the proxy's own user may reach.
        self.directory = tempfile.mkdtemp(prefix="wsproxy-")
        self.path = os.path.join(self.directory, os.path.basename(source))
        with open(source, encoding="utf-8") as file:
            self.write(file.read())

    def write(self, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _read_line(fd: int) -> str:
    """The first line written to the pipe *fd* ("" if it was closed first)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data.decode("ascii", "replace").strip()


async def _request(port: int, method: str, target: str, body: bytes,
                   token: str) -> tuple[int, bytes]:
    """One HTTP/1.1 request to a worker's admin listener: its status and body."""
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", f"127.0.0.1:{port}"), ("Authorization", f"Bearer {token}"),
               ("Connection", "close"), ("Content-Length", str(len(body)))]
    if method == "POST":
        headers.append(("Content-Type", JSON))
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send(data)
        status, payload = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive())
                except anyio.EndOfStream:
                    conn.receive_data(b"")
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(payload)


# The admin API of the whole proxy ---------------------------------------------------------


def _json(value: object, status: int = 200) -> Response:
    return status, JSON, json.dumps(value).encode() + b"\n", ()


def _verbatim(status: int, body: bytes) -> Response:
    return status, JSON, body, ()


class ParentAdmin:
    """The admin API of the whole proxy: the workers' answers merged (module docstring)."""

    def __init__(self, parent: Parent) -> None:
        self.parent = parent

    async def handle(self, request: Request) -> Response:
        try:
            authorize(request, self.parent.config.admin.token)
            return await self._answer(request)
        except HTTPError as exc:
            body = json.dumps({"error": exc.message}).encode() + b"\n"
            return exc.status, JSON, body, exc.headers

    async def _answer(self, request: Request) -> Response:
        path, method = request.path.rstrip("/") or "/", request.method
        query = urlencode(request.query)
        target = request.path + (f"?{query}" if query else "")
        if path == "/" and method == "GET":
            return await self._ask_one(request, target)
        if path == "/healthz" and method == "GET":
            return _json({"status": "ok"})
        if path == "/reload" and method == "POST":
            errors = await self.parent.reload()
            if errors:
                return _json({"reloaded": False, "errors": errors}, 400)
            return _json({"reloaded": True})
        timeout = ASK_TIMEOUT + (MAX_WAIT if "wait" in request.query else 0.0)
        answers = await self.parent.ask_all(method, target, request.body, timeout)
        if not answers:
            raise HTTPError(503, "no worker is running")
        if path == "/metrics" and method == "GET" and all(s == 200 for _, s, _ in answers):
            text = merge_metrics([body for _, _, body in answers], self._own_metrics())
            return 200, "text/plain; version=0.0.4; charset=utf-8", text, ()
        if path == "/readyz":
            ready = all(s == 200 for _, s, _ in answers)
            return _json({"ready": ready}, 200 if ready else 503)
        if method == "DELETE":  # one connection: the worker that holds it answers
            found = [(s, b) for _, s, b in answers if s == 200]
            return _verbatim(*(found[0] if found else answers[0][1:]))
        failed = [(s, b) for _, s, b in answers if s != 200]
        if failed:
            return _verbatim(*failed[0])
        self.parent.drains_done(method, path)
        views = [(w, json.loads(body)) for w, _, body in answers]
        if path == "/connections" and method == "GET":
            return _json({"connections": _merge_connections(views, request.query)})
        if path == "/backends" and method == "GET":
            return _json({"backends": _merge_backends(v for _, v in views)})
        if path == "/drain" and method == "GET":
            return _json(_merge_drains(views))
        if path == "/connections/close":
            return _json({"closed": [c for _, v in views for c in v["closed"]]})
        merged = dict(views[0][1])
        if "was_draining" in merged:
            merged["was_draining"] = any(v.get("was_draining") for _, v in views)
        return _json(merged)

    async def _ask_one(self, request: Request, target: str) -> Response:
        """The admin page: the same from every worker."""
        for worker in list(self.parent.live.values()):
            try:
                with anyio.fail_after(ASK_TIMEOUT):
                    status, body = await _request(worker.admin_port, "GET", target, b"",
                                                  self.parent.token)
            except (OSError, TimeoutError, h11.ProtocolError):
                continue
            return status, "text/html; charset=utf-8", body, ()
        raise HTTPError(503, "no worker is running")

    def _own_metrics(self) -> list[Metric]:
        parent = self.parent
        workers = Metric("wsproxy_workers", "Worker processes running.", "gauge")
        workers.add_sample("wsproxy_workers", {}, len(parent.live))
        exits = Metric("wsproxy_worker_exits", "Worker processes that exited while the "
                       "proxy was not stopping (restarted), by how.", "counter")
        for reason in ("killed", "failed", "exited"):
            exits.add_sample("wsproxy_worker_exits_total", {"reason": reason},
                             parent.exits[reason])
        cut = Metric("wsproxy_worker_connections_cut", "Connections (open or opening) "
                     "that workers held when they exited unasked: their clients saw an "
                     "abnormal close.", "counter")
        cut.add_sample("wsproxy_worker_connections_cut_total", {}, parent.cut)
        return [workers, exits, cut]


def _merge_connections(views: list[tuple[Worker, Any]],
                       query: dict[str, str]) -> list[dict[str, Any]]:
    conns = [{**c, "worker": w.index, "pid": w.pid} for w, v in views
             for c in v["connections"]]
    if query.get("sort", "age") == "traffic":
        conns.sort(key=lambda c: c["bytes_to_backend"] + c["bytes_to_client"], reverse=True)
    else:
        conns.sort(key=lambda c: c["age_s"], reverse=True)
    top = int(query.get("top", "0"))  # checked by the workers
    return conns[:top] if top > 0 else conns


def _merge_backends(views: Iterable[Any]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for view in views:
        for b in view["backends"]:
            seen = merged.setdefault(b["name"], dict(b, active=0))
            seen["active"] += b["active"]
            seen["healthy"] = seen["healthy"] and b["healthy"]
            seen["draining"] = seen["draining"] or b["draining"]
            seen["removed"] = seen["removed"] and b["removed"]
    return list(merged.values())


def _merge_drains(views: list[tuple[Worker, Any]]) -> dict[str, object]:
    statuses = [v for _, v in views]
    return {
        "draining": any(s["draining"] for s in statuses),
        "left": sum(s["left"] for s in statuses),
        "closed": sum(s["closed"] for s in statuses),
        "seconds_left": max(s["seconds_left"] for s in statuses),
        "refused_upgrades": sum(s["refused_upgrades"] for s in statuses),
        "drains": [{**d, "worker": w.index} for w, s in views for d in s["drains"]],
    }


def merge_metrics(scrapes: list[bytes], extra: list[Metric]) -> bytes:
    """One exposition from the workers' *scrapes*: each sample summed over them (but
    the flags in _NOT_SUMMED), and *extra* families appended."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for scrape in scrapes:
        for family in text_string_to_metric_families(scrape.decode("utf-8")):
            families.setdefault(family.name, family)
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples.setdefault(key, []).append(sample.value)
    merged: list[Metric] = []
    for name, family in families.items():
        out = Metric(name, family.documentation, family.type)
        combine = _NOT_SUMMED.get(name, math.fsum)
        for (sample_name, labels), numbers in values[name].items():
            out.add_sample(sample_name, dict(labels), combine(numbers))
        merged.append(out)

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            yield from merged
            yield from extra

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


# Running ----------------------------------------------------------------------------------


async def run_workers(config: ProxyConfig, config_path: str) -> int:
    """The parent: bind, start the workers, serve the admin API, until all have stopped."""
    listen = config.listen
    if listen.tls is not None:
        server_context(listen.tls)  # an unreadable certificate: exit 1 now, as serve() would
    sockets = await listening_sockets(listen.host, listen.port, LISTEN_BACKLOG)
    parent = Parent(config, config_path, sockets)
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                        signal.SIGHUP) as signals:
            async with anyio.create_task_group() as tg:
                await tg.start(serve_admin, ParentAdmin(parent), config.admin, _accept_failed)
                await _run(parent, tg, signals)
                tg.cancel_scope.cancel()
    finally:
        for sock in sockets:
            sock.close()
        parent.validated.remove()
    log.info("proxy.stopped", worker_exits=sum(parent.exits.values()))
    return 1 if parent.failed_to_start else 0


async def _run(parent: Parent, tg: TaskGroup, signals: AsyncIterator[int]) -> None:
    async with anyio.create_task_group() as workers:
        for index in range(parent.count):
            workers.start_soon(parent.keep_worker, index)
        tg.start_soon(parent.watch_signals, signals)
        for event in parent.started_once:
            await event.wait()
        if parent.failed_to_start:
            return
        addresses = [sock.getsockname()[:2] for sock in parent.sockets]
        log.info("proxy.listening", workers=parent.count,
                 addresses=[f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses],
                 backends=[b.name for b in parent.config.backends],
                 tls=parent.config.listen.tls is not None)


def _accept_failed(exc: OSError) -> None:
    log.warning("accept.backoff", error=str(exc), listener="admin")
