"""clients/python's resumable-session decisions without sockets (``wsproxy_client.resumption``):
the framing, the acks, what is sent again, and what each close leads to."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, seed
from hypothesis import strategies as st

from wsproxy_client import Backoff, Close, FramingError, Resumption
from wsproxy_client.resumption import Verdict

WINDOW = 30.0


def control(**fields: object) -> str:
    return "\x01" + json.dumps(fields)


def started(**backoff: float) -> Resumption:
    """A session the proxy has started (id "abc", a 30 s window)."""
    session = Resumption(Backoff(**backoff), random=lambda: 0.5)
    assert session.param() == "1"
    assert session.opened(control(type="session", id="abc", window=WINDOW)) is None
    return session


def dropped(session: Resumption, now: float = 100.0) -> None:
    step = session.after(Close(1006), now)
    assert (step.verdict, step.attempt, step.delay) == (Verdict.RESUME, 1, 0.0)


def test_a_fresh_session_then_a_resume_names_the_session_and_what_was_received() -> None:
    session = started()
    assert (session.session_id, session.window) == ("abc", WINDOW)
    assert session.take("\x00one") == "one"
    assert session.take(b"\x00two") == b"two"
    assert session.take(control(type="ack", n=0)) is None
    assert session.param() == "1"  # attached: a connect now would start afresh
    dropped(session)
    assert session.param() == "abc.2"
    assert session.info().resuming
    assert session.opened(control(type="resumed", acked=0, sent=2)) == []
    assert not session.held
    assert session.info() == session.info().__class__("abc", WINDOW, 2, 0, resuming=False)


def test_acks_drop_what_they_cover_and_a_resume_sends_the_rest_again_in_order() -> None:
    session = started()
    for message in ("m1", "m2", "m3", b"m4"):
        session.sending(message)
    assert session.take(control(type="ack", n=1)) is None
    assert [n for n, _ in session.unacked] == [2, 3, 4]
    dropped(session)
    assert session.opened(control(type="resumed", acked=2, sent=0)) == ["m3", b"m4"]
    session.sending("m5")
    assert [n for n, _ in session.unacked] == [3, 4, 5]  # numbered on, in the session


@seed(7)
@given(st.lists(st.text(max_size=5), max_size=30), st.data())
def test_whatever_was_acked_what_goes_again_is_the_rest_in_order(
        messages: list[str], data: st.DataObject) -> None:
    session = started()
    acks = sorted(data.draw(st.lists(st.integers(0, len(messages)), max_size=4)))
    for message in messages:
        session.sending(message)
    for n in acks:
        session.take(control(type="ack", n=n))
    dropped(session)
    acked = data.draw(st.integers(max(acks, default=0), len(messages)))
    assert session.opened(control(type="resumed", acked=acked, sent=0)) == messages[acked:]


@pytest.mark.parametrize("message", [
    "", b"", "plain", b"\x02x", b"\x01{}", "\x01not json", "\x01[1]",
])
def test_a_message_without_the_framing_is_refused(message: str | bytes) -> None:
    with pytest.raises(FramingError):
        started().take(message)


def test_an_unknown_control_is_not_the_apps() -> None:
    assert started().take(control(type="something new")) is None


@pytest.mark.parametrize("first", [
    "\x00hello", "hello", control(type="resumed", acked=0, sent=0), control(type="ack", n=1),
])
def test_the_first_message_of_a_fresh_connect_must_be_the_session(first: str) -> None:
    session = Resumption(Backoff(), random=lambda: 0.5)
    with pytest.raises(FramingError):
        session.opened(first)


def test_the_first_message_of_a_resume_must_be_resumed() -> None:
    session = started()
    dropped(session)
    with pytest.raises(FramingError):
        session.opened(control(type="session", id="new", window=1))


def test_a_real_close_ends_the_session_and_the_usual_rules_decide() -> None:
    for close in (Close(1001, "proxy draining; retry-after-ms=300", was_clean=True),
                  Close(1012), Close(1008, "connection revoked"), Close(4000), Close(1000)):
        session = started()
        session.sending("unacked")
        assert session.after(close, 1.0).verdict is Verdict.ENDED
        assert (session.session_id, session.param(), len(session.unacked)) == (None, "1", 0)


def test_without_a_session_the_usual_rules_decide() -> None:
    session = Resumption(Backoff(), random=lambda: 0.5)
    assert session.after(Close(1006, before_open=True), 1.0).verdict is Verdict.NONE
    assert session.after(Close(1006), 1.0).verdict is Verdict.NONE


def test_a_failed_connect_of_a_started_session_is_not_a_drop() -> None:
    session = started()
    assert session.after(Close(1006, before_open=True), 1.0).verdict is Verdict.ENDED


def test_held_attempts_back_off_within_the_window() -> None:
    session = started(base=1.0, max=8.0)
    dropped(session, now=100.0)
    delays = []
    for now in (100.0, 101.0, 102.0, 104.0):
        step = session.after(Close(1006, "HTTP 503", before_open=True), now)
        assert step.verdict is Verdict.RESUME
        assert not step.hinted
        delays.append(step.delay)
    assert delays == [1.0, 2.0, 4.0, 4.0]  # 0.5 of 2, 4, 8, 8 (random() is 0.5)
    near_the_end = session.after(Close(1006, before_open=True), 100.0 + WINDOW - 0.25)
    assert near_the_end.delay == 0.25  # never past the deadline
    assert session.expired(100.0 + WINDOW)
    assert not session.expired(100.0 + WINDOW - 0.01)


def test_a_hint_sets_the_wait_of_an_attempt_clamped() -> None:
    session = started(max_hint=5.0)
    dropped(session)
    step = session.after(Close(1013, "try again later; retry-after-ms=700"), 100.0)
    assert (step.verdict, step.delay, step.hinted) == (Verdict.RESUME, 0.7, True)
    step = session.after(Close(1006, before_open=True, status=503, retry_after=60.0), 100.0)
    assert (step.delay, step.hinted) == (5.0, True)


def test_4410_fails_with_the_proxys_reason_and_counts_the_unacked() -> None:
    session = started()
    session.sending("a")
    session.sending("b")
    session.take(control(type="ack", n=1))
    dropped(session)
    step = session.after(Close(4410, "resume failed: buffer overrun", before_open=True), 101.0)
    assert (step.verdict, step.reason, step.unacked) == (Verdict.FAILED, "buffer overrun", 1)
    assert (session.session_id, session.param(), session.held) == (None, "1", False)


def test_past_the_window_an_attempt_that_fails_is_the_end_of_the_session() -> None:
    session = started()
    dropped(session, now=100.0)
    step = session.after(Close(1006, before_open=True), 100.0 + WINDOW)
    assert (step.verdict, step.reason) == (Verdict.FAILED, "window passed")
    assert session.fail("window passed").unacked == 0  # idempotent on a forgotten session
