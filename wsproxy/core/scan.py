"""The relay's inner loop: skip over whole messages, compiled when it can be.

At 64-byte messages a read carries dozens of frames, and almost every one is a whole
text or binary message in one frame (FIN set, nothing to check but its header). The
session (wsproxy.core.session) asks its flow state (``FlowState.take``, below, by
``whole_read``'s spec) whether a read holds only such frames, and then forwards it as
it came. When it does not, the session's own loop reads it, and hands it to
``whole_messages``, which walks such frames by arithmetic and stops at the first
frame that needs a decision: a control frame, a fragment, a bad header, a size over
the limit, or a header cut off by the end of the read. The session's own loop
decides on that frame, then calls ``whole_messages`` again. (It calls
``session_whole_messages``: the same, but on the Python fallback without the
argument checks and only from a read's second frame, where a call pays off; see
session._HOLD_FIRST.)

One spec, two implementations: ``py_whole_messages`` below is the reference, and
``_scan.c`` (the ``wsproxy.core._scan`` extension, built by setup.py when a C
compiler is there) does the same in C. tests/unit/test_scan.py checks with hypothesis
that both give the same answers on the same inputs, and that a session gives the same
bytes and closes with either. ``SPEEDUPS`` says which one is in use ("c" or
"python"); ``WSPROXY_NO_SPEEDUPS=1`` in the environment forces the Python one.

The spec of ``whole_messages(data, pos, mask_bit, rsv_allowed, max_size)``:

- Start at offset *pos* of *data* (bytes) and look at the frame there.
- It qualifies when its whole header is in *data* (2 bytes, 4 with a 16-bit length,
  10 with a 64-bit one), its first byte less the *rsv_allowed* reserved bits is
  0x81 or 0x82 (FIN, text or binary), its mask bit equals *mask_bit* (0x80 from a
  client, 0 from a backend), the top bit of a 64-bit length is 0 and its payload
  length is at most *max_size*.
- A qualifying frame counts one message; its end (header, the 4-byte masking key when
  masked, payload) is the next *pos*. That end may lie past the end of *data*: the
  frame goes on in later reads and the walk stops there.
- Return ``(pos, messages)``: the offset of the first frame that did not qualify
  (or of the end of the last one), and how many qualified.
- ValueError for a negative *pos*, a *mask_bit* other than 0 or 0x80, or an
  *rsv_allowed* with bits outside 0x70.

The caller's frame state (a message in progress, our own frames waiting to go in
between) decides whether to ask at all: this function keeps no state.

A read of whole messages
------------------------
Most reads need no decision at all: they hold the rest of a frame in flight and whole
messages, the last of which may go on in later reads. The session asks that first,
once per read (``take`` of its flow's state, which answers by this spec and counts
the read), and forwards such a read untouched without running its own loop. The
spec of ``whole_read(data, remaining, mask_bit, rsv_allowed, max_size)``:

- *remaining*: the payload bytes of a frame in flight that begin *data*.
- When *remaining* covers all of *data*: ``(0, remaining - len(data))``.
- Else the frames from offset *remaining* on are walked as ``whole_messages`` walks
  them. When every frame qualifies up to the end of *data* (the last one may go on
  past it): ``(messages, end - len(data))``, the messages that qualified and the
  payload bytes of the last one still to come (0 when it ended with *data*).
- Otherwise (a frame that needs a decision, or a header cut off by the end of *data*):
  ``None``, and the caller's loop reads *data* itself.
- ValueError for a negative *remaining*, and for *mask_bit* and *rsv_allowed* as
  ``whole_messages``.

A read relayed without the driver
---------------------------------
Once a connection is OPEN its transports' reads go to a relay protocol (``Relay``:
``PyRelay`` below, or ``_scan.Relay``, its C twin, which wants the C ``FlowState``;
``Session.relay_protocol`` makes one, wsproxy.io.direct puts them on the transports
and takes them off). Its ``data_received`` is ``Session.relay`` and the driver's
write in one call: the session's state, the other leg's waiting frames, then
``take``; a read it does not pass on goes to the protocol it stands in for, the
driver's, which decides as before. The C twin reads the session's ``state`` and the
leg's ``out`` at their slots (their offsets found once), so a read costs no Python
frame at all. tests/unit/test_direct_relay.py holds the two, and the driver alone, to
the same writes, states and counters, and the two to the same fallbacks.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from wsproxy.core.closes import is_sendable
from wsproxy.core.frames import unmask
from wsproxy.core.states import Side

#: The signatures both implementations share.
WholeMessages = Callable[[bytes, int, int, int, int], tuple[int, int]]
WholeRead = Callable[[bytes, int, int, int, int], "tuple[int, int] | None"]

#: By the reserved bits a flow allows: whether a frame's first byte makes it a whole
#: text or binary message (FIN, opcode 1 or 2, no reserved bit but the allowed ones).
WHOLE_MESSAGE: Final = {
    allowed: bytes((b & ~allowed & 0xFF) in (0x81, 0x82) for b in range(256))
    for allowed in range(0, 0x80, 0x10)
}


def py_whole_messages(
    data: bytes, pos: int, mask_bit: int, rsv_allowed: int, max_size: int
) -> tuple[int, int]:
    """The reference implementation of the spec in the module docstring."""
    if pos < 0 or mask_bit not in (0, 0x80) or rsv_allowed & ~0x70:
        raise ValueError(
            "whole_messages(): pos < 0, or mask_bit not 0 or 0x80, or rsv_allowed not "
            "reserved bits"
        )
    return _py_skip(data, pos, mask_bit, rsv_allowed, max_size)


def _py_skip(
    data: bytes, pos: int, mask_bit: int, rsv_allowed: int, max_size: int
) -> tuple[int, int]:
    """``py_whole_messages`` without its argument checks, for the session.

    The session passes only a *pos* within its data, ``f.masked``'s 0 or 0x80 and a
    flow's allowed reserved bits, so the checks there would only cost time (about 670
    instructions a call under callgrind). Anyone else calls ``whole_messages``.
    """
    n = len(data)
    whole = WHOLE_MESSAGE[rsv_allowed]
    key_len = 4 if mask_bit else 0
    messages = 0
    while pos + 1 < n:
        if not whole[data[pos]]:
            break
        # The 7-bit length when the mask bit is what it must be; 128 or more if not.
        length = data[pos + 1] ^ mask_bit
        if length < 126:
            head = 2 + key_len
        elif length == 126:
            if n - pos < 4:
                break
            head = 4 + key_len
            length = (data[pos + 2] << 8) | data[pos + 3]
        elif length == 127:
            if n - pos < 10:
                break
            head = 10 + key_len
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            if length >> 63:
                break  # §5.2: a malformed length, the session's to fail
        else:
            break  # the wrong mask bit
        if length > max_size:
            break
        messages += 1
        pos += head + length
    return pos, messages


def py_whole_read(
    data: bytes, remaining: int, mask_bit: int, rsv_allowed: int, max_size: int
) -> tuple[int, int] | None:
    """The reference implementation of ``whole_read`` (the module docstring)."""
    if remaining < 0 or mask_bit not in (0, 0x80) or rsv_allowed & ~0x70:
        raise ValueError(
            "whole_read(): remaining < 0, or mask_bit not 0 or 0x80, or rsv_allowed not "
            "reserved bits"
        )
    n = len(data)
    if remaining >= n:
        return 0, remaining - n
    end, messages = _py_skip(data, remaining, mask_bit, rsv_allowed, max_size)
    return None if end < n else (messages, end - n)


class PyFlowState:
    """The frame state of one direction that a read of whole messages touches; the
    session's ``_Flow`` (wsproxy.core.session) adds the rest and subclasses this or
    its C twin, ``_scan.FlowState`` (``FlowState`` here is the one in use).

    ``take(data)`` is the hot path's one call per read: True when *data* holds only
    whole messages as ``whole_read`` says, with no message in progress, no partial
    header and none of our own frames waiting (then *data* was counted: messages,
    bytes, what remains of a frame that goes on); False, with nothing changed, when
    the session's loop has to read it.

    ``PyFlowState(src, dst, src_leg, dst_leg, max_size, masked)`` also holds the rest of
    the session's flow (its sides, their legs, what the session's loop counts) and
    starts it, as its C twin does in C: ``_Flow`` has no ``__init__`` of its own (a
    Python one, called from a class's call, cost ~1.2k instructions a flow).
    ``PyFlowState()`` is a bare state (no sides), for the tests to set.
    """

    __slots__ = (
        "bytes", "dst", "dst_leg", "in_message", "mask_bit", "masked", "max_size",
        "message_room", "messages", "partial", "pending", "pending_close", "remaining",
        "rsv_allowed", "src", "src_leg", "undelivered",
    )

    #: Payload bytes of the current data frame still to pass through.
    remaining: int
    messages: int
    bytes: int
    #: The size limit of one message (the session's max_message_size).
    max_size: int
    #: The mask bit the frames must have (0x80 from a client, 0 from a backend).
    mask_bit: int
    #: Reserved bits an extension negotiated end to end may set (RSV1: deflate).
    rsv_allowed: int
    in_message: bool
    #: An incomplete header or control frame, kept until the rest arrives.
    partial: builtins.bytes  # (``bytes`` is a counter here)
    #: Our own frames for the other side, waiting for the frame in flight to end.
    pending: tuple[builtins.bytes, ...]
    pending_close: tuple[builtins.bytes, int | None, str] | None
    #: The side the frames are read from, and the side they go to, and their legs.
    src: Side
    dst: Side
    src_leg: Any
    dst_leg: Any
    #: RFC 6455 §5.1: client frames are masked, server frames are not.
    masked: bool
    #: Wire bytes the current message may still take (the size limit, less its
    #: frames so far).
    message_room: int
    #: Data messages that could not be delivered: dst was already sent a close.
    undelivered: int

    def __init__(
        self, src: Side | None = None, dst: Side | None = None, src_leg: Any = None,
        dst_leg: Any = None, max_size: int = 0, masked: bool = False, /,
    ) -> None:
        self.remaining = self.messages = self.bytes = self.rsv_allowed = 0
        self.in_message = False
        self.partial = b""
        #: Rare: a tuple, so that the usual empty one is shared rather than a list per
        #: flow.
        self.pending = ()
        self.pending_close = None
        self.message_room = self.undelivered = 0
        self.max_size = max_size
        self.mask_bit = 0x80 if masked else 0
        if src is not None:  # (not a bare state)
            self.src = src
            self.dst = cast(Side, dst)
            self.src_leg = src_leg
            self.dst_leg = dst_leg
            self.masked = masked

    def take(self, data: builtins.bytes) -> bool:
        if self.in_message or self.pending_close is not None or self.partial or self.pending:
            return False
        # whole_read's spec (py_whole_read) without its argument checks.
        n = len(data)
        remaining = self.remaining
        if remaining >= n:
            self.remaining = remaining - n
        else:
            end, messages = _py_skip(data, remaining, self.mask_bit, self.rsv_allowed,
                                     self.max_size)
            if end < n:
                return False
            self.remaining = end - n
            self.messages += messages
        self.bytes += n
        return True


class _Leg(Protocol):
    #: The frames waiting to be written to the leg's transport.
    out: list[builtins.bytes]


class _Session(Protocol):
    @property
    def state(self) -> object: ...


class RelayedProtocol(Protocol):
    """What a relay stands in for: an asyncio protocol (core imports no asyncio)."""

    def data_received(self, data: builtins.bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class PyRelay:
    """A transport's protocol while its session is OPEN: ``Session.relay`` and the
    driver's write in one call per read (``Session.relay_protocol`` makes them; the
    driver, wsproxy.io.direct, puts one on each transport when the session opens).

    ``data_received(data)``: while *session*'s state is *open*, nothing waits in *leg*
    (the leg of the other side: our pings, a close) and *flow*'s ``take(data)`` says
    the read holds only whole data messages (and counts it), *data* goes to *write*
    (the other transport's) as it came. Anything else (control frames, fragments, a
    cut header, a frame over the limit, our frames waiting, a session no longer
    OPEN) goes to *original*'s ``data_received``: the driver's own path, which
    decides on everything else. The other callbacks are *original*'s, unchanged.

    With a *driver* (wsproxy.io.direct sets it and *side*: the Connection that
    *original* calls with that side), the relay calls it directly where *original*
    would only pass a callback on: ``receive(side, data)`` for a read it does not
    pass, ``receive_close`` first for a read that is one whole close frame (``_close``),
    ``receive_eof(side)`` (answering False, as the driver's protocols do) and
    ``transport_lost(side)``: one Python call less each (~420 instructions; five at
    the end of nearly every connection), and no bound method held per relay.

    ``_scan.Relay`` is its compiled twin (``Relay`` here is the one in use), which
    reads the session's ``state`` and the leg's ``out`` at their slots.
    """

    __slots__ = ("countdown", "driver", "feeder", "flow", "leg", "mate", "open", "original",
                 "session", "side", "transport", "wake", "write")

    def __init__(
        self, flow: PyFlowState, leg: _Leg, session: _Session, open: object,
        write: Callable[[builtins.bytes], object], original: RelayedProtocol,
    ) -> None:
        self.flow = flow
        self.leg = leg
        self.session = session
        self.open = open
        self.write = write
        self.original = original
        #: None, or the driver *original* calls with *side* (the class's doc).
        self.driver: Driver | None = None
        self.side: Any = None
        #: None, or what reads the other socket into this transport (a feed of
        #: wsproxy.io.direct): told of this transport's pause and resume of writing
        #: (``pause()``, ``resume()``) and of its loss (``stop()``, before *original*).
        self.feeder: _Feeder | None = None
        #: None, or ``wake(relay)``: called once, after the read that made *countdown*
        #: reads passed straight through (io.direct starts its feed then, so that idle
        #: and short connections never pay for one). *transport* (this relay's) and
        #: *mate* (the other transport's relay) are there for it.
        self.wake: Callable[[PyRelay], object] | None = None
        self.countdown = 0
        self.transport: object = None
        self.mate: PyRelay | None = None

    def data_received(self, data: builtins.bytes) -> None:
        # The other leg's frames first: take() counts the read, so it comes last.
        if self.session.state is self.open and not self.leg.out and self.flow.take(data):
            self.write(data)
            if self.wake is not None:
                self.countdown -= 1
                if self.countdown <= 0:
                    wake, self.wake = self.wake, None
                    wake(self)
        elif self.driver is None:
            self.original.data_received(data)
        elif not self._close(data):
            self.driver.receive(self.side, data)

    def _close(self, data: builtins.bytes) -> bool:
        """A read that is one whole close frame as this flow expects it (FIN, no reserved
        bit, its mask bit, a payload under 126 bytes that is empty or a sendable code
        and a UTF-8 reason), nothing of a frame in flight, no partial header and none of
        our frames waiting (Session._lone_close's conditions), and no feed: handed to
        the driver's ``receive_close(side, frame, code, reason)``, which says whether it
        took it (the session decides). False: nothing changed, the read goes to the
        driver's ``receive``."""
        if self.feeder is not None or type(data) is not builtins.bytes:
            return False
        flow = self.flow
        mask_bit = flow.mask_bit
        head = 6 if mask_bit else 2
        length = len(data) - head
        if (not 0 <= length < 126 or length == 1 or data[0] != 0x88
                or data[1] != mask_bit | length):
            return False
        if flow.remaining or flow.pending_close is not None or flow.partial or flow.pending:
            return False
        payload = unmask(data[6:], data[2:6]) if mask_bit else data[2:]
        code: int | None = None
        reason = ""
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if not is_sendable(code):
                return False
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return False  # the session's to fail (1007)
        return bool(cast(Driver, self.driver).receive_close(self.side, data, code, reason))

    def connection_made(self, transport: object) -> None:
        self.original.connection_made(transport)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        if self.driver is None:
            return self.original.eof_received()
        self.driver.receive_eof(self.side)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.wake = self.mate = self.transport = None  # no feed now (and no cycle left)
        if self.feeder is not None:
            self.feeder.stop()
        if self.driver is None:
            self.original.connection_lost(exc)
        else:
            self.driver.transport_lost(self.side)

    def pause_writing(self) -> None:
        self.original.pause_writing()
        if self.feeder is not None:
            self.feeder.pause()

    def resume_writing(self) -> None:
        self.original.resume_writing()
        if self.feeder is not None:
            self.feeder.resume()


class Driver(Protocol):
    """What a relay calls directly (wsproxy.io.connection.Connection): *side* as the
    relay was given it."""

    def receive(self, side: Any, data: builtins.bytes) -> None: ...
    def receive_close(
        self, side: Any, frame: builtins.bytes, code: int | None, reason: str
    ) -> bool: ...
    def receive_eof(self, side: Any) -> None: ...
    def transport_lost(self, side: Any) -> None: ...


class _Feeder(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop(self) -> None: ...


_Picked = tuple[WholeMessages, WholeMessages, WholeRead, type[PyFlowState], type[PyRelay], str]


def _pick() -> _Picked:
    python = (py_whole_messages, _py_skip, py_whole_read, PyFlowState, PyRelay, "python")
    if os.environ.get("WSPROXY_NO_SPEEDUPS", "") not in ("", "0"):
        return python
    try:
        from wsproxy.core import _scan
    except ImportError:
        return python
    # In C the checks cost next to nothing: one function serves both.
    # The C FlowState has PyFlowState's attributes and take() (tested as twins), and
    # the C Relay PyRelay's callbacks.
    flow_state = cast(type[PyFlowState], _scan.FlowState)
    relay = cast(type[PyRelay], _scan.Relay)
    return (_scan.whole_messages, _scan.whole_messages, _scan.whole_read, flow_state, relay,
            "c")


whole_messages: WholeMessages
#: The session's entry point: ``whole_messages``, or where that is the Python one, the
#: same without its argument checks (``_py_skip``). Only for callers whose arguments
#: are known good.
session_whole_messages: WholeMessages
whole_read: WholeRead
#: The base of the session's flows: PyFlowState or its C twin.
FlowState: type[PyFlowState]
#: A transport's protocol while OPEN: PyRelay or its C twin (which takes a C FlowState).
Relay: type[PyRelay]
#: "c" when the compiled scanner is in use, "python" when the reference one is.
SPEEDUPS: str
whole_messages, session_whole_messages, whole_read, FlowState, Relay, SPEEDUPS = _pick()
