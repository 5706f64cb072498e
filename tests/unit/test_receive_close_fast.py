"""Session._receive_close's shortcut for the usual close (the first of a connection,
relayed as it came) decides as its general branches did (issue 18).

Checked with hypothesis (derandomized): a session with the shortcut and one with
_receive_close as it was (below, verbatim) get the same steps: reads of close frames
good and bad, pings and data from either side (tests.unit.test_lone_close's), the
proxy's own closes, EOFs, with and without a restart code (a backend's 1001/1012 then
takes the restart branch). Both write the same bytes and end in the same states.
"""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_lone_close import _opened, _outputs, _state, frames_from
from wsproxy.core import frames
from wsproxy.core.closes import ProxyClose
from wsproxy.core.frames import CloseFrameError
from wsproxy.core.session import (
    _L_CLOSE_RECEIVED,
    _LT_RECEIVE_CLOSE,
    _RESTART_CODES,
    _SIDE_NAME,
    _UPSTREAM,
    Session,
)
from wsproxy.core.states import LEG_CAN_SEND, LegTrigger, Side

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM


class _General(Session):
    """_receive_close before the shortcut."""

    __slots__ = ()

    def _receive_close(self, f, frame, payload):  # type: ignore[no-untyped-def]
        try:
            code, reason = frames.parse_close_payload(payload)
        except CloseFrameError as exc:
            self._fail(f.src, ProxyClose(exc.code, str(exc)))
            return False
        src = f.src_leg
        src.close_received = (code, reason)
        src.fire(_LT_RECEIVE_CLOSE)
        if self.initiator is None:
            self.initiator = _SIDE_NAME[f.src]
        dst = f.dst_leg
        if dst.fail_close is not None and dst.state in LEG_CAN_SEND:
            self._send_close(f.dst, *dst.fail_close, initiator=None)
            dst.fire(LegTrigger.ABANDON)
        elif (
            f.src is _UPSTREAM
            and src.state is _L_CLOSE_RECEIVED
            and code in _RESTART_CODES
            and self.restart_code is not None
            and dst.state in LEG_CAN_SEND
        ):
            self.backend_restarting = True
            self._send_close(f.src, code, reason, initiator=None)
            restart = self.restart_reason
            reason = restart if isinstance(restart, str) else restart()
            self._send_close(f.dst, self.restart_code, reason, initiator=None)
        elif dst.state in LEG_CAN_SEND:
            dst.out.append(frame)
            self._sent_close(dst, code, reason)
        elif src.state is _L_CLOSE_RECEIVED:
            self._send_close(f.src, code, reason, initiator=None)
        self._settle()
        return True


def _backend_close(code: int) -> bytes:
    return frames.build_frame(frames.CLOSE, code.to_bytes(2, "big"), mask=False)


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[str, Side, object]]:
    out: list[tuple[str, Side, object]] = []
    for _ in range(draw(st.integers(1, 6))):
        side = draw(st.sampled_from([CLIENT, UPSTREAM]))
        kind = draw(st.sampled_from(["read", "read", "read", "restart", "close", "eof"]))
        if kind == "read":
            out.append(("read", side, b"".join(draw(st.lists(frames_from(side), min_size=1,
                                                             max_size=2)))))
        elif kind == "restart":  # a backend going away, or a plain close of its own
            out.append(("read", UPSTREAM, _backend_close(draw(st.sampled_from(
                [1000, 1001, 1012, 4000])))))
        elif kind == "close":
            out.append(("close", side, draw(st.sampled_from([1000, 1001, 4000]))))
        else:
            out.append(("eof", side, None))
    return out


@settings(max_examples=600, derandomize=True, deadline=None)
@given(steps(), st.booleans())
def test_the_shortcut_decides_as_the_general_branches(
    actions: list[tuple[str, Side, object]], restarts: bool
) -> None:
    fast, general = _opened(Session), _opened(_General)
    for s in (fast, general):
        if restarts:
            s.restart_code = 1012
            s.restart_reason = "restarting"
    with mock.patch.object(frames.os, "urandom", lambda n: bytes(range(1, n + 1))):
        for kind, side, arg in actions:
            for s in (fast, general):
                if kind == "read":
                    assert isinstance(arg, bytes)
                    s.receive_data(side, arg)
                elif kind == "close":
                    assert isinstance(arg, int)
                    s.close(side, arg, "bye")
                else:
                    s.receive_eof(side)
            assert _outputs(fast) == _outputs(general)
            assert _state(fast) == _state(general)
            assert fast.close_codes() == general.close_codes()
