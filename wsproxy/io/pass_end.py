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

Only what is not the data plane's hot path is put off (a Connection's handshake,
its closes): an OPEN connection's reads are relayed at once (wsproxy.io.direct), as
latency wants. Nothing is reordered: what a Connection puts off stays in its
session's queues, which every writer takes whole and in order (a relay writes past
them only while they are empty), so a write made before the end of the pass just
takes the queued bytes with it.

``PassEnd.add(callback)`` calls *callback* once at the end of the current pass: after
every I/O callback of the pass, before the loop waits again (``call_soon`` from an I/O
callback: the loop runs its ready callbacks before it next polls, so one pass's
callbacks go out together). The callbacks are called in the order they were added,
each on its own: an exception goes to the loop's exception handler, and the others
still run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class PassEnd:
    """Callbacks for the end of the current pass of one event loop (the module's doc)."""

    __slots__ = ("_due", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[Callable[[], object]] = []

    def add(self, callback: Callable[[], object]) -> None:
        """Call *callback* at the end of the current pass (once per add())."""
        due = self._due
        if not due:
            self._loop.call_soon(self._run)
        due.append(callback)

    def _run(self) -> None:
        due = self._due
        self._due = []
        for callback in due:
            try:
                callback()
            except Exception as exc:  # as the loop does for its own callbacks
                self._loop.call_exception_handler({
                    "message": f"Exception in end-of-pass callback {callback!r}",
                    "exception": exc,
                })
