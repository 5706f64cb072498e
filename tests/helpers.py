"""Test helpers: a Session between two real wsproto peers (h11's ``ConnectionPair``).

``SessionHarness`` holds a ``wsproto`` client playing the browser, a ``wsproto``
server playing the backend, and the ``Session`` between them. Bytes move
synchronously: whatever a peer sends goes onto its wire, every wire is fed to the
session (in ``chunk_size`` pieces, one ``receive_data`` call each), and whatever the
session writes is handed to the peers, until nothing moves any more.

    h = SessionHarness()
    h.client_sends(TextMessage(data="hi"))
    assert h.upstream_received() == [TextMessage(data="hi")]

Like real endpoints, the peers answer pings and close frames on their own
(``auto_pong`` / ``auto_close``, per side). Besides wsproto's events, everything the
session writes after the opening handshake is also read by a small parser of our own
(``frames_to(side)``): it sees close codes wsproto 1.3.2 refuses (1014 is missing from
its ``CloseReason``), and frames exactly as they went on the wire.

To hold a frame mid-flight, take a peer's bytes with ``h.peer(side).send(event)`` and
feed them in parts with ``sends_raw``. That peer's wsproto then believes it sent the
whole frame, so switch off its ``auto_pong``/``auto_close`` until the rest is on the
wire, or its answers would land inside the frame.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension

from wsproxy.core import Session, Side
from wsproxy.core.closes import CloseCode
from wsproxy.core.frames import CLOSE, parse_close_payload, unmask
from wsproxy.core.handshake import Forwarding

FORWARDING = Forwarding(
    client_ip="127.0.0.1", forwarded_for="127.0.0.1", proto="http", request_id="abc"
)
HOST = "proxy.example"
TARGET = "/chat?room=1"
BAD_GATEWAY = CloseCode.BAD_GATEWAY


# Frames on the wire, read and written without wsproto…


@dataclass(frozen=True)
class RawFrame:
    """One frame as the session wrote it; ``payload`` is already unmasked."""

    opcode: int
    fin: bool
    rsv: int
    masked: bool
    payload: bytes

    @property
    def close(self) -> tuple[int | None, str]:
        """(code, reason) of a close frame."""
        assert self.opcode == CLOSE, self
        return parse_close_payload(self.payload)


def parse_frame(data: bytes | bytearray) -> tuple[RawFrame | None, int]:
    """The first whole frame in *data* and its size, or (None, 0) if incomplete."""
    if len(data) < 2:
        return None, 0
    b0, b1 = data[0], data[1]
    length, pos = b1 & 0x7F, 2
    if length >= 126:
        size = 2 if length == 126 else 8
        if len(data) < pos + size:
            return None, 0
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    masked = bool(b1 & 0x80)
    key = b""
    if masked:
        if len(data) < pos + 4:
            return None, 0
        key = bytes(data[pos : pos + 4])
        pos += 4
    if len(data) < pos + length:
        return None, 0
    payload = bytes(data[pos : pos + length])
    if masked:
        payload = unmask(payload, key)
    frame = RawFrame(b0 & 0x0F, bool(b0 & 0x80), b0 & 0x70, masked, payload)
    return frame, pos + length


class FrameReader:
    """Splits a byte stream into RawFrames, whatever the chunking."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.frames: list[RawFrame] = []
        self.written = bytearray()

    def feed(self, data: bytes) -> None:
        self.written += data
        self.buffer += data
        while True:
            frame, used = parse_frame(self.buffer)
            if frame is None:
                return
            del self.buffer[:used]
            self.frames.append(frame)


def build_raw(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """A frame for injection, possibly malformed. *length* overrides the header's length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 1 << 16:
        head = bytes((b0, m | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, m | 127)) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    # A key of the frame's own: the same frame is the same bytes on every run.
    key = hashlib.sha256(head + payload).digest()[:4]
    return head + key + unmask(payload, key)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    """*data* in pieces of *size* bytes (the whole of it when size is 0)."""
    if not size:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


def assemble(events: Iterable[Event]) -> list[Event]:
    """Events with every message's fragments merged into one whole message.

    A message appears where its last fragment did, so control frames received
    between fragments come before it. Works on events sent as well as received.
    """
    out: list[Event] = []
    parts: list[Message] = []  # type: ignore[type-arg]
    for event in events:
        if not isinstance(event, Message):
            out.append(event)
            continue
        parts.append(event)
        if event.message_finished:
            if isinstance(event, TextMessage):
                out.append(TextMessage(data="".join(p.data for p in parts)))
            else:
                out.append(BytesMessage(data=b"".join(bytes(p.data) for p in parts)))
            parts = []
    assert not parts, f"unfinished message: {parts}"
    return out


# The harness…


class SessionHarness:
    """A Session between a wsproto client (``client``) and a wsproto server (``backend``).

    With ``opened=True`` (the default) the constructor does both opening handshakes.
    ``chunk_size=1`` feeds the session one byte per ``receive_data`` call.
    """

    def __init__(
        self,
        *,
        opened: bool = True,
        chunk_size: int = 0,
        max_message_size: int = 1 << 20,
        max_request_head: int = 16 << 10,
        subprotocols: Sequence[str] = (),
        client_extensions: Sequence[Extension] = (),
        backend_subprotocol: str | None = None,
        backend_extensions: Sequence[Extension] = (),
        pass_extensions: bool = True,
    ) -> None:
        self.session = Session(
            "test", max_message_size=max_message_size, max_request_head=max_request_head
        )
        self.client = WSConnection(ConnectionType.CLIENT)
        self.backend = WSConnection(ConnectionType.SERVER)
        self.chunk_size = chunk_size
        #: Whether each peer answers pings and close frames by itself.
        self.auto_pong = dict.fromkeys(Side, True)
        self.auto_close = dict.fromkeys(Side, True)
        #: Bytes a peer has sent that the session has not read yet.
        self.wire: dict[Side, bytearray] = {side: bytearray() for side in Side}
        self._received: dict[Side, list[Event]] = {side: [] for side in Side}
        self._frames = {side: FrameReader() for side in Side}
        #: The backend's view of the upgrade, and the client's of the 101 (after open()).
        self.upstream_request: Request | None = None
        self.accepted: AcceptConnection | None = None
        if opened:
            self.open(
                subprotocols=subprotocols,
                client_extensions=client_extensions,
                backend_subprotocol=backend_subprotocol,
                backend_extensions=backend_extensions,
                pass_extensions=pass_extensions,
            )

    def peer(self, side: Side) -> WSConnection:
        return self.client if side is Side.CLIENT else self.backend

    # The opening…

    def open(
        self,
        *,
        subprotocols: Sequence[str] = (),
        client_extensions: Sequence[Extension] = (),
        backend_subprotocol: str | None = None,
        backend_extensions: Sequence[Extension] = (),
        pass_extensions: bool = True,
    ) -> None:
        """Both handshakes, checked on the way; the session ends up OPEN."""
        self.send_request(subprotocols=subprotocols, extensions=client_extensions)
        assert self.session.request is not None, self.client_received()
        request = self.connect(pass_extensions=pass_extensions)
        assert isinstance(request, Request), request
        self.upstream_request = request
        self.upstream_sends(
            AcceptConnection(
                subprotocol=backend_subprotocol, extensions=list(backend_extensions)
            )
        )
        accepted = self.client_received()
        assert [type(e) for e in accepted] == [AcceptConnection], accepted
        self.accepted = accepted[0]  # type: ignore[assignment]

    def send_request(
        self,
        *,
        subprotocols: Sequence[str] = (),
        extensions: Sequence[Extension | str] = (),
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
        target: str = TARGET,
    ) -> None:
        """The client peer sends its upgrade request to the session."""
        self.client_sends(
            Request(
                host=HOST,
                target=target,
                subprotocols=list(subprotocols),
                extensions=list(extensions),  # type: ignore[arg-type]
                extra_headers=list(extra_headers),
            )
        )

    def connect(self, *, pass_extensions: bool = True, new_backend: bool = False) -> Event:
        """accept() if still needed, connect_upstream(); the backend's Request event."""
        if new_backend:
            self.backend = WSConnection(ConnectionType.SERVER)
            self._frames[Side.UPSTREAM] = FrameReader()
        if self.session.request is not None and self.session.upstream_failure is None:
            self.session.accept()
        self.session.connect_upstream(
            target="t",
            authority="backend:80",
            path_prefix="",
            forwarding=FORWARDING,
            pass_extensions=pass_extensions,
        )
        self.pump()
        events = self.upstream_received()
        assert len(events) == 1, events
        return events[0]

    # Moving bytes…

    def client_sends(self, event: Event, *, flush: bool = True) -> None:
        """The client peer sends *event*; with flush=False it waits on the wire."""
        self.sends(Side.CLIENT, event, flush=flush)

    def upstream_sends(self, event: Event, *, flush: bool = True) -> None:
        self.sends(Side.UPSTREAM, event, flush=flush)

    def sends(self, side: Side, event: Event, *, flush: bool = True) -> None:
        """*side*'s peer sends *event* (for tests parametrized over the direction)."""
        self.sends_raw(side, self.peer(side).send(event), flush=flush)

    def client_sends_raw(self, data: bytes, *, flush: bool = True) -> None:
        """Bytes on the client's wire that its wsproto never produced (malformed frames)."""
        self.sends_raw(Side.CLIENT, data, flush=flush)

    def upstream_sends_raw(self, data: bytes, *, flush: bool = True) -> None:
        self.sends_raw(Side.UPSTREAM, data, flush=flush)

    def sends_raw(self, side: Side, data: bytes, *, flush: bool = True) -> None:
        self.wire[side] += data
        if flush:
            self.pump()

    def client_eof(self) -> None:
        self.eof(Side.CLIENT)

    def upstream_eof(self) -> None:
        self.eof(Side.UPSTREAM)

    def eof(self, side: Side) -> None:
        """*side*'s transport ends, after what is already on its wire."""
        self.pump()
        self.session.receive_eof(side)
        self.pump()

    def pump(self) -> None:
        """Move bytes both ways until quiescent."""
        moved = True
        while moved:
            moved = self._deliver()
            for side in Side:
                if self.wire[side]:
                    data = bytes(self.wire[side])
                    self.wire[side].clear()
                    for chunk in chunks(data, self.chunk_size):
                        self.session.receive_data(side, chunk)
                        self._deliver()
                    moved = True

    def _deliver(self) -> bool:
        """Hand what the session wrote to the peers; True if anything moved."""
        moved = False
        for side in Side:
            for chunk in self.session.data_to_send(side):
                moved = True
                self._deliver_chunk(side, chunk)
        return moved

    def _deliver_chunk(self, side: Side, chunk: bytes) -> None:
        peer = self.peer(side)
        if peer.connection is not None:  # after the handshake: frames
            assert peer.state is not ConnectionState.CLOSED, (
                f"session wrote {chunk!r} to the {side.value} after its close handshake"
            )
            self._frames[side].feed(chunk)
        peer.receive_data(chunk)
        for event in peer.events():
            self._on_event(side, peer, event)

    def _on_event(self, side: Side, peer: WSConnection, event: Event) -> None:
        if isinstance(event, CloseConnection) and peer.state is ConnectionState.OPEN:
            # wsproto reports a frame it refused as a close it did not receive.
            frames = self._frames[side].frames
            if frames and frames[-1].opcode == CLOSE and frames[-1].close[0] == BAD_GATEWAY:
                event = CloseConnection(code=BAD_GATEWAY, reason=frames[-1].close[1])
        self._received[side].append(event)
        if self._answers(side, peer, event):
            self.wire[side] += peer.send(event.response())  # type: ignore[attr-defined]

    def _answers(self, side: Side, peer: WSConnection, event: Event) -> bool:
        """Whether the peer answers *event* by itself, as a real endpoint would."""
        if isinstance(event, Ping):
            return self.auto_pong[side]
        if isinstance(event, CloseConnection):
            answerable = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)
            return self.auto_close[side] and peer.state in answerable
        return False

    # What arrived…

    def client_received(self) -> list[Event]:
        """Events the client peer saw since the last call."""
        return self.received(Side.CLIENT)

    def upstream_received(self) -> list[Event]:
        return self.received(Side.UPSTREAM)

    def received(self, side: Side) -> list[Event]:
        events, self._received[side] = self._received[side], []
        return events

    def frames_to(self, side: Side) -> list[RawFrame]:
        """Every frame the session wrote to *side* since the opening handshake."""
        return list(self._frames[side].frames)

    def closes_to(self, side: Side) -> list[tuple[int | None, str]]:
        """(code, reason) of every close frame the session wrote to *side*."""
        return [f.close for f in self._frames[side].frames if f.opcode == CLOSE]

    def written_to(self, side: Side) -> bytes:
        """Every byte the session wrote to *side* since the opening handshake."""
        return bytes(self._frames[side].written)

    def unparsed_to(self, side: Side) -> bytes:
        """Bytes written to *side* that do not (yet) make a whole frame."""
        return bytes(self._frames[side].buffer)
