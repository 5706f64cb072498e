"""Resumable sessions, sans I/O: the opt-in, the in-band framing, the replay buffer.

README.md "Resumable sessions" is the protocol; this module is its pure part.

A client opts in with the query parameter ``wsproxy_resume`` (``=1``: a new session;
``=<id>.<received>``: resume session *id*, of whose backend->client messages it has
*received* that many). The proxy takes the parameter out before auth, logs and the
backend see the request. To an opted-in client every message the proxy sends
starts with one byte: ``APP`` (0x00) before the backend's own payload, ``CONTROL``
(0x01) before a JSON object of the proxy's own (``control()``). Its own messages go
to the backend as they are.

``Replay`` sits between a session and an opted-in client's transport: it walks the
server frames going to the client (already checked by the relay), adds the byte to
the first frame of every data message, counts messages and keeps the latest whole
ones, up to ``buffer`` bytes, for a resume to replay. It never reads a clock or
touches a socket. Sessions that did not opt in never meet it: their frames go from
the relay to the socket as before.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Final

from wsproxy.core import frames
from wsproxy.core.handshake import RequestHead

#: The query parameter of the opt-in.
PARAM: Final = "wsproxy_resume"
APP: Final = b"\x00"
CONTROL: Final = b"\x01"
#: The close code (and reason prefix) of a failed resume: the proxy's own 101, then
#: this close; nothing else is ever sent on a resume attempt before ``resumed``.
RESUME_FAILED: Final = 4410
#: Why a resume failed: the reason of the close is "resume failed: <one of these>".
EXPIRED: Final = "window passed"
OVERRUN: Final = "buffer overrun"
OTHER_SUBJECT: Final = "other subject"
RESTARTED: Final = "proxy restarted"
UNKNOWN: Final = "unknown session"
CLOSED: Final = "session closed"
MALFORMED: Final = "malformed resume"


class ResumeAsk:
    """What a client's ``wsproxy_resume`` parameter asks for."""

    __slots__ = ("received", "session_id")

    def __init__(self, session_id: str | None, received: int) -> None:
        #: None: a new session; else the session to resume.
        self.session_id = session_id
        self.received = received


def take_param(target: bytes) -> tuple[bytes, ResumeAsk | None, bool]:
    """*target* without ``wsproxy_resume``, what it asked, and whether it was malformed.

    (target, None, False): the parameter is absent and *target* is returned as it came.
    """
    path, question, query = target.partition(b"?")
    if not question:
        return target, None, False
    key = PARAM.encode()
    kept: list[bytes] = []
    value: bytes | None = None
    for part in query.split(b"&"):
        name, _, v = part.partition(b"=")
        if name == key:
            if value is None:
                value = v
            continue
        kept.append(part)
    if value is None:
        return target, None, False
    rest = b"&".join(kept)
    stripped = path + b"?" + rest if rest else path
    if value == b"1":
        return stripped, ResumeAsk(None, 0), False
    sid, dot, count = value.rpartition(b".")
    if not dot or not sid or not count.isdigit() or len(count) > 18 or len(sid) > 128:
        return stripped, None, True
    return stripped, ResumeAsk(sid.decode("ascii", "replace"), int(count)), False


def request_bytes(request: RequestHead) -> bytes:
    """*request*'s head as a client could have sent it: what a worker hands to the
    sibling that holds the session, which reads and checks it again."""
    lines = [request.method + b" " + request.target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in request.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def control(**fields: object) -> bytes:
    """A control message of the proxy's own for an opted-in client: a text frame."""
    payload = CONTROL + json.dumps(fields, separators=(",", ":")).encode()
    return frames.build_frame(frames.TEXT, payload, mask=False)


def control_frames(data: bytes) -> list[bytes]:
    """The whole control frames in *data*, frames to the backend that begin at a frame
    boundary, in order: what is kept of a client message held back when the client's
    socket dies in its middle (wsproxy.io.resume's ``UpstreamGate``). The message's
    own frames go (the client sends it again), the proxy's pings and the client's
    control frames between them stay; a frame cut short at the end is a data frame's
    (a control frame goes on whole: the relay keeps it until it is)."""
    kept: list[bytes] = []
    n = len(data)
    pos = 0
    while n - pos >= 2:
        b1 = data[pos + 1]
        length = b1 & 0x7F
        head = 2
        if length == 126:
            head, length = 4, int.from_bytes(data[pos + 2 : pos + 4], "big")
        elif length == 127:
            head, length = 10, int.from_bytes(data[pos + 2 : pos + 10], "big")
        end = pos + head + (4 if b1 & 0x80 else 0) + length
        if end > n:
            break
        if data[pos] & 0x08:
            kept.append(data[pos:end])
        pos = end
    return kept


def _header(b0: int, length: int) -> bytes:
    """An unmasked frame header."""
    if length < 126:
        return bytes((b0, length))
    if length < 1 << 16:
        return bytes((b0, 126)) + length.to_bytes(2, "big")
    return bytes((b0, 127)) + length.to_bytes(8, "big")


class Total:
    """The bytes kept across all sessions, and their ceiling (``resume.max_total``)."""

    __slots__ = ("bytes", "limit")

    def __init__(self, limit: int) -> None:
        self.bytes = 0
        self.limit = limit


class Replay:
    """The frames to one opted-in client: prefixed, counted, the latest kept.

    ``feed(chunk)`` takes what the relay wrote for the client and returns what goes on
    its socket. The first chunk is the HTTP answer: it passes as it is, followed by
    *after_head* if it was a 101.
    """

    __slots__ = (
        "_current", "_head", "_in_message", "_keeping", "_partial", "_remaining",
        "after_head", "base", "buffer", "cut_at", "kept", "kept_bytes", "overrun",
        "pending_ack", "sent", "total",
    )

    def __init__(self, buffer: int, total: Total, after_head: bytes) -> None:
        self.buffer = buffer
        self.total = total
        self.after_head = after_head
        self._head = True
        #: Whole data messages sent (numbered from 1), and the latest of them, kept.
        self.sent = 0
        self.kept: deque[bytes] = deque()
        self.kept_bytes = 0
        #: The number of the last message no longer kept (kept[0] is base + 1).
        self.base = 0
        #: While no client is attached: ``sent`` when it went; a message after it
        #: dropped from the buffer means the session cannot be resumed.
        self.cut_at: int | None = None
        self.overrun = False
        #: The pieces of the message in progress (prefixed), and the frame bytes left.
        self._current: list[bytes] = []
        self._in_message = False
        self._keeping = False
        self._remaining = 0
        self._partial = b""
        #: An ack to send at the next message boundary.
        self.pending_ack: bytes | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._head:
            self._head = False
            if chunk.startswith(b"HTTP/1.1 101"):
                return [chunk, self.after_head]
            return [chunk]
        out: list[bytes] = []
        data = self._partial + chunk if self._partial else chunk
        self._partial = b""
        n = len(data)
        pos = 0
        while pos < n:
            if self._remaining:
                end = min(n, pos + self._remaining)
                piece = data if pos == 0 and end == n else data[pos:end]
                out.append(piece)
                self._current.append(piece)
                self._remaining -= end - pos
                pos = end
                if not self._remaining and not self._in_message:
                    self._complete(out)
                continue
            if n - pos < 2:
                break
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                head = 4
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                head = 10
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            opcode = b0 & 0x0F
            if opcode & 0x08:  # a control frame (at most 131 bytes): passed whole
                if n - pos < head + length:
                    break
                out.append(data[pos : pos + head + length])
                pos += head + length
                continue
            # The first frame of a message gets one byte more, APP, first.
            piece = _header(b0, length + 1) + APP if opcode else data[pos : pos + head]
            out.append(piece)
            self._current.append(piece)
            self._in_message = not b0 & 0x80
            pos += head
            self._remaining = length
            if not length and not self._in_message:
                self._complete(out)
        if pos < n:
            self._partial = data[pos:]
        return out

    def _complete(self, out: list[bytes]) -> None:
        """The message in progress is whole: number it, keep it, send a waiting ack."""
        message = b"".join(self._current)
        self._current = []
        self.sent += 1
        self.kept.append(message)
        size = len(message)
        self.kept_bytes += size
        total = self.total
        total.bytes += size
        while self.kept and (self.kept_bytes > self.buffer or total.bytes > total.limit):
            dropped = len(self.kept.popleft())
            self.kept_bytes -= dropped
            total.bytes -= dropped
            self.base += 1
            if self.cut_at is not None and self.base > self.cut_at:
                self.overrun = True
        if self.pending_ack is not None:
            out.append(self.pending_ack)
            self.pending_ack = None

    def ack(self, frame: bytes) -> list[bytes]:
        """Send control *frame* now if between messages, else after the current one."""
        if self._in_message or self._remaining or self._current:
            self.pending_ack = frame
            return []
        self.pending_ack = None
        return [frame]

    def replay(self, received: int) -> list[bytes] | None:
        """What a client that has *received* messages missed (the message in progress
        included, as far as it came); None if some of it is no longer kept."""
        if received < self.base or received > self.sent:
            return None
        kept = list(self.kept)[received - self.base :]
        if self.pending_ack is not None and not self._current:
            self.pending_ack = None
        return kept + self._current

    def release(self) -> None:
        """The session is over: its bytes no longer count against ``max_total``."""
        self.total.bytes -= self.kept_bytes
        self.kept_bytes = 0
        self.kept.clear()
