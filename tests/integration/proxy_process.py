"""``python -m wsproxy …`` as a subprocess, for the tests that need a real process.

One helper for every test that runs the proxy (or ``echo-backend``, ``demo``) as its
users do: real signals, memory and descriptors read from /proc, a lowered RLIMIT.

- ``started(*args)`` runs ``python -m wsproxy *args`` (or any *command*) and yields a
  ``Running``: its stdout and stderr are read in the background from the start, so a
  full pipe never blocks the process, and every line is kept (``lines``, ``records``
  for the JSON ones).
- ``proxy_process(config, tmp_path)`` writes *config* (a dict, YAML text, or an existing
  file), runs ``wsproxy run -c`` on it and yields once the ``proxy.listening`` line
  named the bound address (``.port``, ``.url``).

Readiness and progress come from the process's own lines (``wait_for_event``,
``wait_for_line``, ``wait_for``), never from a sleep. Every wait is bounded. At the end
of the block a process still running is stopped by its PID (SIGTERM and up to
*stop_grace* seconds when asked for, then SIGKILL) and always reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

WSPROXY = (sys.executable, "-m", "wsproxy")
#: Generous bounds: a start or an exit normally takes a fraction of a second, but a
#: Python process importing its dependencies on a loaded machine can take seconds.
START_TIMEOUT = 20.0
EXIT_TIMEOUT = 10.0
#: A short-lived command is a start and an exit: bounded as a start is (twelve
#: ``--version`` runs at once beside two test suites took 8 s each once).
CLI_TIMEOUT = START_TIMEOUT + EXIT_TIMEOUT
#: The longest stdout line read (a log line is far shorter).
MAX_LINE = 1 << 20


class Running:
    """A started process; its output, read in the background, line by line."""

    def __init__(self, process: Process) -> None:
        self.process = process
        #: Every stdout line so far (decoded, without its newline).
        self.lines: list[str] = []
        #: The stdout lines that are JSON objects (log records), in order.
        self.records: list[dict[str, Any]] = []
        self._stderr = bytearray()
        self._changed = anyio.Event()
        self._stdout_done = anyio.Event()
        self._stderr_done = anyio.Event()
        #: Set by proxy_process() from the ``proxy.listening`` line.
        self.addresses: list[str] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def port(self) -> int:
        """The bound port of the first listening address."""
        return int(self.addresses[0].rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"ws://{self.addresses[0]}"

    # Reading (background tasks) …

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                try:
                    line = await stream.receive_until(b"\n", MAX_LINE)
                except anyio.IncompleteRead:
                    break
                text = line.decode("utf-8", "replace")
                self.lines.append(text)
                try:
                    record = json.loads(text)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    self.records.append(record)
                self._notify()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            self._stdout_done.set()
            self._notify()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        try:
            async for chunk in self.process.stderr:
                self._stderr += chunk
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            self._stderr_done.set()
            self._notify()

    # Waiting for output …

    async def wait_for(self, predicate: Callable[[], bool], what: str,
                       bound: float = START_TIMEOUT) -> None:
        """Until *predicate* holds; it is checked on every new line (bounded)."""
        try:
            with anyio.fail_after(bound):
                while not predicate():
                    if self._stdout_done.is_set():
                        raise AssertionError(
                            f"stdout ended before {what}: {self.lines[-20:]}\n"
                            f"stderr: {self._stderr.decode('utf-8', 'replace')[-2000:]}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"not within {bound}s: {what}; "
                                 f"last lines: {self.lines[-20:]}") from None

    async def wait_for_event(self, event: str, bound: float = START_TIMEOUT) -> dict[str, Any]:
        """The first JSON log line (since the start) whose ``event`` is *event*."""
        await self.wait_for(lambda: bool(self.events(event)), repr(event), bound)
        return self.events(event)[0]

    async def wait_for_line(self, pattern: str, bound: float = START_TIMEOUT) -> re.Match[str]:
        """The first stdout line (since the start) that matches *pattern*."""

        def search() -> re.Match[str] | None:
            return next((m for line in self.lines if (m := re.search(pattern, line))), None)

        await self.wait_for(lambda: search() is not None, f"a line matching {pattern!r}", bound)
        match = search()
        assert match is not None
        return match

    def events(self, event: str) -> list[dict[str, Any]]:
        """Every JSON log line so far whose ``event`` is *event*."""
        return [r for r in self.records if r.get("event") == event]

    def count(self, event: str) -> int:
        return len(self.events(event))

    def event_names(self) -> list[str]:
        return [str(r.get("event")) for r in self.records]

    async def rest_of_stdout(self, bound: float = EXIT_TIMEOUT) -> list[str]:
        """Every stdout line, once stdout has ended (the process exited)."""
        with anyio.fail_after(bound):
            await self._stdout_done.wait()
        return self.lines

    @property
    def stderr_so_far(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    async def stderr(self, bound: float = EXIT_TIMEOUT) -> str:
        """All of stderr, once it has ended."""
        with anyio.fail_after(bound):
            await self._stderr_done.wait()
        return self._stderr.decode("utf-8", "replace")

    # Signals and the end …

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    async def wait(self, bound: float = EXIT_TIMEOUT) -> int:
        """The exit status (bounded wait)."""
        with anyio.fail_after(bound):
            return await self.process.wait()

    async def terminate(self, bound: float = EXIT_TIMEOUT) -> float:
        """SIGTERM and wait for the exit (bounded); the seconds it took."""
        started = anyio.current_time()
        self.signal(signal.SIGTERM)
        await self.wait(bound)
        return anyio.current_time() - started

    async def _stop(self, grace: float) -> None:
        """Stop the process if it still runs: SIGTERM and *grace* s first, then SIGKILL."""
        # A process that already ended may be reaped before returncode says so (the
        # loop learns it a moment later): its signal then finds no process, and that is
        # the end asked for.
        if self.returncode is None and grace > 0:
            with anyio.move_on_after(grace):
                with contextlib.suppress(ProcessLookupError):
                    self.signal(signal.SIGTERM)
                await self.process.wait()
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGKILL)
        with anyio.fail_after(EXIT_TIMEOUT):
            await self.process.wait()


@asynccontextmanager
async def started(
    *args: str,
    command: Sequence[str] = WSPROXY,
    env: Mapping[str, str] | None = None,
    stop_grace: float = 0.0,
) -> AsyncIterator[Running]:
    """Run ``command *args`` (``python -m wsproxy`` by default), output read from the start.

    A process still running when the block ends is stopped by its PID (SIGTERM and up
    to *stop_grace* seconds first, if not 0; then SIGKILL) and reaped, whatever happened.
    """
    process = await anyio.open_process(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
    )
    running = Running(process)
    #: The block's own failure, raised as it is rather than in the task group's
    #: ExceptionGroup (pytest then shows the assertion itself).
    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(running._read_stdout)
            tg.start_soon(running._read_stderr)
            try:
                yield running
            except Exception as exc:
                failure = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await running._stop(stop_grace)
                    # The pipes end with the process: keep the last lines it wrote.
                    with anyio.move_on_after(EXIT_TIMEOUT):
                        await running._stdout_done.wait()
                        await running._stderr_done.wait()
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # as in _stop
                os.kill(process.pid, signal.SIGKILL)
        with anyio.fail_after(EXIT_TIMEOUT, shield=True):
            await process.aclose()


def write_config(config: Mapping[str, Any] | str | Path, directory: Path,
                 name: str = "wsproxy.yaml") -> Path:
    """*config* as a file: a Path as it is, YAML text or a dict (as JSON, valid YAML)
    written to *directory*/*name*."""
    if isinstance(config, Path):
        return config
    path = directory / name
    text = config if isinstance(config, str) else json.dumps(config, indent=1)
    path.write_text(text, encoding="utf-8")
    return path


@asynccontextmanager
async def proxy_process(
    config: Mapping[str, Any] | str | Path,
    tmp_path: Path,
    *,
    command: Sequence[str] = WSPROXY,
    stop_grace: float = 0.0,
) -> AsyncIterator[Running]:
    """``wsproxy run -c CONFIG``, yielded once it listens (``.addresses``, ``.port``).

    *command* replaces ``python -m wsproxy`` (e.g. a launcher that lowers a limit
    first); it must accept the ``run -c FILE`` arguments.
    """
    path = write_config(config, tmp_path)
    async with started("run", "-c", str(path), command=command, stop_grace=stop_grace) as proxy:
        listening = await proxy.wait_for_event("proxy.listening")
        proxy.addresses = list(listening["addresses"])
        yield proxy


def run_cli(*args: str, command: Sequence[str] = WSPROXY, timeout: float = CLI_TIMEOUT
            ) -> subprocess.CompletedProcess[str]:
    """Run a short-lived ``wsproxy`` command to its end (bounded): its status and output."""
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


async def run_cli_async(*args: str, env: Mapping[str, str] | None = None,
                        bound: float = 3 * EXIT_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """``run_cli`` without blocking the event loop (for a proxy running in it); the
    child is killed if the wait is cancelled or runs past *bound*."""
    with anyio.fail_after(bound):
        return await anyio.run_process([*WSPROXY, *args], env=env, check=False)
