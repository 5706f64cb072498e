"""clients/python's decisions without sockets: the hints, the back-off, the rule, the queue."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from hypothesis import given, seed
from hypothesis import strategies as st

from wsproxy_client import (
    RECONNECT_CODES,
    Action,
    Backoff,
    Close,
    Reconnects,
    SendQueue,
    backoff_delay,
    default_rule,
    parse_retry_after,
    parse_retry_hint,
)

# The hint …


@pytest.mark.parametrize(
    ("reason", "ms"),
    [
        ("proxy draining; retry-after-ms=412", 412),
        ("backend draining; retry-after-ms=0", 0),
        ("retry-after-ms=1000", 1000),
        ("try again later; retry-after-ms=75 ", 75),
        ("connection age limit;retry-after-ms=9", 9),
        ("retry-after-ms=12; more", 12),  # a word of its own, anywhere (as clients/js)
        ("a,retry-after-ms=3,b", 3),
        ("retry-after-ms=5; retry-after-ms=6", 5),  # the first
        ("retry-after-ms=" + "9" * 9, 999_999_999),
        ("", None),
        ("proxy draining", None),
        ("retry-after-ms=", None),
        ("retry-after-ms=-5", None),
        ("xretry-after-ms=12", None),
        ("retry-after-ms=12x", None),
        ("retry-after-ms=1.5", None),
        ("retry-after-ms=\u0661\u0662", None),  # ASCII digits only
        ("retry-after-ms=12\n", 12),  # whitespace ends the word
        ("retry-after-ms=" + "9" * 10, None),  # more digits than any clamp needs
    ],
)
def test_the_hint_is_read_from_the_reason(reason: str, ms: int | None) -> None:
    assert parse_retry_hint(reason) == ms


@seed(17)
@given(st.text(max_size=123))
def test_any_reason_parses_to_nothing_or_a_non_negative_whole_number(reason: str) -> None:
    ms = parse_retry_hint(reason)
    assert ms is None or (isinstance(ms, int) and ms >= 0)


@seed(17)
@given(st.text(max_size=80).filter(lambda t: "retry-after-ms" not in t),
       st.integers(0, 10**9 - 1))
def test_a_hint_written_as_wsproxy_writes_it_is_always_found(text: str, ms: int) -> None:
    assert parse_retry_hint(f"{text}; retry-after-ms={ms}") == ms


def test_retry_after_takes_seconds_or_a_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("2", now) == 2.0
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    for bad in (None, "", "soon", "-1", "1.5", "Tue, 99 Foo 2026 00:00:00 GMT"):
        assert parse_retry_after(bad, now) is None


# The rule …


@pytest.mark.parametrize("code", sorted(RECONNECT_CODES))
def test_the_come_back_codes_reconnect(code: int) -> None:
    assert {1001, 1006, 1011, 1012, 1013, 1014} == RECONNECT_CODES
    assert default_rule(code, "whatever", has_token_hook=False) is Action.RECONNECT


@pytest.mark.parametrize("code", [1000, 1002, 1003, 1005, 1007, 1008, 1009, 1010, 1015,
                                  3000, 3999, 4000, 4001, 4500, 4999])
def test_every_other_code_stops(code: int) -> None:
    assert default_rule(code, "", has_token_hook=True) is Action.STOP


def test_token_expired_refreshes_only_with_a_token_hook() -> None:
    assert default_rule(1008, "token expired", has_token_hook=True) is Action.REFRESH
    assert default_rule(1008, "token expired; retry-after-ms=5", True) is Action.REFRESH
    assert default_rule(1008, "token expired", has_token_hook=False) is Action.STOP
    assert default_rule(1008, "connection revoked", has_token_hook=True) is Action.STOP
    assert default_rule(4001, "token expired", has_token_hook=True) is Action.STOP


# The back-off …


@seed(17)
@given(st.integers(-5, 10_000), st.floats(0.0, 1.0, exclude_max=True),
       st.floats(0.001, 10.0), st.floats(1.0, 100.0))
def test_the_back_off_stays_within_its_ceiling(attempt: int, r: float, base: float,
                                               factor: float) -> None:
    backoff = Backoff(base=base, max=base * factor)
    delay = backoff_delay(attempt, backoff, lambda: r)
    ceiling = min(backoff.max, base * 2.0 ** min(max(attempt, 1) - 1, 64))
    assert 0.0 <= delay <= ceiling <= backoff.max
    assert delay == pytest.approx(ceiling * r)


def test_the_back_off_ceiling_doubles_up_to_max() -> None:
    backoff = Backoff()  # 0.5 s, doubling, at most 30 s
    ceilings = [backoff_delay(n, backoff, lambda: 1.0) for n in range(1, 10)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_full_jitter_spreads_over_the_whole_window() -> None:
    rng = random.Random(17)
    delays = [backoff_delay(4, Backoff(), rng.random) for _ in range(2000)]
    assert min(delays) < 0.2
    assert max(delays) > 3.8
    assert all(0.0 <= d <= 4.0 for d in delays)


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0}, {"max": 0}, {"base": -1}, {"max_hint": -1}, {"reset_after": float("nan")},
     {"base": float("inf")}, {"base": 2.0, "max": 1.0}, {"base": "1"}],
)
def test_bad_bounds_are_refused_naming_the_field(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)  # type: ignore[arg-type]


# The decision over a run of closes …


def reconnects(**kwargs: object) -> Reconnects:
    defaults: dict[str, object] = {"has_token_hook": False, "random": lambda: 1.0}
    return Reconnects(Backoff(), **{**defaults, **kwargs})  # type: ignore[arg-type]


def test_the_hint_is_the_wait_exactly_and_clamped() -> None:
    r = reconnects()
    d = r.decide(Close(1012, "backend draining; retry-after-ms=412"), now=0.0)
    assert (d.action, d.delay, d.hinted) == (Action.RECONNECT, 0.412, True)
    d = r.decide(Close(1013, "try again later; retry-after-ms=3600000"), now=0.0)
    assert (d.delay, d.hinted) == (60.0, True)  # max_hint
    d = r.decide(Close(1006, "HTTP 503", before_open=True, status=503, retry_after=2.0), 0.0)
    assert (d.delay, d.hinted) == (2.0, True)
    d = r.decide(Close(1006, "HTTP 503", before_open=True, status=503, retry_after=900.0), 0.0)
    assert (d.delay, d.hinted) == (60.0, True)


def test_attempts_grow_until_a_connection_stays_open() -> None:
    r = reconnects()
    assert [r.decide(Close(1006), now=float(t)).attempt for t in range(4)] == [1, 2, 3, 4]
    assert r.decide(Close(1006), now=4.0).delay == 8.0  # attempt 5: 0.5 * 2**4
    r.opened(now=10.0)
    assert r.decide(Close(1001), now=12.0).attempt == 6  # open 2 s: not stable
    r.opened(now=20.0)
    assert r.decide(Close(1001), now=25.0).attempt == 1  # open 5 s: reset
    assert r.decide(Close(1006, before_open=True), now=25.5).attempt == 2


def test_the_apps_hook_is_asked_first() -> None:
    asked: list[tuple[int, str, int]] = []

    def hook(code: int, reason: str, attempt: int) -> bool | None:
        asked.append((code, reason, attempt))
        return {4001: True, 1012: False}.get(code)

    r = reconnects(should_reconnect=hook)
    assert r.decide(Close(4001, "app says retry"), 0.0).action is Action.RECONNECT
    assert r.decide(Close(1012, "backend draining; retry-after-ms=5"), 0.0).action is Action.STOP
    assert r.decide(Close(1011), 0.0).action is Action.RECONNECT  # None: the rule
    assert r.decide(Close(4002), 0.0).action is Action.STOP
    assert asked == [(4001, "app says retry", 1), (1012, "backend draining; retry-after-ms=5", 2),
                     (1011, "", 2), (4002, "", 3)]


def test_token_expired_is_a_refresh_with_the_hook() -> None:
    d = reconnects(has_token_hook=True).decide(Close(1008, "token expired"), 0.0)
    assert (d.action, d.token_refresh, d.reconnects) == (Action.REFRESH, True, True)
    d = reconnects(has_token_hook=False).decide(Close(1008, "token expired"), 0.0)
    assert (d.action, d.reconnects) == (Action.STOP, False)


# The queue …


def test_the_queue_refuses_the_newest_at_either_bound() -> None:
    q = SendQueue(max_messages=3, max_bytes=10)
    assert q.push("ab")
    assert q.push(b"cde")
    assert q.push("é")
    assert (len(q), q.bytes) == (3, 7)
    assert not q.push("x")  # a 4th message
    assert q.pop() == "ab"
    assert not q.push("123456")  # 5 + 6 > 10 bytes
    assert q.push("12345")  # 5 + 5: at the bound
    assert [q.pop(), q.pop(), q.pop(), q.pop()] == [b"cde", "é", "12345", None]
    assert (len(q), q.bytes) == (0, 0)


def test_a_zero_queue_refuses_everything_and_clear_empties() -> None:
    assert not SendQueue(max_messages=0).push("x")
    q = SendQueue()
    for i in range(5):
        q.push(str(i))
    assert q.peek() == "0"
    assert q.clear() == 5
    assert (len(q), q.bytes, q.peek()) == (0, 0, None)
    with pytest.raises(ValueError, match=r"queue\.max_messages"):
        SendQueue(max_messages=-1)
    with pytest.raises(ValueError, match=r"queue\.max_bytes"):
        SendQueue(max_bytes=True)


@seed(17)
@given(st.lists(st.one_of(st.text(max_size=20), st.binary(max_size=20)), max_size=60),
       st.integers(0, 20), st.integers(0, 200))
def test_the_queue_keeps_order_and_never_passes_its_bounds(
        messages: list[str | bytes], max_messages: int, max_bytes: int) -> None:
    q = SendQueue(max_messages, max_bytes)
    accepted = [m for m in messages if q.push(m)]
    assert len(q) <= max_messages
    assert q.bytes <= max_bytes
    drained = []
    while (m := q.pop()) is not None:
        drained.append(m)
    assert drained == accepted
