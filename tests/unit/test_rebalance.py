"""The rebalancing decision as pure numbers (wsproxy.core.rebalance).

Examples first, then properties (hypothesis, derandomized: the same inputs every run):
a round never closes on a backend at or below the mean, its closes are the ideal
number, and once the closed clients have reconnected to the least-loaded backends
every backend is within 1 of the mean.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.core.rebalance import ClosePacer, least_loaded_first, oldest_first, plan, ratio_of

# Examples ------------------------------------------------------------------------------


def test_a_fourth_backend_joining_three_of_300() -> None:
    p = plan({"a": 300, "b": 300, "c": 300, "d": 0})
    assert p.mean == 225
    assert p.ratio == pytest.approx(300 / 225)
    assert dict(p.excess) == {"a": 75, "b": 75, "c": 75}
    assert p.total == 225
    assert p.triggered(1.2)
    assert not p.triggered(1.4)


def test_balanced_counts_close_nothing() -> None:
    p = plan({"a": 226, "b": 225, "c": 225, "d": 224})
    assert p.total == 0
    assert not p.excess
    assert not p.triggered(1.2)


def test_an_uneven_total_lets_the_most_loaded_keep_one_more() -> None:
    # 10 on 3: q = 3, r = 1; a keeps 4, b keeps 3.
    p = plan({"a": 6, "b": 4, "c": 0})
    assert dict(p.excess) == {"a": 2, "b": 1}
    assert p.most_excess() == "a"


def test_clients_awaited_back_count_in_the_total() -> None:
    # 3 closed on a already, not reconnected yet: the target stays 225.
    reconnected = plan({"a": 297, "b": 300, "c": 300, "d": 3})
    assert dict(reconnected.excess) == {"a": 72, "b": 75, "c": 75}
    # Counting only who is connected would lower the mean by 3/4 and close 2 more.
    assert plan({"a": 297, "b": 300, "c": 300, "d": 0}).total == 224
    with_awaited = plan({"a": 297, "b": 300, "c": 300, "d": 0}, awaiting=3)
    assert dict(with_awaited.excess) == {"a": 72, "b": 75, "c": 75}


def test_no_backends_or_no_connections() -> None:
    assert plan({}).total == 0
    assert plan({}).ratio == 1.0
    assert plan({"a": 0, "b": 0}).ratio == 1.0
    assert ratio_of([]) == 1.0
    assert ratio_of([0, 0]) == 1.0
    assert ratio_of([300, 300, 300, 0]) == pytest.approx(300 / 225)


def test_ties_are_broken_by_name_and_the_largest_excess_goes_first() -> None:
    p = plan({"b": 10, "a": 10, "c": 0, "d": 0})
    assert p.most_excess() == "a"
    assert plan({"a": 1, "b": 1}).most_excess() is None


def test_the_oldest_connection_is_closed_first() -> None:
    started = {"x": 5.0, "y": 1.0, "z": 3.0}
    assert oldest_first(started, started.__getitem__) == ["y", "z", "x"]


def test_new_connections_go_to_the_least_loaded() -> None:
    assert least_loaded_first({"a": 3, "b": 1, "c": 2}) == ["b", "c", "a"]


def test_the_pacer_keeps_closes_apart() -> None:
    pacer = ClosePacer(20)
    assert pacer.ready(0.0)
    assert pacer.next_at() is None
    pacer.closed(0.0)
    assert not pacer.ready(0.049)
    assert pacer.ready(0.05)
    assert pacer.next_at() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="above 0"):
        ClosePacer(0)


# Properties ----------------------------------------------------------------------------

COUNTS = st.dictionaries(
    st.sampled_from("abcdefgh"), st.integers(min_value=0, max_value=500), min_size=1
)


def _rebalanced(counts: dict[str, int]) -> tuple[dict[str, int], int]:
    """Close each backend's excess, then reconnect every closed client to the least
    loaded backend, one at a time: the counts after, and the closes made."""
    p = plan(counts)
    after = {name: count - p.excess.get(name, 0) for name, count in counts.items()}
    for _ in range(p.total):
        after[least_loaded_first(after)[0]] += 1
    return after, p.total


def _ideal(counts: dict[str, int]) -> int:
    """The fewest moves to within [q, q + 1]: what is over q + 1, and of what is at
    q + 1 or above, the (q + 1)-slots beyond the r the total allows."""
    q, r = divmod(sum(counts.values()), len(counts))
    over = sum(max(0, c - (q + 1)) for c in counts.values())
    at_top = sum(1 for c in counts.values() if c >= q + 1)
    return over + max(0, at_top - r)


@settings(derandomize=True, max_examples=500)
@given(COUNTS)
def test_never_closes_on_a_backend_at_or_below_the_mean(counts: dict[str, int]) -> None:
    p = plan(counts)
    for name in p.excess:
        assert counts[name] > p.mean


@settings(derandomize=True, max_examples=500)
@given(COUNTS)
def test_closes_are_the_ideal_excess(counts: dict[str, int]) -> None:
    mean = sum(counts.values()) / len(counts)
    balanced = all(abs(count - mean) <= 1 for count in counts.values())
    assert plan(counts).total == (0 if balanced else _ideal(counts))


@settings(derandomize=True, max_examples=500)
@given(COUNTS)
def test_every_backend_ends_within_one_of_the_mean(counts: dict[str, int]) -> None:
    after, _ = _rebalanced(counts)
    mean = sum(counts.values()) / len(counts)
    assert sum(after.values()) == sum(counts.values())
    assert all(abs(count - mean) <= 1 for count in after.values()), after
    assert plan(after).total == 0  # and a second look finds nothing to do


@settings(derandomize=True, max_examples=300)
@given(COUNTS, st.integers(min_value=0, max_value=200))
def test_awaited_clients_never_make_it_close_more(counts: dict[str, int], awaiting: int) -> None:
    # Clients on their way back raise the target: never more closes, never on a
    # backend at or below the mean.
    with_awaited = plan(counts, awaiting)
    assert with_awaited.total <= plan(counts).total
    for name in with_awaited.excess:
        assert counts[name] > with_awaited.mean


@settings(derandomize=True, max_examples=200)
@given(st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), max_size=50))
def test_oldest_first_is_sorted_by_start(starts: list[float]) -> None:
    order = oldest_first(range(len(starts)), starts.__getitem__)
    assert [starts[i] for i in order] == sorted(starts)


@settings(derandomize=True, max_examples=200)
@given(st.floats(min_value=0.5, max_value=1000.0),
       st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=1, max_size=200))
def test_the_pacer_never_passes_its_rate(rate: float, steps: list[float]) -> None:
    pacer = ClosePacer(rate)
    now, times = 0.0, []
    for step in steps:
        now += step
        if pacer.ready(now):
            pacer.closed(now)
            times.append(now)
    # Any window of one second holds at most ceil(rate) closes (two are 1/rate apart).
    for i, start in enumerate(times):
        inside = [t for t in times[i:] if t < start + 1.0]
        assert len(inside) <= math.ceil(rate)
