"""A bounded buffer between the event loop and stdout: a slow log reader never stalls relaying.

structlog renders each line in the caller's thread (the event loop's); ``put`` queues
it and one daemon thread writes the queue to stdout. A reader of stdout that is slow
or stuck (a log shipper that fell behind, a pipe nobody reads) then blocks only that
thread: the queue fills up to ``MAX_LINES``, and from then on each new line pushes
the oldest queued one out, counted (``dropped``, exported as
``wsproxy_log_lines_dropped_total``), instead of blocking the loop on a full pipe, as a
``print`` to stdout would. The oldest go so that the newest survive: when the reader
comes back, or the process stops, what is written ends with what happened last (the
``proxy.stopped`` line of a shutdown among it).

The bound: 10,000 lines, about 4 MiB of typical 300-400 byte JSON lines; a burst of
that many is written out as soon as the reader takes it again, a stuck reader costs
no more memory than that.

Cost per line in the loop thread: a length check, a deque append and, when no wake-up
is pending, waking the writer. The wake-up is a lock the writer blocks on and ``put``
releases (C calls only: a threading.Event's set() and wait() run a Condition's Python
code on both threads, several thousand instructions a line). The writer takes up to
``BATCH`` lines per write.

Wake-ups are gathered: once woken, the writer lets ``GATHER`` pass before it takes the
queue (unless a batch is there already, or the buffer is closing), and the pending
wake-up keeps ``put`` from signalling meanwhile. A wake-up is cheap in instructions but
not in time: the writer runs on the loop's core, and each one costs thread switches and
a hand-over of the GIL both ways (measured under the upgrade benchmark: 11 context
switches an upgrade with one wake-up a line; 0.5 gathering for 5 ms, 0.13 for 20 ms,
0.06 for 50 ms; upgrades/s at INFO +22 %, then +4 %, then +2 % more). A
line reaches stdout at most ``GATHER`` later, in the same order; a process killed
outright (SIGKILL) loses what it queued in that time, as it lost a line in flight before.

At exit (``close``, registered with ``atexit`` by wsproxy.log) the writer gets up to
``FLUSH_TIMEOUT`` seconds to write what is queued, the final ``proxy.stopped`` among
it; a reader that is stuck cannot hold the process longer than that. The writer
writes with ``os.write`` on the descriptor and holds no lock of Python's stdout
object, so a thread left blocked in a write does not stop the interpreter from exiting.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

#: Lines queued at most; past it the oldest are dropped and counted.
MAX_LINES: Final = 10_000
#: Lines per write.
BATCH: Final = 512
#: How long exit waits for the queue to be written.
FLUSH_TIMEOUT: Final = 5.0
#: How long a woken writer lets lines gather before it writes them (module doc).
GATHER: Final = 0.020
#: The writer's wait while lines gather (a test holds it).
_gather = time.sleep


class LineBuffer:
    """Lines queued in the caller's thread, written in order by one writer thread.

    *write* takes the bytes of whole lines and blocks until they are written; it may
    raise OSError (a closed pipe), after which every line is dropped and counted.
    """

    def __init__(self, write: Callable[[bytes], object], max_lines: int = MAX_LINES) -> None:
        self._write = write
        self.max_lines = max_lines
        #: Lines written.
        self.written = 0
        # One counter per thread that drops: no increment is lost to a race.
        self._dropped_here = 0  # by put(): pushed out, or the output broken or closed
        self._dropped_there = 0  # by the writer: queued when the output broke
        self._lines: deque[str] = deque(maxlen=max_lines)  # full: append drops the oldest
        # The writer blocks acquiring _gate; a wake-up releases it. _signalled: one is
        # pending (set before the release, cleared by the writer before it drains).
        self._gate = threading.Lock()
        self._gate.acquire()
        self._signalled = False
        self._closing = False
        self._broken = False
        # A thread does not survive a fork: a forked worker would make its own buffer.
        self._thread = threading.Thread(target=self._run, name="wsproxy-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines dropped: the queue was full, the output broken, or the buffer closed."""
        return self._dropped_here + self._dropped_there

    def put(self, line: str) -> None:
        """Queue one line (without its newline); never blocks."""
        lines = self._lines
        if self._closing or self._broken:
            self._dropped_here += 1
            return
        if len(lines) >= self.max_lines:
            # (If the writer takes a batch just now, this counts one line too many:
            # rarely, and only while the reader is behind.)
            self._dropped_here += 1
        lines.append(line)
        if not self._signalled:  # the writer clears it before it looks at the queue
            self._signal()

    def _signal(self) -> None:
        self._signalled = True
        try:  # noqa: SIM105 (contextlib.suppress costs a context manager a line)
            self._gate.release()
        except RuntimeError:  # released already (by another thread): a wake-up is pending
            pass

    def close(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Stop taking lines; wait up to *timeout* for the queued ones to be written.

        Returns whether all of them were.
        """
        self._closing = True
        self._signal()
        self._thread.join(timeout)
        return not self._thread.is_alive() and not self._lines and not self._broken

    def _run(self) -> None:
        # Its wake-ups cost instructions too (one or two lines each, nearly every
        # connection its own, under the upgrade benchmark's load): one line, the usual
        # batch, is written without a list, a join or the codec's argument parsing
        # (JSON lines are ASCII: ``encode()``'s fast path; "replace" only when it fails).
        lines = self._lines
        popleft = lines.popleft
        acquire = self._gate.acquire
        write = self._write
        while True:
            acquire()
            if len(lines) < BATCH and not self._closing:
                _gather(GATHER)  # let more lines come: put() does not signal meanwhile
            self._signalled = False
            while lines:
                count = len(lines)
                if count == 1:
                    text = popleft() + "\n"
                else:
                    if count > BATCH:
                        count = BATCH
                    batch = [popleft() for _ in range(count)]
                    batch.append("")
                    text = "\n".join(batch)
                try:
                    data = text.encode()
                except UnicodeEncodeError:  # a lone surrogate (a console line's)
                    data = text.encode("utf-8", "replace")
                try:
                    write(data)
                except OSError:
                    # Nobody reads stdout any more: count what can no longer be written.
                    self._broken = True
                    self._dropped_there += count
                    while lines:
                        popleft()
                        self._dropped_there += 1
                    return
                self.written += count
            if self._closing:
                return


def fd_writer(fd: int) -> Callable[[bytes], None]:
    """A blocking writer of all of *data* to descriptor *fd* (waits if it is non-blocking)."""

    def write(data: bytes) -> None:
        view: bytes | memoryview = data
        while view:
            try:
                done = os.write(fd, view)
            except BlockingIOError:  # someone made the shared pipe non-blocking
                select.select([], [fd], [], 1.0)
                continue
            if done == len(view):
                return  # the usual: all at once, and no memoryview made for it
            view = memoryview(view)[done:]

    return write


def stdout_writer() -> Callable[[bytes], object]:
    """Write to the process's stdout descriptor; to ``sys.stdout`` where it has none."""
    stream = sys.stdout
    if stream is None:  # started with descriptor 1 closed: every line is dropped

        def nowhere(data: bytes) -> None:
            raise OSError(errno.EBADF, "no stdout")

        return nowhere
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both: a stand-in stream

        def write(data: bytes) -> None:
            stream.write(data.decode("utf-8"))
            stream.flush()

        return write
    stream.flush()  # what was printed before goes first
    return fd_writer(fd)
