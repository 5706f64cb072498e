"""max_message_size and permessage-deflate (issue 14), sans I/O.

The proxy never inflates: it sees wire bytes. A compressed message (RSV1) may take
deflate's worst case (frames.deflate_bound) of the limit; an uncompressed one keeps
the exact limit. The messages are real zlib output of incompressible bytes from a
fixed seed, sent by wsproto peers that negotiated permessage-deflate through the
session (tests/helpers.py).
"""

from __future__ import annotations

import math
import random
import zlib

import pytest
from wsproto.events import BytesMessage, CloseConnection
from wsproto.extensions import PerMessageDeflate

from tests.helpers import SessionHarness, assemble, build_raw
from wsproxy.core import Side
from wsproxy.core import frames as fr

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
LIMIT = 4096
TOO_BIG = (1009, "message too big")


@pytest.fixture(params=[CLIENT, UPSTREAM], ids=["from-client", "from-upstream"])
def src(request: pytest.FixtureRequest) -> Side:
    return request.param  # type: ignore[no-any-return]


def incompressible(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def deflated(data: bytes, *, mem_level: int = 8, window_bits: int = 15, level: int = 6) -> bytes:
    """*data* compressed as RFC 7692 §7.2.1 says: a sync flush, its 00 00 ff ff removed."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -window_bits, mem_level)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def deflate_harness() -> SessionHarness:
    h = SessionHarness(
        max_message_size=LIMIT,
        client_extensions=[PerMessageDeflate()],
        backend_extensions=[PerMessageDeflate()],
    )
    assert h.accepted is not None
    assert h.accepted.extensions, "permessage-deflate was not negotiated"
    return h


# The bound…


@pytest.mark.parametrize("size", [0, 1, 127, 255, 5000, 70_000])
def test_the_bound_holds_for_zlib_with_any_parameters(size: int) -> None:
    data = incompressible(size)
    for mem_level in range(1, 10):
        for window_bits in range(9, 16):
            for level in (0, 1, 6, 9):
                wire = len(deflated(data, mem_level=mem_level, window_bits=window_bits,
                                    level=level))
                assert wire <= fr.deflate_bound(size), (mem_level, window_bits, level, wire)


def test_one_block_header_per_16_kib_is_too_little_for_websockets_defaults() -> None:
    """Why the bound is zlib's for any parameters: websockets compresses with memLevel 5
    (and a 12-bit window on its server side), in blocks of 2047 bytes."""
    size = 1 << 20
    wire = len(deflated(incompressible(size), mem_level=5, window_bits=12))
    assert wire > size + 5 * math.ceil(size / 16383) + 8
    assert wire <= fr.deflate_bound(size)


# Through a session…


def test_an_incompressible_message_at_the_limit_passes_compressed(src: Side) -> None:
    h = deflate_harness()
    data = incompressible(LIMIT)
    h.sends(src, BytesMessage(data=data))
    [frame] = h.frames_to(src.other)
    assert frame.rsv == fr.RSV1
    assert len(frame.payload) > LIMIT  # deflate made it longer: over the plain limit
    assert h.received(src.other) == [BytesMessage(data=data)]
    assert h.closes_to(src) == []


def test_a_fragmented_compressed_message_gets_the_same_room(src: Side) -> None:
    h = deflate_harness()
    wire = deflated(incompressible(LIMIT), mem_level=1)  # the stored blocks of 127 bytes
    assert LIMIT < len(wire) <= fr.deflate_bound(LIMIT)
    mask = src is CLIENT
    parts = [wire[:1000], wire[1000:3000], wire[3000:]]
    h.sends_raw(src, build_raw(fr.BINARY, parts[0], fin=False, rsv=fr.RSV1, mask=mask)
                + build_raw(fr.CONTINUATION, parts[1], fin=False, mask=mask)
                + build_raw(fr.CONTINUATION, parts[2], mask=mask))
    assert assemble(h.received(src.other)) == [BytesMessage(data=incompressible(LIMIT))]
    assert h.closes_to(src) == []


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
def test_a_compressed_message_over_the_bound_is_1009(src: Side, fragmented: bool) -> None:
    h = deflate_harness()
    wire = deflated(incompressible(fr.deflate_bound(LIMIT)))  # longer still, once deflated
    assert len(wire) > fr.deflate_bound(LIMIT)
    mask = src is CLIENT
    if fragmented:
        raw = (build_raw(fr.BINARY, wire[:LIMIT], fin=False, rsv=fr.RSV1, mask=mask)
               + build_raw(fr.CONTINUATION, wire[LIMIT:], mask=mask))
    else:
        raw = build_raw(fr.BINARY, wire, rsv=fr.RSV1, mask=mask)
    h.sends_raw(src, raw)
    assert h.closes_to(src) == [TOO_BIG]
    assert h.closes_to(src.other) == [TOO_BIG]
    # What went before the frame that passed the bound was relayed; the message never ended.
    received = h.received(src.other)
    assert isinstance(received[-1], CloseConnection)
    assert all(not isinstance(e, BytesMessage) or not e.message_finished for e in received)


def test_at_the_bound_exactly_passes_and_one_byte_more_does_not(src: Side) -> None:
    """The proxy does not inflate: any RSV1 payload is measured as it is."""
    mask = src is CLIENT
    bound = fr.deflate_bound(LIMIT)
    h = deflate_harness()
    h.auto_close[src.other] = False  # the payload is no deflate stream for its wsproto
    h.sends_raw(src, build_raw(fr.BINARY, b"\x00" * bound, rsv=fr.RSV1, mask=mask))
    assert h.closes_to(src) == []
    assert len(h.frames_to(src.other)[0].payload) == bound
    h = deflate_harness()
    h.sends_raw(src, build_raw(fr.BINARY, b"\x00" * (bound + 1), rsv=fr.RSV1, mask=mask))
    assert h.closes_to(src) == [TOO_BIG]


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
def test_an_uncompressed_message_keeps_the_exact_limit(src: Side, fragmented: bool) -> None:
    h = deflate_harness()
    mask = src is CLIENT
    data = incompressible(LIMIT + 1)
    if fragmented:
        raw = (build_raw(fr.BINARY, data[:100], fin=False, mask=mask)
               + build_raw(fr.CONTINUATION, data[100:], mask=mask))
    else:
        raw = build_raw(fr.BINARY, data, mask=mask)
    h.sends_raw(src, raw)
    assert h.closes_to(src) == [TOO_BIG]
    assert h.closes_to(src.other) == [TOO_BIG]


def test_without_deflate_the_limit_is_exact(src: Side) -> None:
    h = SessionHarness(max_message_size=LIMIT)
    h.sends(src, BytesMessage(data=incompressible(LIMIT + 1)))
    assert h.closes_to(src) == [TOO_BIG]
