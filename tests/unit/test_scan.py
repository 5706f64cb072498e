"""The compiled frame scanner and its Python reference give the same answers (issue 18).

wsproxy.core.scan has one spec and two implementations: ``py_whole_messages`` (the
readable reference, and the fallback; the session calls it without its argument
checks, ``_py_skip``, and only from a read's second frame) and
``wsproxy.core._scan.whole_messages`` (C).
Checked here with hypothesis (derandomized: the same inputs on every run):

- the function itself, on the same inputs: frame streams and arbitrary bytes, any
  start, masked or not, any allowed reserved bits, limits from negative to past 2^64,
  bad arguments: the same (pos, messages) or the same exception;
- ``whole_read`` (a read of whole messages, the session's first question per read)
  likewise, C against Python, on the same inputs;
- a whole Session, once with each, fed through ``receive_data`` or through the
  driver's ``relay``: arbitrary frame streams from both sides (whole,
  fragmented, control frames, limits exceeded, bad frames, garbage) split at arbitrary
  points, with heartbeat pings and closes of the proxy's own in between: the same
  bytes out to each side, the same states, close codes, counters and pongs.

The C tests skip where the extension was not built (no compiler), unless
``WSPROXY_REQUIRE_SPEEDUPS=1`` makes that a failure (.ci/run fails before the tests
when ``wsproxy --version`` does not say ``speedups: c``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SessionHarness, build_raw
from wsproxy.core import frames, scan
from wsproxy.core import session as session_module
from wsproxy.core.states import Side

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("wsproxy.core._scan")
    except ImportError:
        if os.environ.get("WSPROXY_REQUIRE_SPEEDUPS", "") not in ("", "0"):
            raise
        return None


_scan = _compiled()
needs_c = pytest.mark.skipif(_scan is None, reason="the C extension was not built (no compiler)")
Scanner = Callable[[bytes, int, int, int, int], tuple[int, int]]


def c_scanner() -> Scanner:
    assert _scan is not None
    return _scan.whole_messages  # type: ignore[no-any-return]


def outcome(fn: Scanner, *args: Any) -> object:
    try:
        return fn(*args)
    except (ValueError, TypeError, OverflowError) as exc:
        return type(exc)


# Frames, good and bad…

PAYLOAD_LENGTHS = st.one_of(
    st.integers(0, 8), st.sampled_from([124, 125, 126, 127, 200, 65535, 65536])
)


@st.composite
def frame(draw: st.DrawFn, from_client: bool) -> bytes:
    """One frame as *from_client*'s side would send it, or one that breaks a rule."""
    kind = draw(
        st.sampled_from(
            ["run", "run", "whole", "whole", "first", "continuation", "control", "close",
             "reserved-opcode", "rsv", "wrong-mask", "msb-length", "long-control", "huge",
             "garbage"]
        )
    )
    mask = from_client
    if kind == "run":  # what a read at 64 B is made of: many whole messages
        sizes = draw(st.lists(st.integers(0, 70), min_size=1, max_size=30))
        return b"".join(build_raw(2, b"m" * size, mask=mask) for size in sizes)
    if kind == "garbage":
        return draw(st.binary(max_size=12))
    if kind == "wrong-mask":
        return build_raw(draw(st.sampled_from([1, 2, 9])), b"ab", mask=not mask)
    if kind == "msb-length":
        return build_raw(2, b"", mask=mask, length=(1 << 63) + draw(st.integers(0, 5)))
    if kind == "huge":  # a header announcing more than any limit, the payload to come
        return build_raw(2, b"x" * 3, mask=mask, length=draw(st.sampled_from([70000, 1 << 40])))
    if kind == "long-control":
        return build_raw(9, b"p" * 126, mask=mask)
    if kind == "close":
        payload = draw(
            st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8bye", b"\x03", b"\x03\xed",
                             b"\x03\xe8\xff", b"\x0f\xa0ok"])
        )
        return build_raw(8, payload, mask=mask)
    if kind == "control":
        return build_raw(draw(st.sampled_from([9, 10])), draw(st.binary(max_size=6)), mask=mask)
    if kind == "reserved-opcode":
        return build_raw(draw(st.sampled_from([3, 7, 0xB, 0xF])), b"r", mask=mask)
    size = draw(PAYLOAD_LENGTHS)
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    rsv = draw(st.sampled_from([0x40, 0x20, 0x10, 0x70])) if kind == "rsv" else 0
    if kind == "first":
        return build_raw(draw(st.sampled_from([1, 2])), payload, fin=False, rsv=rsv, mask=mask)
    if kind == "continuation":
        return build_raw(0, payload, fin=draw(st.booleans()), mask=mask)
    return build_raw(draw(st.sampled_from([1, 2])), payload, rsv=rsv, mask=mask)


def stream(from_client: bool) -> st.SearchStrategy[bytes]:
    return st.lists(frame(from_client), max_size=8).map(b"".join)


MAX_SIZES = st.sampled_from(
    [-1, 0, 1, 5, 125, 126, 200, 65535, 65536, 1 << 20, (1 << 63) - 1, 1 << 63, 1 << 64]
)


# The function: the same answers on the same inputs…


@needs_c
@given(
    from_client=st.booleans(),
    data=st.data(),
    rsv_allowed=st.sampled_from([0, 0x40, 0x70, 0x10, 0x30]),
    max_size=MAX_SIZES,
)
@settings(max_examples=1500)
def test_the_c_scanner_answers_as_the_python_one(
    from_client: bool, data: st.DataObject, rsv_allowed: int, max_size: int
) -> None:
    raw = data.draw(st.one_of(stream(from_client), st.binary(max_size=40)))
    pos = data.draw(st.integers(0, len(raw) + 3))
    mask_bit = 0x80 if from_client else 0
    args = (raw, pos, mask_bit, rsv_allowed, max_size)
    expected = outcome(scan.py_whole_messages, *args)
    assert outcome(c_scanner(), *args) == expected
    # Any other buffer gives the same answer as bytes.
    assert outcome(c_scanner(), bytearray(raw), *args[1:]) == expected
    assert outcome(c_scanner(), memoryview(raw), *args[1:]) == expected


@given(
    from_client=st.booleans(),
    data=st.data(),
    rsv_allowed=st.sampled_from([0, 0x40, 0x70, 0x10, 0x30]),
    max_size=MAX_SIZES,
)
@settings(max_examples=500)
def test_the_sessions_unchecked_entry_answers_as_the_checked_one(
    from_client: bool, data: st.DataObject, rsv_allowed: int, max_size: int
) -> None:
    """``_py_skip`` (the session's, on the fallback) is ``py_whole_messages`` less its
    argument checks: the same answers on every argument the session can pass."""
    raw = data.draw(st.one_of(stream(from_client), st.binary(max_size=40)))
    args = (raw, data.draw(st.integers(0, len(raw) + 3)), 0x80 if from_client else 0,
            rsv_allowed, max_size)
    assert scan._py_skip(*args) == scan.py_whole_messages(*args)


@needs_c
@pytest.mark.parametrize(
    "args",
    [
        (b"\x82\x00", -1, 0, 0, 10),  # a negative start
        (b"\x82\x00", 0, 1, 0, 10),  # a mask bit that is neither 0 nor 0x80
        (b"\x82\x00", 0, 0x100, 0, 10),
        (b"\x82\x00", 0, 0, 0x80, 10),  # FIN is not a reserved bit
        (b"\x82\x00", 0, 0, -1, 10),
        (b"\x82\x00", 0, 0, 1 << 70, 10),
        (b"\x82\x00", -(1 << 70), 0, 0, 10),
    ],
)
def test_bad_arguments_are_refused_alike(args: tuple[Any, ...]) -> None:
    assert outcome(scan.py_whole_messages, *args) is ValueError
    assert outcome(c_scanner(), *args) is ValueError


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # Three whole 2-byte frames from a backend, then a ping: stops at the ping.
        ((b"\x82\x00\x81\x00\x82\x00\x89\x00", 0, 0, 0, 10), (6, 3)),
        # A masked frame whose payload goes on past the read.
        ((b"\x82\x85abcdxy", 0, 0x80, 0, 10), (11, 1)),
        # Over the limit: not skipped.
        ((b"\x82\x05hello", 0, 0, 0, 4), (0, 0)),
        # A 16-bit length cut off by the end of the read.
        ((b"\x82\x7e\x01", 0, 0, 0, 1000), (0, 0)),
        ((b"\x82\x7e\x01\x00" + b"x" * 256, 0, 0, 0, 1000), (260, 1)),
        # A 64-bit length with its top bit set: the session's to fail.
        ((b"\x82\x7f\x80" + b"\x00" * 7, 0, 0, 0, 1 << 64), (0, 0)),
        # RSV1 only where it is allowed.
        ((b"\xc2\x00", 0, 0, 0, 10), (0, 0)),
        ((b"\xc2\x00", 0, 0, 0x40, 10), (2, 1)),
        # A start past the end comes back as it was.
        ((b"", 1 << 70, 0, 0, 10), (1 << 70, 0)),
    ],
)
def test_examples(args: tuple[Any, ...], expected: tuple[int, int]) -> None:
    assert scan.py_whole_messages(*args) == expected
    if _scan is not None:
        assert c_scanner()(*args) == expected


# A read of whole messages: the same answers on the same inputs…

@st.composite
def whole_run(draw: st.DrawFn, from_client: bool) -> bytes:
    """Whole messages only (the hot path's reads), the last one cut off anywhere."""
    sizes = draw(st.lists(st.integers(0, 300), min_size=1, max_size=20))
    raw = b"".join(build_raw(draw(st.sampled_from([1, 2])), b"m" * size, mask=from_client)
                   for size in sizes)
    return raw[: draw(st.integers(0, len(raw)))]


def read_of(from_client: bool) -> st.SearchStrategy[bytes]:
    return st.one_of(stream(from_client), st.binary(max_size=40), whole_run(from_client))


REMAINING = st.one_of(st.integers(0, 80), st.sampled_from([70000, (1 << 63) - 1, 1 << 63,
                                                           1 << 64, 1 << 70]))


def c_whole_read() -> Callable[..., object]:
    assert _scan is not None
    return _scan.whole_read  # type: ignore[no-any-return]


@needs_c
@given(
    from_client=st.booleans(),
    data=st.data(),
    rsv_allowed=st.sampled_from([0, 0x40, 0x70, 0x10, 0x30]),
    max_size=MAX_SIZES,
    remaining=REMAINING,
)
@settings(max_examples=600)
def test_the_c_whole_read_answers_as_the_python_one(
    from_client: bool, data: st.DataObject, rsv_allowed: int, max_size: int, remaining: int
) -> None:
    raw = data.draw(read_of(from_client))
    args = (raw, remaining, 0x80 if from_client else 0, rsv_allowed, max_size)
    expected = outcome(scan.py_whole_read, *args)
    assert outcome(c_whole_read(), *args) == expected
    assert outcome(c_whole_read(), bytearray(raw), *args[1:]) == expected
    assert outcome(c_whole_read(), memoryview(raw), *args[1:]) == expected


@given(
    from_client=st.booleans(),
    data=st.data(),
    rsv_allowed=st.sampled_from([0, 0x40, 0x70, 0x10, 0x30]),
    max_size=MAX_SIZES,
    remaining=REMAINING,
)
@settings(max_examples=500)
def test_whole_read_is_whole_messages_up_to_the_end_of_the_read(
    from_client: bool, data: st.DataObject, rsv_allowed: int, max_size: int, remaining: int
) -> None:
    """The spec's two halves: all of a read in the frame in flight, or a read whole
    when the walk from *remaining* (whole_messages) reaches its end."""
    raw = data.draw(read_of(from_client))
    args = (raw, remaining, 0x80 if from_client else 0, rsv_allowed, max_size)
    answer = scan.py_whole_read(*args)
    if remaining >= len(raw):
        assert answer == (0, remaining - len(raw))
        return
    end, messages = scan.py_whole_messages(*args)
    assert answer == (None if end < len(raw) else (messages, end - len(raw)))


@needs_c
@pytest.mark.parametrize(
    "args",
    [
        (b"\x82\x00", -1, 0, 0, 10),
        (b"\x82\x00", -(1 << 70), 0, 0, 10),
        (b"\x82\x00", 0, 1, 0, 10),
        (b"\x82\x00", 0, 0, 0x80, 10),
        (b"\x82\x00", 5, 0, 1 << 70, 10),  # checked even where nothing is walked
    ],
)
def test_bad_arguments_to_whole_read_are_refused_alike(args: tuple[Any, ...]) -> None:
    assert outcome(scan.py_whole_read, *args) is ValueError
    assert outcome(c_whole_read(), *args) is ValueError


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # Two whole frames from a backend: the read goes through.
        ((b"\x82\x00\x81\x01a", 0, 0, 0, 10), (2, 0)),
        # The end of a frame in flight, then one whole frame.
        ((b"xy\x82\x00", 2, 0, 0, 10), (1, 0)),
        # All of it payload of the frame in flight.
        ((b"xyz", 5, 0, 0, 10), (0, 2)),
        ((b"xyz", 3, 0, 0, 10), (0, 0)),
        # The last frame goes on in the next read.
        ((b"\x82\x85abcdxy", 0, 0x80, 0, 10), (1, 3)),
        # A ping, a header cut short, a frame over the limit: the session's loop.
        ((b"\x82\x00\x89\x00", 0, 0, 0, 10), None),
        ((b"\x82\x00\x82", 0, 0, 0, 10), None),
        ((b"\x82\x05hello", 0, 0, 0, 4), None),
        ((b"", 0, 0, 0, 10), (0, 0)),
    ],
)
def test_whole_read_examples(args: tuple[Any, ...], expected: object) -> None:
    assert scan.py_whole_read(*args) == expected
    if _scan is not None:
        assert c_whole_read()(*args) == expected


# One read taken by a flow's state: the same answer and the same state after…

FLOW_FIELDS = ("remaining", "messages", "bytes", "in_message", "partial", "pending",
               "pending_close")


@st.composite
def flow_state(draw: st.DrawFn, from_client: bool) -> dict[str, object]:
    """A flow's state as the session leaves it between reads (mostly a clean one)."""
    clean = draw(st.booleans()) or draw(st.booleans())
    return {
        "remaining": draw(REMAINING.filter(lambda r: r < 1 << 64)),
        "messages": draw(st.integers(0, 1 << 40)),
        "bytes": draw(st.integers(0, 1 << 50)),
        "max_size": draw(MAX_SIZES.map(lambda m: max(-1, min(m, (1 << 63) - 1)))),
        "mask_bit": 0x80 if from_client else 0,
        "rsv_allowed": draw(st.sampled_from([0, 0x40, 0x70])),
        "in_message": False if clean else draw(st.booleans()),
        "partial": b"" if clean else draw(st.sampled_from([b"", b"\x82"])),
        "pending": () if clean else draw(st.sampled_from([(), (b"\x89\x00",)])),
        "pending_close": None if clean else draw(st.sampled_from([None, (b"\x88\x00", None, "")])),
    }


def take_with(base: type, state: dict[str, object], data: bytes) -> object:
    flow = base()
    for name, value in state.items():
        setattr(flow, name, value)
    return flow.take(data), [getattr(flow, name) for name in FLOW_FIELDS]


@needs_c
@given(from_client=st.booleans(), data=st.data())
@settings(max_examples=600)
def test_the_c_flow_state_takes_a_read_as_the_python_one(
    from_client: bool, data: st.DataObject
) -> None:
    state = data.draw(flow_state(from_client))
    raw = data.draw(read_of(from_client))
    assert _scan is not None
    expected = take_with(scan.PyFlowState, state, raw)
    assert take_with(_scan.FlowState, state, raw) == expected
    assert take_with(_scan.FlowState, state, bytearray(raw)) == expected


@given(from_client=st.booleans(), data=st.data())
@settings(max_examples=500)
def test_take_is_whole_read_on_a_clean_flow(from_client: bool, data: st.DataObject) -> None:
    """PyFlowState.take: whole_read's answer, counted, and nothing changed on None or
    while anything is in progress."""
    state = data.draw(flow_state(from_client))
    raw = data.draw(read_of(from_client))
    taken, after = take_with(scan.PyFlowState, state, raw)  # type: ignore[misc]
    before = [state[name] for name in FLOW_FIELDS]
    clean = not (state["in_message"] or state["partial"] or state["pending"]
                 or state["pending_close"] is not None)
    read = scan.py_whole_read(raw, state["remaining"], state["mask_bit"],  # type: ignore[arg-type]
                              state["rsv_allowed"], state["max_size"])  # type: ignore[arg-type]
    if not clean or read is None:
        assert (taken, after) == (False, before)
        return
    messages, remaining = read
    assert taken is True
    assert after == [remaining, before[1] + messages, before[2] + len(raw), *before[3:]]


#: Every field a FlowState starts (PyFlowState.__init__, the C flow_new and flow_init).
STARTED_FIELDS = (*FLOW_FIELDS, "max_size", "mask_bit", "rsv_allowed", "message_room",
                  "undelivered", "src", "dst", "src_leg", "dst_leg", "masked")


def started(flow: object) -> list[object]:
    """*flow*'s fields as it was started; AttributeError for those never set."""
    return [getattr(flow, name, AttributeError) for name in STARTED_FIELDS]


@needs_c
@given(masked=st.booleans(), max_size=st.integers(-1, (1 << 63) - 1))
@settings(max_examples=100)
def test_the_c_flow_state_starts_as_the_python_one(masked: bool, max_size: int) -> None:
    """A session's flow (sides, legs, limit, masking), and a bare state, alike."""
    assert _scan is not None
    src_leg, dst_leg = object(), object()
    args = (CLIENT, UPSTREAM, src_leg, dst_leg, max_size, masked)
    assert started(_scan.FlowState(*args)) == started(scan.PyFlowState(*args))
    assert started(_scan.FlowState()) == started(scan.PyFlowState())
    fresh = [0, 0, 0, False, b"", (), None]
    assert started(scan.PyFlowState(*args)) == [
        *fresh, max_size, 0x80 if masked else 0, 0, 0, 0, CLIENT, UPSTREAM, src_leg, dst_leg,
        masked,
    ]
    assert started(scan.PyFlowState()) == [*fresh, 0, 0, 0, 0, 0, *[AttributeError] * 5]


def test_the_longest_frame_in_flight_is_held() -> None:
    """A 2^63 - 1 byte payload (the longest §5.2 allows): all of it remains after its
    header, at the top of a signed 64-bit integer, alike in both states."""
    header = build_raw(2, b"", mask=True, length=(1 << 63) - 1)
    for base in ([scan.PyFlowState] + ([_scan.FlowState] if _scan is not None else [])):
        state = {**dict(zip(FLOW_FIELDS, [0, 0, 0, False, b"", (), None], strict=True)),
                 "max_size": (1 << 63) - 1, "mask_bit": 0x80, "rsv_allowed": 0}
        assert take_with(base, state, header) == (
            True, [(1 << 63) - 1, 1, len(header), False, b"", (), None]
        )


# A whole session: the same bytes, states and closes with either…

Op = tuple[Any, ...]


@st.composite
def operation(draw: st.DrawFn) -> Op:
    side = draw(st.sampled_from([CLIENT, UPSTREAM]))
    what = draw(st.sampled_from(["feed", "feed", "feed", "feed", "ping", "close", "eof"]))
    if what == "feed":
        data = draw(stream(side is CLIENT))
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        return ("feed", side, pieces)
    if what == "close":
        return ("close", side, draw(st.sampled_from([1000, 1001, 4000])))
    return (what, side)


def flow_on(base: type) -> type:
    """The session's ``_Flow`` with *base* under it (scan.PyFlowState or the C
    FlowState): the session module run once more, as a copy, with scan.FlowState
    patched; a session built while its ``_Flow`` is patched with this uses it."""
    with mock.patch.object(scan, "FlowState", base):
        spec = importlib.util.spec_from_file_location(
            f"wsproxy_session_on_{base.__module__.replace('.', '_')}", session_module.__file__
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    flow: type = module._Flow
    assert flow.__mro__[1] is base
    return flow


FLOWS: dict[str, type] = {"python": flow_on(scan.PyFlowState)}
if _scan is not None:
    FLOWS["c"] = flow_on(_scan.FlowState)


def run_session(
    ops: list[Op], scanner: Scanner, max_size: int, rsv_allowed: int, *, scan_first: bool,
    flow: str | None = None,
) -> list[object]:
    """Everything a driver could see of one session fed *ops*, with *scanner* (asked
    from a read's first frame, as with C, or from its second, as on the fallback);
    with *flow* ("python" or "c": the base of its flows), through ``relay`` as the
    driver feeds an OPEN session."""
    no_random = SimpleNamespace(urandom=lambda n: b"\x01" * n)  # our pings' mask keys
    with mock.patch.object(session_module, "_whole_messages", scanner), mock.patch.object(
        session_module, "_HOLD_FIRST", not scan_first
    ), mock.patch.object(
        session_module, "_Flow", FLOWS[flow or "python"]
    ), mock.patch.object(frames, "os", no_random):
        harness = SessionHarness(max_message_size=max_size)
        session = harness.session
        for flow in (session._client_flow, session._upstream_flow):
            flow.rsv_allowed = rsv_allowed
        trace: list[object] = []
        for op in ops:
            kind, side = op[0], op[1]
            if kind == "feed":
                for chunk in op[2]:
                    through = None
                    if flow is None:
                        session.receive_data(side, chunk)
                    else:
                        through = session.relay(side, chunk)
                    trace.append(snapshot(session, side.other, through))
            elif kind == "ping":
                session.send_ping(side, b"7")
            elif kind == "close":
                session.close(side, op[2], "bye")
            else:
                session.receive_eof(side)
            trace.append(snapshot(session))
        trace.append(
            (
                session.close_codes(),
                session.initiator,
                session.close_reason,
                [
                    (session.messages(s), session.bytes_relayed(s), session.undelivered(s),
                     session.close_code_sent(s))
                    for s in (CLIENT, UPSTREAM)
                ],
                dict(session.take_pongs()),
            )
        )
        return trace


def snapshot(session: Any, side: Side = CLIENT, through: bytes | None = None) -> object:
    """*through*: what ``relay`` gave back for *side*, written before the rest."""
    first = {CLIENT: b"", UPSTREAM: b"", side: through or b""}
    return (
        first[CLIENT] + b"".join(session.data_to_send(CLIENT)),
        first[UPSTREAM] + b"".join(session.data_to_send(UPSTREAM)),
        session.state,
        session.leg_state(CLIENT),
        session.leg_state(UPSTREAM),
        session.should_close(CLIENT),
        session.should_close(UPSTREAM),
    )


@needs_c
@given(
    ops=st.lists(operation(), min_size=1, max_size=8),
    max_size=st.sampled_from([0, 3, 125, 126, 300, 65536, 1 << 20]),
    rsv_allowed=st.sampled_from([0, 0x40, 0x70]),
)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_a_session_relays_alike_with_either_scanner(
    ops: list[Op], max_size: int, rsv_allowed: int
) -> None:
    # As the fallback runs (unchecked, from the second frame) and as C does.
    python = run_session(ops, scan._py_skip, max_size, rsv_allowed, scan_first=False)
    compiled = run_session(ops, c_scanner(), max_size, rsv_allowed, scan_first=True)
    assert compiled == python


@given(
    ops=st.lists(operation(), min_size=1, max_size=8),
    max_size=st.sampled_from([0, 3, 125, 126, 300, 65536, 1 << 20]),
    rsv_allowed=st.sampled_from([0, 0x40, 0x70]),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_a_session_relays_alike_whichever_frame_the_scanner_starts_at(
    ops: list[Op], max_size: int, rsv_allowed: int
) -> None:
    """The fallback leaves a read's first frame to the session's own loop: the same
    as asking the reference scanner from the first frame (no C needed)."""
    first = run_session(ops, scan.py_whole_messages, max_size, rsv_allowed, scan_first=True)
    second = run_session(ops, scan._py_skip, max_size, rsv_allowed, scan_first=False)
    assert second == first


@given(
    ops=st.lists(operation(), min_size=1, max_size=8),
    max_size=st.sampled_from([0, 3, 125, 126, 300, 65536, 1 << 20]),
    rsv_allowed=st.sampled_from([0, 0x40, 0x70]),
)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_relay_gives_what_receive_data_gives(
    ops: list[Op], max_size: int, rsv_allowed: int
) -> None:
    """The driver's hot path (``relay``: one ``take`` per read, the read forwarded as
    it came) against the session's loop alone, with each FlowState there is."""
    reference = run_session(ops, scan.py_whole_messages, max_size, rsv_allowed,
                            scan_first=True)
    python = run_session(ops, scan._py_skip, max_size, rsv_allowed, scan_first=False,
                         flow="python")
    assert python == reference
    if _scan is not None:
        compiled = run_session(ops, c_scanner(), max_size, rsv_allowed, scan_first=True,
                               flow="c")
        assert compiled == reference


def test_the_session_uses_the_scanner_the_module_picked() -> None:
    assert session_module._whole_messages is scan.session_whole_messages
    if os.environ.get("WSPROXY_NO_SPEEDUPS", "") not in ("", "0"):
        assert scan.SPEEDUPS == "python"
        assert scan.whole_messages is scan.py_whole_messages
        assert scan.session_whole_messages is scan._py_skip
        assert session_module._FlowState is scan.FlowState is scan.PyFlowState
        assert session_module._HOLD_FIRST is True
    elif _scan is not None:
        assert scan.SPEEDUPS == "c"
        assert scan.whole_messages is _scan.whole_messages
        assert scan.session_whole_messages is _scan.whole_messages
        assert session_module._FlowState is scan.FlowState is _scan.FlowState
        assert session_module._HOLD_FIRST is False


@needs_c
@pytest.mark.parametrize(("env", "expected"), [("1", "python"), ("0", "c"), ("", "c")])
def test_wsproxy_no_speedups_forces_python(env: str, expected: str) -> None:
    """Both compiled twins at once (the frames' and the heads'), as --version says."""
    out = subprocess.run(
        [sys.executable, "-c", "from wsproxy import speedups; print(speedups.SPEEDUPS)"],
        env={**os.environ, "WSPROXY_NO_SPEEDUPS": env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected
