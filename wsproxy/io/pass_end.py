"""Work put off to the end of the event loop's pass: a pass's writes go out together.

A write to a socket whose reader sleeps wakes it, and waking a process on another
CPU is an inter-processor interrupt, which in a virtual machine (every cloud node, so
nearly every Kubernetes sidecar) is a trip through the hypervisor: ~10 µs of the
writer's time, more than the proxy's own work for a small message. A loop pass of a
busy proxy handles the reads of many connections; writing each one's answer at once
spreads the writes over the pass, and a peer's process (a backend next to the proxy)
has fallen asleep again between two of them, so each write wakes it anew. Put off to
the end of the pass, the writes come back to back: the first wakes the peer's CPU
and the others find it awake. Measured with the upgrade benchmark (client and backend
on one CPU, the proxy on the other): 3.1-3.4 such interrupts an upgrade before, 1.1-1.2
after (the one left is the connect's, which wakes the backend's accept).

For WebSocket, only what is not the data plane's hot path is put off (a Connection's
handshake, its closes): an OPEN connection's reads are relayed at once
(wsproxy.io.direct), as latency wants. Nothing is reordered: what a Connection puts
off stays in its session's queues, which every writer takes whole and in order (a
relay writes past them only while they are empty), so a write made before the end of
the pass just takes the queued bytes with it. The plain HTTP relay, which has no such
queues, writes to its client and to its backend links through a ``PassEndWriter``
each, which every write and the close go through (under ``bench/http_run.py``: 0.32
such interrupts a request before, 0.085 after).

``PassEnd.add(callback)`` calls *callback* once at the end of the current pass: after
every I/O callback of the pass, before the loop waits again (``call_soon`` from an I/O
callback: the loop runs its ready callbacks before it next polls, so one pass's
callbacks go out together). The callbacks are called in the order they were added,
each on its own: an exception goes to the loop's exception handler, and the others
still run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence


def close_in_time(
    transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, abort_after: float
) -> None:
    """Close *transport*: close() flushes what is buffered first, and a peer that does
    not read would hold that for ever (and the process past drain.timeout), so it gets
    *abort_after* seconds to take it, then the socket is aborted."""
    transport.close()
    if transport.get_write_buffer_size():
        loop.call_later(abort_after, transport.abort)


def report_failed_callback(
    loop: asyncio.AbstractEventLoop, kind: str, callback: object, exc: Exception
) -> None:
    """*callback*'s exception *exc* to *loop*'s exception handler, as the loop reports
    its own callbacks' (*kind* names whose callback it was: ``end-of-pass``,
    ``deadline``)."""
    loop.call_exception_handler({
        "message": f"Exception in {kind} callback {callback!r}",
        "exception": exc,
    })


class PassEnd:
    """Callbacks for the end of the current pass of one event loop (the module's doc)."""

    __slots__ = ("_due", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: list[Callable[[], object]] = []

    def add(self, callback: Callable[[], object]) -> None:
        """Call *callback* at the end of the current pass (once per add())."""
        due = self._due
        if not due:
            self.loop.call_soon(self._run)
        due.append(callback)

    def _run(self) -> None:
        due = self._due
        self._due = []
        for callback in due:
            try:
                callback()
            except Exception as exc:
                report_failed_callback(self.loop, "end-of-pass", callback, exc)


class PassEndWriter:
    """One transport's writes, and its close, at the end of the loop's pass, in order:
    for a driver whose every write to that transport goes through it (the plain HTTP
    relay's client and backend connections, which have no session queues).

    ``write()`` and ``writelines()`` queue; the first of a pass adds ``flush`` to the
    pass's end. ``close(abort_after)`` closes once what is queued is written
    (``close_in_time`` unless *abort_after* is None: a plain close);
    ``abort()`` writes what is queued and aborts at once, as a write then an abort did.
    ``flush()`` may be called early (before the transport is handed to another
    driver)."""

    __slots__ = ("_abort_after", "_closing", "_out", "_pass_end", "transport")

    def __init__(self, transport: asyncio.Transport, pass_end: PassEnd) -> None:
        self.transport = transport
        self._pass_end = pass_end
        self._out: list[bytes] = []
        #: close() was asked for (with this abort delay, or None): done by flush().
        self._closing = False
        self._abort_after: float | None = None

    def write(self, data: bytes) -> None:
        out = self._out
        if not out:
            self._pass_end.add(self.flush)
        out.append(data)

    def writelines(self, chunks: Sequence[bytes]) -> None:
        if chunks:
            out = self._out
            if not out:
                self._pass_end.add(self.flush)
            out += chunks

    def flush(self) -> None:
        out = self._out
        transport = self.transport
        if out:
            self._out = []
            if not transport.is_closing():
                transport.writelines(out) if len(out) > 1 else transport.write(out[0])
        if self._closing:
            self._closing = False
            self._close(self._abort_after)

    def close(self, abort_after: float | None) -> None:
        if self._out:  # flush() closes, after the writes
            self._closing = True
            self._abort_after = abort_after
        else:
            self._close(abort_after)

    def abort(self) -> None:
        self._closing = False
        self.flush()
        self.transport.abort()

    def _close(self, abort_after: float | None) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if abort_after is None:
            transport.close()
        else:
            close_in_time(transport, self._pass_end.loop, abort_after)
