"""The reconnect hint of a drain's closes (control.drain): its ceiling follows the pace.

Closes on a schedule are already spread; a hint longer than the gap between two of them
only reshuffles them and bunches the reconnects. The wave here is bench/drain_wave.py's
(2,000 connections, a 10 s spread), with the clients waiting exactly their hint.
"""

from __future__ import annotations

import random
import re

import pytest

from wsproxy.control.drain import HINT_MAX_MS, close_reason, paced_hint_ms
from wsproxy.core.schedule import DrainPlan, close_times

CONNECTIONS = 2000
SPREAD = 10.0
BUCKET = 0.1


def busiest_bucket_over_mean(ceiling_ms: int, seed: int) -> float:
    """Reconnects (close + hint) per 100 ms bucket: the busiest over the mean."""
    rng = random.Random(seed)
    plan = DrainPlan(spread=SPREAD, timeout=SPREAD + 5, max_close_rate=0)
    hint = re.compile(r"retry-after-ms=(\d+)$")
    buckets: dict[int, int] = {}
    for closed_at in close_times(CONNECTIONS, 0.0, plan, rng):
        match = hint.search(close_reason("backend draining", True, rng, max_ms=ceiling_ms))
        assert match is not None
        at = closed_at + int(match.group(1)) / 1000
        buckets[int(at / BUCKET)] = buckets.get(int(at / BUCKET), 0) + 1
    mean = CONNECTIONS / (SPREAD / BUCKET)
    return max(buckets.values()) / mean


@pytest.mark.parametrize("seed", range(5))
def test_the_paced_ceiling_keeps_every_bucket_within_half_again_the_mean(seed: int) -> None:
    ceiling = paced_hint_ms(SPREAD, CONNECTIONS)
    assert ceiling == 5  # 10 s over 2,000 closes
    assert busiest_bucket_over_mean(ceiling, seed) <= 1.5


def test_the_whole_range_on_spread_closes_is_what_bunched_them() -> None:
    """The control: the old 0-1,000 ms hint on the same schedule goes past 1.5x."""
    assert max(busiest_bucket_over_mean(HINT_MAX_MS, seed) for seed in range(5)) > 1.5


@pytest.mark.parametrize(
    ("window", "count", "ceiling"),
    [
        (10.0, 2000, 5),
        (20.0, 10, HINT_MAX_MS),  # a slow pace: never above the whole range
        (0.001, 5000, 1),  # never 0: clients closed in one timer tick still spread
        (0.0, 50, HINT_MAX_MS),  # a spread of 0: everyone at once, the whole range
        (5.0, 0, HINT_MAX_MS),
    ],
)
def test_paced_hint_ms(window: float, count: int, ceiling: int) -> None:
    assert paced_hint_ms(window, count) == ceiling


def test_close_reason_stays_within_its_ceiling() -> None:
    rng = random.Random(7)
    waits = {int(close_reason("x", True, rng, max_ms=3).rsplit("=", 1)[1]) for _ in range(200)}
    assert waits == {0, 1, 2, 3}
    assert close_reason("x", False, rng, max_ms=3) == "x"
