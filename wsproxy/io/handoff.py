"""Handing a client's socket to the worker that holds its session (``workers: N``).

A resume (README.md "Resumable sessions") has to reach the worker whose memory
holds the session, but the kernel gives each new connection to whichever worker
accepts first. So every worker listens on a Unix datagram socket in its parent's
private directory (mode 0700: only the proxy's own user reaches it), and a worker
that reads a resume of a sibling's session sends that sibling the client's socket
(SCM_RIGHTS) with the bytes it read from it. The sibling serves the request as if
it had accepted the connection itself (limits, auth, logs, the resume), and the
first worker forgets it without a trace: no log line, no metric, no close.

Only a plain TCP client can move: a TLS session's keys live in the process that
terminated it, so a TLS client's resume on another worker fails as before
("proxy restarted", and the client starts afresh).

A sibling whose queue is full (a reconnect wave) is waited for, up to
``MAX_WAITING`` hand-overs per sibling; a sibling that is gone (it died, and its
replacement knows nothing of the session) refuses the send, and the resume fails as
"proxy restarted": what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Final

from wsproxy.log import get_logger

log = get_logger()

#: The largest hand-over: a request head (limits.max_request_head, 64 KiB at most)
#: and what the client sent after it before the proxy paused reading it.
MAX_MESSAGE: Final = 256 * 1024
#: Hand-overs queued for one sibling that is not reading (each holds a descriptor).
MAX_WAITING: Final = 256

#: Told of a client handed over by a sibling: its socket, its address (as the
#: sibling saw it, PROXY header included) and the bytes the sibling read from it.
Adopt = Callable[[socket.socket, str, bytes], None]


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"worker-{index}.sock")


class Handoff:
    """One worker's end: its inbox, and its outboxes to each sibling."""

    def __init__(self, directory: str, index: int, loop: asyncio.AbstractEventLoop) -> None:
        self.directory = directory
        #: This worker's index among its siblings (it is in every session id it makes).
        self.index = index
        self._loop = loop
        self._inbox: socket.socket | None = None
        self._outboxes: dict[int, _Outbox] = {}

    def open(self, adopt: Adopt) -> None:
        """Listen for siblings' hand-overs; *adopt* serves each."""
        path = socket_path(self.directory, self.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the worker this one replaces left it
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.setblocking(False)
        inbox.bind(path)
        self._inbox = inbox
        self._loop.add_reader(inbox.fileno(), self._read, adopt)

    def close(self) -> None:
        if self._inbox is not None:
            self._loop.remove_reader(self._inbox.fileno())
            self._inbox.close()
            self._inbox = None
        for outbox in self._outboxes.values():
            outbox.close()
        self._outboxes.clear()

    def _read(self, adopt: Adopt) -> None:
        assert self._inbox is not None
        while True:
            try:
                message, fds, _flags, _addr = socket.recv_fds(self._inbox, MAX_MESSAGE, 1)
            except (BlockingIOError, InterruptedError):
                return
            if not fds:
                continue
            sock = socket.socket(fileno=fds[0])
            try:
                header, _, data = message.partition(b"\n")
                peer = json.loads(header)["peer"]
            except (ValueError, KeyError, TypeError):
                log.warning("resume.handover_malformed")
                sock.close()
                continue
            adopt(sock, str(peer), data)

    def send(self, sibling: int, fd: int, peer_ip: str, data: bytes) -> bool:
        """Hand the socket *fd* to worker *sibling*; False if it cannot take it (it is
        not running, or not reading and far behind). *fd* stays the caller's to close."""
        if sibling == self.index:
            return False
        message = json.dumps({"peer": peer_ip}).encode() + b"\n" + data
        if len(message) > MAX_MESSAGE:
            return False
        outbox = self._outboxes.get(sibling)
        if outbox is None:
            outbox = self._outboxes[sibling] = _Outbox(
                socket_path(self.directory, sibling), self._loop
            )
        return outbox.send(message, fd)


class _Outbox:
    """The way to one sibling: a datagram socket connected to its inbox, so that a
    full queue is seen (EAGAIN, then writable once it drains) rather than a drop."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self._path = path
        self._loop = loop
        self._sock: socket.socket | None = None
        #: Hand-overs waiting for the sibling's queue: (message, our own dup).
        self._waiting: deque[tuple[bytes, int]] = deque()

    def send(self, message: bytes, fd: int) -> bool:
        if self._waiting:
            return self._wait(message, fd)
        for _attempt in range(2):
            try:
                socket.send_fds(self._connected(), [message], [fd])
                return True
            except BlockingIOError:
                return self._wait(message, fd)
            except OSError as exc:
                self._reset()
                # Refused: the sibling that was connected to died; its replacement's
                # inbox (the same path) gets one more try. Anything else: no way.
                if exc.errno != errno.ECONNREFUSED:
                    return False
        return False

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(self._path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _wait(self, message: bytes, fd: int) -> bool:
        if len(self._waiting) >= MAX_WAITING or self._sock is None:
            return False
        if not self._waiting:
            self._loop.add_writer(self._sock.fileno(), self._flush)
        self._waiting.append((message, os.dup(fd)))
        return True

    def _flush(self) -> None:
        sock = self._sock
        assert sock is not None
        while self._waiting:
            message, fd = self._waiting[0]
            try:
                socket.send_fds(sock, [message], [fd])
            except BlockingIOError:
                return
            except OSError:
                self._reset()  # gone meanwhile: its clients see their socket close
                return
            self._waiting.popleft()
            os.close(fd)
        self._loop.remove_writer(sock.fileno())

    def _reset(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._waiting:
                self._loop.remove_writer(sock.fileno())
            sock.close()
        while self._waiting:
            os.close(self._waiting.popleft()[1])

    def close(self) -> None:
        self._reset()
