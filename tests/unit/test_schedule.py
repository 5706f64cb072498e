"""The drain schedule as a pure function of a fake clock (wsproxy.core.schedule).

Nothing here sleeps: ``start`` and ``now`` are plain numbers, and randomness comes
from seeded ``random.Random`` instances or from a stub that returns chosen values.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from wsproxy.core.schedule import DrainPlan, DrainSchedule, close_times

START = 1000.0


class FixedRandom(random.Random):
    """``random()`` returns the given values in turn (then the last one forever)."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self._values: Iterator[float] = iter(values)
        self._last = values[-1]

    def random(self) -> float:
        self._last = next(self._values, self._last)
        return self._last


# DrainPlan.window ----------------------------------------------------------------------


def test_window_is_the_spread_without_a_rate_ceiling() -> None:
    plan = DrainPlan(spread=20, timeout=25)
    assert plan.window(1) == 20
    assert plan.window(100_000) == 20


def test_max_close_rate_widens_the_window() -> None:
    plan = DrainPlan(spread=2, timeout=30, max_close_rate=10)
    assert plan.window(10) == 2  # 10 closes fit in 2 s at 10/s: the spread rules
    assert plan.window(100) == pytest.approx(10)  # 100 closes at 10/s need 10 s


def test_max_close_rate_never_stretches_past_the_timeout() -> None:
    plan = DrainPlan(spread=2, timeout=30, max_close_rate=10)
    assert plan.window(1000) == 30


def test_a_spread_longer_than_the_timeout_is_cut_to_it() -> None:
    assert DrainPlan(spread=60, timeout=25).window(5) == 25


# close_times ---------------------------------------------------------------------------


def test_no_connections_no_times() -> None:
    assert close_times(0, START, DrainPlan(spread=10, timeout=20)) == []


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("count", [1, 2, 7, 30, 500])
def test_each_close_falls_in_its_own_slot(seed: int, count: int) -> None:
    plan = DrainPlan(spread=3, timeout=10)
    times = close_times(count, START, plan, random.Random(seed))
    assert len(times) == count
    slot = 3 / count
    for i, t in enumerate(times):
        assert START + i * slot <= t < START + (i + 1) * slot + 1e-9
    assert times == sorted(times)


def test_slot_bounds_with_extreme_jitter() -> None:
    plan = DrainPlan(spread=4, timeout=10)
    early = close_times(4, START, plan, FixedRandom(0.0))
    assert early == [START, START + 1, START + 2, START + 3]
    late = close_times(4, START, plan, FixedRandom(0.999))
    assert late == pytest.approx([START + 0.999, START + 1.999, START + 2.999, START + 3.999])


def test_closes_are_jittered_not_in_lockstep() -> None:
    """Offsets inside the slots differ, and two proxies draining together differ."""
    plan = DrainPlan(spread=3, timeout=10)
    slot = 3 / 30
    a = close_times(30, START, plan, random.Random(1))
    b = close_times(30, START, plan, random.Random(2))
    offsets = [round((t - START) % slot, 9) for t in a]
    assert len(set(offsets)) > 20
    assert a != b


def test_closes_cover_the_whole_window_evenly() -> None:
    plan = DrainPlan(spread=3, timeout=10)
    times = close_times(30, START, plan, random.Random(7))
    assert times[0] < START + 0.1
    assert times[-1] > START + 2.9
    # Every second of the window gets its third of the closes (one per 0.1 s slot).
    for second in range(3):
        in_it = [t for t in times if START + second <= t < START + second + 1]
        assert len(in_it) == 10


def test_closes_with_a_rate_ceiling_spread_over_the_widened_window() -> None:
    plan = DrainPlan(spread=1, timeout=30, max_close_rate=10)
    times = close_times(50, START, plan, random.Random(3))
    assert times[-1] - START == pytest.approx(5, abs=0.1)
    # In any one second there are at most rate + 1 closes (slots are 1/rate wide).
    for t in times:
        assert sum(1 for u in times if t <= u < t + 1) <= 11


def test_closes_with_a_rate_ceiling_never_pass_the_timeout() -> None:
    plan = DrainPlan(spread=1, timeout=4, max_close_rate=10)
    times = close_times(1000, START, plan, random.Random(3))
    assert max(times) < START + 4
    assert min(times) >= START


def test_zero_spread_closes_everything_at_the_start() -> None:
    assert close_times(5, START, DrainPlan(spread=0, timeout=10)) == [START] * 5


# DrainSchedule -------------------------------------------------------------------------


class Item:
    """A stand-in connection: identity matters, like a Connection object's."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Item({self.n})"


def make(count: int, *, spread: float = 10, timeout: float = 20, seed: int = 0,
         rate: float = 0) -> tuple[list[Item], DrainSchedule[Item]]:
    items = [Item(i) for i in range(count)]
    plan = DrainPlan(spread=spread, timeout=timeout, max_close_rate=rate)
    return items, DrainSchedule(items, START, plan, random.Random(seed))


def test_nothing_is_due_before_the_first_moment() -> None:
    _items, schedule = make(10)
    first = schedule.next_at()
    assert first is not None
    assert START <= first < START + 1
    assert schedule.due(first - 1e-6) == []
    assert schedule.left == 10
    assert schedule.closed == 0


def test_due_hands_out_each_item_once_at_its_moment() -> None:
    items, schedule = make(10)
    seen: list[Item] = []
    moments: list[float] = []
    while (at := schedule.next_at()) is not None:
        moments.append(at)
        due = schedule.due(at)
        assert len(due) >= 1
        seen.extend(due)
        assert schedule.left == 10 - len(seen)
        assert schedule.closed == len(seen)
    assert sorted(seen, key=lambda i: i.n) == items
    assert moments == sorted(moments)
    assert moments[-1] < START + 10  # all within the spread
    assert schedule.due(START + 100) == []


def test_the_order_of_the_closes_is_shuffled() -> None:
    """No connection is always first: the slot order differs from the given order."""
    orders = set()
    for seed in range(5):
        _items, schedule = make(10, seed=seed)
        orders.add(tuple(i.n for i in schedule.due(START + 10)))
    assert len(orders) == 5


def test_due_by_a_late_timer_returns_everything_overdue() -> None:
    _items, schedule = make(10)
    due = schedule.due(START + 5)
    assert 4 <= len(due) <= 6  # half the slots have passed
    assert schedule.left == 10 - len(due)


def test_everything_is_due_at_the_deadline() -> None:
    """A window stretched to the timeout still ends by the deadline; and due(deadline)
    hands out whatever is left, whatever its moment."""
    _items, schedule = make(100, spread=50, timeout=5)
    assert schedule.deadline == START + 5
    assert len(schedule.due(START + 5)) == 100
    assert schedule.left == 0
    assert schedule.next_at() is None


def test_next_at_never_passes_the_deadline() -> None:
    _items, schedule = make(3, spread=10, timeout=20)
    at = schedule.next_at()
    assert at is not None
    assert at <= schedule.deadline


def test_discarded_items_are_not_due_and_not_left() -> None:
    items, schedule = make(10)
    schedule.discard(items[3])
    schedule.discard(items[7])
    assert schedule.left == 8
    due = schedule.due(START + 20)
    assert items[3] not in due
    assert items[7] not in due
    assert len(due) == 8
    assert schedule.closed == 8
    assert schedule.left == 0


def test_discarding_everything_leaves_nothing_to_close() -> None:
    items, schedule = make(4)
    for item in items:
        schedule.discard(item)
    assert schedule.left == 0
    while (at := schedule.next_at()) is not None:
        assert schedule.due(at) == []
    assert schedule.closed == 0


def test_seconds_left_counts_down_to_the_last_close() -> None:
    _items, schedule = make(10, spread=10, timeout=20)
    last = START + 9  # the last slot is [9, 10)
    assert last <= START + schedule.seconds_left(START) < START + 10
    assert schedule.seconds_left(START + 5) == pytest.approx(schedule.seconds_left(START) - 5)
    schedule.due(START + 20)
    assert schedule.seconds_left(START + 20) == 0


def test_seconds_left_is_bounded_by_the_deadline() -> None:
    _items, schedule = make(10, spread=100, timeout=3)
    assert schedule.seconds_left(START) <= 3
    assert schedule.seconds_left(START + 1) <= 2


def test_an_empty_schedule() -> None:
    _items, schedule = make(0)
    assert schedule.next_at() is None
    assert schedule.due(START) == []
    assert schedule.left == 0
    assert schedule.seconds_left(START) == 0


def test_zero_spread_closes_everything_at_once() -> None:
    _items, schedule = make(5, spread=0)
    assert schedule.next_at() == START
    assert len(schedule.due(START)) == 5
