"""Rebalancing: which connections to move so that every backend ends at the mean ±1.

WebSockets stay where they were opened: after a scale-out, or a rolling restart that
put everyone on the instances that came back first, the new backends sit empty for
hours. A rebalancing round closes some connections on the backends above the mean
(1012 and a reconnect hint: the client reconnects, and the proxy sends it to the
least-loaded backend). This module decides, from numbers alone; control.rebalance
drives it.

The decision, given the connection counts of the backends that take part (healthy, in
rotation, warmed up) and *awaiting*, the clients closed by the round that have not
reconnected yet (they count in the total: they are coming back):

- The trigger (``triggered``): the most loaded backend holds more than ``ratio`` times
  the mean. Small imbalances, the churn of ordinary traffic, are left alone.
- The target (``plan``): with N connections on k backends, q, r = divmod(N, k); the r
  most loaded backends may keep q + 1, the others q. A backend's *excess* is what it
  holds over its target. Only a backend above the mean has any (a count at or below
  N/k is at most q), the excesses add up to the fewest closes that can balance the set
  (every close moves one connection; a move that leaves a backend above its target, or
  one that closes on a backend below it, is wasted), and once the closed clients have
  reconnected to the least-loaded backends every backend holds q or q + 1: the mean ±1.
- Counts all within 1 of the mean are balanced already: nothing to close.
- A round runs until no backend has an excess left, not merely until the trigger no
  longer fires: the trigger (1.2 by default) and the end (±1) are far apart, so a
  round does not stop just under the trigger and start again at the next arrival.

Which connections first (``oldest_first``): the longest-lived. Three reasons:

- A client that a round has just moved is the youngest connection on its new backend,
  so it is the last one any later round would pick: no client is moved twice while
  others have not been moved once. "Least active" has no such property (a connection
  that just reconnected has sent the fewest messages, and would be picked again).
- Age is known at once and never changes: the order is fixed when a round starts, one
  sort, no counters read on the relay's hot path, nothing that shifts while the round
  runs (an activity ranking would, and sampling it costs the data path).
- The oldest connections are the ones that predate the change the round corrects (the
  scale-out, the restart): they are where the imbalance came from.

Pacing: closes at most ``max_close_rate`` a second, as two closes never less than
``1 / max_close_rate`` apart (``ClosePacer``). core.schedule's DrainSchedule places a
fixed set of closes at a random moment of each slot: a round's set changes as
connections come and go, and a random moment per slot can put two closes at the end
of one slot and the start of the next, so the fixed interval (the slot's width) is
what this uses; it bounds every window, not just the average.

This module imports nothing of the proxy's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Plan:
    """One look at the counts: how far from balanced, and what to close where."""

    #: Connections per backend taking part, plus the clients awaited back, over the backends.
    mean: float
    #: The most loaded backend over the mean (1.0 with no connections or no backend).
    ratio: float
    #: Closes still to make, by backend: only backends above the mean appear.
    excess: Mapping[str, int]

    @property
    def total(self) -> int:
        """The closes that balance the set: the ideal number."""
        return sum(self.excess.values())

    def triggered(self, ratio: float) -> bool:
        """Whether the imbalance is worth a round under a trigger of *ratio*."""
        return self.ratio > ratio

    def most_excess(self) -> str | None:
        """The backend to close on next: the largest excess (ties by name), or None."""
        if not self.excess:
            return None
        return max(sorted(self.excess), key=lambda name: self.excess[name])


def plan(counts: Mapping[str, int], awaiting: int = 0) -> Plan:
    """The plan for backends holding *counts* connections, *awaiting* clients to come."""
    k = len(counts)
    if k == 0:
        return Plan(mean=0.0, ratio=1.0, excess={})
    total = sum(counts.values()) + max(0, awaiting)
    mean = total / k
    ratio = max(counts.values()) / mean if mean > 0 else 1.0
    if all(abs(count - mean) <= 1 for count in counts.values()):
        return Plan(mean=mean, ratio=ratio, excess={})  # balanced: the mean ±1
    q, r = divmod(total, k)
    # The r most loaded keep q + 1: the fewest closes (ties broken by name, stable).
    ranked = sorted(counts, key=lambda name: (-counts[name], name))
    excess: dict[str, int] = {}
    for i, name in enumerate(ranked):
        target = q + 1 if i < r else q
        if counts[name] > target:
            excess[name] = counts[name] - target
    return Plan(mean=mean, ratio=ratio, excess=excess)


def ratio_of(counts: Iterable[int]) -> float:
    """Max over mean of *counts* (1.0 when empty or all zero): the gauge's value."""
    values = list(counts)
    if not values or sum(values) == 0:
        return 1.0
    return max(values) * len(values) / sum(values)


def oldest_first(items: Iterable[T], started: Callable[[T], float]) -> list[T]:
    """*items* in the order a round closes them: the longest-lived first."""
    return sorted(items, key=started)


def least_loaded_first(counts: Mapping[K, int]) -> list[K]:
    """Where new connections go while a round runs: the least-loaded backend first."""
    return sorted(counts, key=counts.__getitem__)


class ClosePacer:
    """At most *rate* closes a second: two closes never less than ``1/rate`` apart.

    Pure: the caller passes *now* (the loop's clock).
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be above 0")
        self.interval = 1.0 / rate
        self._last: float | None = None

    def ready(self, now: float) -> bool:
        """Whether a close may go now."""
        return self._last is None or now - self._last >= self.interval

    def next_at(self) -> float | None:
        """The earliest moment of the next close (None: now)."""
        return None if self._last is None else self._last + self.interval

    def closed(self, now: float) -> None:
        """A close went at *now*."""
        self._last = now
