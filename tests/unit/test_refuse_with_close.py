"""``admission.reject_with: close`` in the sans-I/O core: the proxy's own 101, then a
1013 close with a reconnect hint, no backend asked (Session.refuse_with_close), and
the hints (core.admission)."""

from __future__ import annotations

import random

import pytest
from wsproto.events import AcceptConnection, CloseConnection
from wsproto.extensions import PerMessageDeflate

from tests.helpers import SessionHarness, build_raw
from wsproxy.core import LegState, SessionState, Side
from wsproxy.core import frames as fr
from wsproxy.core.admission import (
    LIMIT_RETRY_MAX_MS,
    LIMIT_RETRY_MIN_MS,
    TokenBucket,
    limit_retry_ms,
)
from wsproxy.core.closes import TRY_AGAIN, CloseCode, ProxyClose, with_hint
from wsproxy.errors import InvalidTransition

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
REFUSED = with_hint(TRY_AGAIN, 250)


def refused(*, subprotocols: tuple[str, ...] = (), chunk_size: int = 0) -> SessionHarness:
    """A session whose client's upgrade passed the checks and was refused with a close;
    the client's events are not read yet."""
    h = SessionHarness(opened=False, chunk_size=chunk_size)
    h.send_request(subprotocols=subprotocols)
    assert h.session.request is not None
    h.session.accept()
    h.session.refuse_with_close(REFUSED)
    h.pump()
    return h


def test_the_close_is_1013_with_its_hint() -> None:
    assert ProxyClose(CloseCode.TRY_AGAIN_LATER, "try again later; retry-after-ms=250") == REFUSED


@pytest.mark.parametrize("chunk_size", [0, 1], ids=["whole", "bytewise"])
def test_a_valid_101_then_1013_and_the_clients_answer_completes_it(chunk_size: int) -> None:
    h = refused(chunk_size=chunk_size)
    # wsproto checked Sec-WebSocket-Accept; nothing was selected, nothing was offered.
    events = h.client_received()
    assert events == [AcceptConnection(subprotocol=None, extensions=[]),
                      CloseConnection(code=1013, reason="try again later; retry-after-ms=250")]
    assert h.closes_to(CLIENT) == [(1013, "try again later; retry-after-ms=250")]
    # The client answered (the harness's peers do): the handshake is complete.
    assert h.session.state is SessionState.CLOSED
    assert h.session.leg_state(CLIENT) is LegState.CLOSED
    assert h.session.should_close(CLIENT)
    # No backend: nothing was ever written for one, and its leg needs no transport.
    assert h.session.data_to_send(UPSTREAM) == []
    assert h.session.leg_state(UPSTREAM) is LegState.CLOSED
    assert h.session.rejected_status == 101
    assert h.session.initiator == "proxy"
    assert h.session.close_reason == REFUSED.reason
    assert h.session.close_codes() == {"client": 1013, "upstream": None}


def test_the_client_is_waited_for_until_it_answers() -> None:
    h = SessionHarness(opened=False)
    h.auto_close[CLIENT] = False
    h.send_request()
    h.session.accept()
    h.session.refuse_with_close(REFUSED)
    h.pump()
    assert [type(e) for e in h.client_received()] == [AcceptConnection, CloseConnection]
    assert h.session.state is SessionState.CLOSING  # the driver's close timer runs now
    assert not h.session.should_close(CLIENT)
    # What the client sends before its answer goes nowhere, and is counted so.
    h.client_sends_raw(build_raw(fr.TEXT, b"anyone?"))  # wsproto would not send it
    assert h.session.undelivered(UPSTREAM) == 1
    assert h.session.data_to_send(UPSTREAM) == []
    h.client_sends(CloseConnection(code=1000))
    assert h.session.state is SessionState.CLOSED
    assert h.session.should_close(CLIENT)


def test_a_client_gone_without_its_close_fails_the_session() -> None:
    h = SessionHarness(opened=False)
    h.auto_close[CLIENT] = False
    h.send_request()
    h.session.accept()
    h.session.refuse_with_close(REFUSED)
    h.pump()
    h.client_eof()
    assert h.session.state is SessionState.FAILED
    assert h.session.should_close(CLIENT)


def test_frames_the_client_sent_before_the_101_are_read_after_the_close() -> None:
    h = SessionHarness(opened=False)
    h.auto_close[CLIENT] = False
    h.send_request()
    h.session.accept()
    # A client that did not wait for the 101: a message, then its own close.
    early = build_raw(fr.TEXT, b"early") + build_raw(fr.CLOSE, (1000).to_bytes(2, "big"))
    h.session.receive_data(CLIENT, early)
    h.session.refuse_with_close(REFUSED)
    h.pump()
    assert h.session.undelivered(UPSTREAM) == 1
    assert h.session.close_codes()["client"] == 1000
    assert h.session.state is SessionState.CLOSED


@pytest.mark.parametrize(
    "bad",
    [
        build_raw(fr.TEXT, b"x", mask=False),  # a client frame not masked
        build_raw(fr.CLOSE, b"\x03\xe8\xff"),  # a close reason that is not UTF-8
        build_raw(fr.PING, b"p" * 126),  # a control frame too long
        build_raw(0x3, b"x"),  # a reserved opcode
    ],
    ids=["unmasked", "bad-close", "long-ping", "reserved-opcode"],
)
def test_a_client_that_breaks_the_protocol_meanwhile_is_dropped(bad: bytes) -> None:
    h = SessionHarness(opened=False)
    h.auto_close[CLIENT] = False
    h.send_request()
    h.session.accept()
    h.session.refuse_with_close(REFUSED)
    h.pump()
    h.client_received()
    h.session.receive_data(CLIENT, bad)
    assert h.session.state is SessionState.FAILED
    assert h.session.should_close(CLIENT)
    assert h.session.data_to_send(UPSTREAM) == []


@pytest.mark.parametrize(
    ("offers", "auth_offer", "chosen"),
    [
        (("chat", "superchat"), None, "chat"),  # a browser fails an unanswered offer
        (("chat",), "bearer.t0ken", "bearer.t0ken"),  # as the 101 after a backend's
        ((), "bearer.t0ken", "bearer.t0ken"),
    ],
)
def test_a_subprotocol_is_selected_when_one_was_offered(
    offers: tuple[str, ...], auth_offer: str | None, chosen: str
) -> None:
    h = SessionHarness(opened=False)
    h.send_request(subprotocols=offers + ((auth_offer,) if auth_offer else ()))
    request = h.session.request
    assert request is not None
    if auth_offer is not None:  # what auth does: the offer taken out, kept for the 101
        h.session.request = request.__class__(**{**{
            f: getattr(request, f) for f in request.__dataclass_fields__
        }, "subprotocols": offers})
        h.session.auth_subprotocol = auth_offer
    h.session.accept()
    h.session.refuse_with_close(REFUSED)
    h.pump()
    accepted, close = h.client_received()  # wsproto refuses a choice it did not offer
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol == chosen
    assert isinstance(close, CloseConnection)
    assert close.code == 1013


def test_no_extension_is_accepted() -> None:
    h = SessionHarness(opened=False)
    h.send_request(extensions=[PerMessageDeflate()])
    h.session.accept()
    h.session.refuse_with_close(REFUSED)
    h.pump()
    accepted = h.client_received()[0]
    assert isinstance(accepted, AcceptConnection)
    assert accepted.extensions == []


def test_only_after_the_request_was_accepted() -> None:
    h = SessionHarness(opened=False)
    with pytest.raises(InvalidTransition):
        h.session.refuse_with_close(REFUSED)  # no request yet
    h.send_request()
    with pytest.raises(InvalidTransition):
        h.session.refuse_with_close(REFUSED)  # not accept()ed: reject() is the answer
    opened = SessionHarness()
    with pytest.raises(InvalidTransition):
        opened.session.refuse_with_close(REFUSED)


# The hints…


def test_the_bucket_hint_is_the_time_to_the_next_token() -> None:
    bucket = TokenBucket(rate=4.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.0)
    assert bucket.retry_after_ms() == 250  # 1 token at 4/s
    assert not bucket.take(0.1)
    assert bucket.retry_after_ms() == 150
    assert bucket.retry_after() == 1  # Retry-After rounds up to whole seconds


def test_the_bucket_hint_is_never_zero() -> None:
    bucket = TokenBucket(rate=1000.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.0009999)
    assert bucket.retry_after_ms() == 1


def test_the_limit_hint_is_jittered_within_its_bounds() -> None:
    rng = random.Random(17)
    hints = [limit_retry_ms(rng) for _ in range(2000)]
    assert min(hints) >= LIMIT_RETRY_MIN_MS
    assert max(hints) <= LIMIT_RETRY_MAX_MS
    assert len(set(hints)) > 500  # spread, not one value for everyone
