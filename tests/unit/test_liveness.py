"""Per-connection timers and the upgrade token bucket, on a fake clock.

``Liveness`` (wsproxy.core.liveness) and ``TokenBucket`` (wsproxy.core.admission) are
pure: every call takes ``now``, so the tests walk time forward by hand.
"""

from __future__ import annotations

import random

import pytest

from wsproxy.core.admission import TokenBucket
from wsproxy.core.liveness import Due, Liveness, LivenessRules, ping_payload, ping_sent_at
from wsproxy.core.states import Side

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
T0 = 500.0
#: Heartbeats far away, for the tests of the other timers.
NO_PINGS = 1e9


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def first_ping(live: Liveness, start: float, step: float = 0.01) -> float:
    """Walk the clock from *start* until check() says PING; that moment."""
    now = start
    while (due := live.check(now, 0)) is Due.NOTHING:
        now += step
    assert due is Due.PING
    return now


# Heartbeats ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_first_ping_comes_within_the_first_interval(seed: int) -> None:
    live = Liveness(LivenessRules(interval=10, timeout=5), T0, random.Random(seed))
    at = first_ping(live, T0)
    assert T0 + 5 <= at <= T0 + 10 + 0.01


def test_first_ping_bounds() -> None:
    rules = LivenessRules(interval=10, timeout=5)
    early = Liveness(rules, T0, FixedRandom(0.0))
    assert early.check(T0 + 4.99, 0) is Due.NOTHING
    assert early.check(T0 + 5, 0) is Due.PING
    late = Liveness(rules, T0, FixedRandom(0.999))
    assert late.check(T0 + 9.99, 0) is Due.NOTHING
    assert late.check(T0 + 10, 0) is Due.PING


def test_first_pings_of_connections_opened_together_are_spread() -> None:
    rules = LivenessRules(interval=10, timeout=5)
    moments = {first_ping(Liveness(rules, T0, random.Random(s)), T0) for s in range(20)}
    assert len(moments) > 10


def test_ping_goes_to_both_legs_with_its_send_time() -> None:
    live = Liveness(LivenessRules(interval=10, timeout=5), T0, FixedRandom(0.0))
    assert live.pings_out() == []
    assert live.check(T0 + 5, 0) is Due.PING
    assert sorted(live.pings_out(), key=lambda p: p[0].value) == [
        (CLIENT, T0 + 5), (UPSTREAM, T0 + 5)]


def test_ping_payload_round_trip() -> None:
    assert ping_sent_at(ping_payload(T0 + 1.25)) == T0 + 1.25
    assert ping_sent_at(b"someone else's ping") is None


def test_pong_returns_the_round_trip_time_and_clears_the_ping() -> None:
    live = Liveness(LivenessRules(interval=10, timeout=5), T0, FixedRandom(0.0))
    sent = T0 + 5
    assert live.check(sent, 0) is Due.PING
    assert live.pong(CLIENT, sent, sent + 0.25) == pytest.approx(0.25)
    assert live.pings_out() == [(UPSTREAM, sent)]
    assert live.pong(CLIENT, sent, sent + 0.3) is None  # answered already
    assert live.pong(UPSTREAM, sent, sent + 0.5) == pytest.approx(0.5)
    assert live.pings_out() == []
    # Both answered: nothing is due until the next ping, one interval later.
    assert live.check(sent + 9.99, 0) is Due.NOTHING
    assert live.check(sent + 10, 0) is Due.PING
    assert {s for s, _ in live.pings_out()} == {CLIENT, UPSTREAM}


def test_a_pong_for_another_moment_is_not_ours() -> None:
    live = Liveness(LivenessRules(interval=10, timeout=5), T0, FixedRandom(0.0))
    live.check(T0 + 5, 0)
    assert live.pong(CLIENT, T0 + 4, T0 + 5.1) is None
    assert live.pong(CLIENT, T0 + 5, T0 + 5.1) is not None


@pytest.mark.parametrize(("silent", "verdict"), [(CLIENT, Due.CLIENT_DEAD),
                                                 (UPSTREAM, Due.UPSTREAM_DEAD)])
def test_no_pong_within_the_timeout_means_dead(silent: Side, verdict: Due) -> None:
    live = Liveness(LivenessRules(interval=10, timeout=5), T0, FixedRandom(0.0))
    sent = T0 + 5
    assert live.check(sent, 0) is Due.PING
    assert live.pong(silent.other, sent, sent + 0.1) is not None
    assert live.check(sent + 4.99, 0) is Due.NOTHING
    assert live.check(sent + 5, 0) is verdict
    assert live.check(sent + 6, 7) is verdict  # data does not revive a dead peer


def test_unanswered_ping_is_resent_with_its_original_time() -> None:
    """With timeout > interval the next PING re-sends the oldest unanswered ping, so
    a pong still tells whether the peer answered in time."""
    live = Liveness(LivenessRules(interval=2, timeout=5), T0, FixedRandom(0.0))
    first = T0 + 1
    assert live.check(first, 0) is Due.PING
    live.pong(UPSTREAM, first, first + 0.1)
    assert live.check(first + 2, 0) is Due.PING
    assert dict(live.pings_out()) == {CLIENT: first, UPSTREAM: first + 2}
    assert live.check(first + 5, 0) is Due.CLIENT_DEAD


def test_dead_takes_precedence_over_age_and_idle() -> None:
    rules = LivenessRules(interval=10, timeout=5, idle_timeout=6, max_age=7, age_jitter=0)
    live = Liveness(rules, T0, FixedRandom(0.0))
    assert live.check(T0 + 5, 0) is Due.PING
    assert live.check(T0 + 10, 0) is Due.CLIENT_DEAD


# Idle timeout ----------------------------------------------------------------------------


def test_idle_after_the_timeout_without_data() -> None:
    live = Liveness(LivenessRules(interval=NO_PINGS, timeout=5, idle_timeout=30), T0)
    assert live.check(T0 + 29.9, 0) is Due.NOTHING
    assert live.check(T0 + 30, 0) is Due.IDLE


def test_data_resets_the_idle_timer() -> None:
    live = Liveness(LivenessRules(interval=NO_PINGS, timeout=5, idle_timeout=30), T0)
    assert live.check(T0 + 20, 3) is Due.NOTHING  # 3 messages since the last visit
    assert live.check(T0 + 49.9, 3) is Due.NOTHING
    assert live.check(T0 + 50, 3) is Due.IDLE


def test_heartbeats_do_not_count_as_activity() -> None:
    rules = LivenessRules(interval=10, timeout=5, idle_timeout=30)
    live = Liveness(rules, T0, FixedRandom(0.0))
    now = T0
    verdicts = []
    while now < T0 + 31:
        due = live.check(now, 0)
        if due is Due.PING:
            for side, sent in live.pings_out():
                live.pong(side, sent, now)
        verdicts.append(due)
        now += 0.5
    assert Due.PING in verdicts
    assert verdicts[-1] is Due.IDLE
    assert Due.CLIENT_DEAD not in verdicts
    assert Due.UPSTREAM_DEAD not in verdicts


def test_idle_timeout_off() -> None:
    live = Liveness(LivenessRules(interval=NO_PINGS, timeout=5), T0)
    assert live.check(T0 + 1e6, 0) is Due.NOTHING


# Maximum age ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_aged_after_max_age_with_at_most_ten_percent_jitter(seed: int) -> None:
    live = Liveness(LivenessRules(interval=NO_PINGS, timeout=5, max_age=100), T0,
                    random.Random(seed))
    assert live.age_deadline is not None
    assert T0 + 100 <= live.age_deadline <= T0 + 110
    assert live.check(T0 + 99.99, 0) is Due.NOTHING
    assert live.check(live.age_deadline, 5) is Due.AGED


def test_ages_are_jittered() -> None:
    rules = LivenessRules(interval=NO_PINGS, timeout=5, max_age=100)
    deadlines = {Liveness(rules, T0, random.Random(s)).age_deadline for s in range(20)}
    assert len(deadlines) == 20


def test_aged_comes_even_while_data_flows() -> None:
    rules = LivenessRules(interval=NO_PINGS, timeout=5, idle_timeout=30, max_age=60,
                          age_jitter=0)
    live = Liveness(rules, T0)
    for n, t in enumerate(range(0, 60, 10)):
        assert live.check(T0 + t, n) is Due.NOTHING
    assert live.check(T0 + 60, 99) is Due.AGED


def test_max_age_off() -> None:
    live = Liveness(LivenessRules(interval=NO_PINGS, timeout=5), T0)
    assert live.age_deadline is None


# TokenBucket -------------------------------------------------------------------------------


def test_bucket_starts_full_and_allows_a_burst() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=T0)
    assert [bucket.take(T0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=T0)
    for _ in range(3):
        assert bucket.take(T0)
    assert not bucket.take(T0 + 0.49)
    assert bucket.take(T0 + 0.5)  # 2/s: one token every half second
    assert not bucket.take(T0 + 0.5)
    assert bucket.take(T0 + 1.0)


def test_bucket_never_saves_more_than_the_burst() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=T0)
    assert [bucket.take(T0 + 3600) for _ in range(4)] == [True, True, True, False]


def test_refused_takes_do_not_spend() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=T0)
    assert bucket.take(T0)
    for i in range(5):
        assert not bucket.take(T0 + 0.1 * i)
    assert bucket.take(T0 + 1.0)


def test_burst_0_means_one_seconds_worth() -> None:
    bucket = TokenBucket(rate=5, burst=0, now=T0)
    assert bucket.burst == 5
    assert sum(bucket.take(T0) for _ in range(10)) == 5


def test_burst_0_with_a_slow_rate_still_lets_one_through() -> None:
    bucket = TokenBucket(rate=0.5, burst=0, now=T0)
    assert bucket.take(T0)
    assert not bucket.take(T0)


@pytest.mark.parametrize(("rate", "elapsed", "expected"), [
    (1, 0.0, 1),
    (2, 0.0, 1),     # half a second: rounded up to a whole second
    (0.25, 0.0, 4),
    (0.25, 2.0, 2),  # half a token saved up: two seconds to the next
    (100, 0.0, 1),
])
def test_retry_after_is_whole_seconds_to_the_next_token(
    rate: float, elapsed: float, expected: int
) -> None:
    bucket = TokenBucket(rate=rate, burst=1, now=T0)
    assert bucket.take(T0)
    assert not bucket.take(T0 + elapsed)
    assert bucket.retry_after() == expected
    # Waiting that long is always enough.
    assert bucket.take(T0 + elapsed + expected)
