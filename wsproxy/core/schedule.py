"""When each connection of a drain gets its close frame: a pure schedule.

A drain closes N connections over a window so that their reconnects arrive calmly.
The window is cut into N equal slots and each connection is closed at a random moment
of its own slot: evenly spread, yet never in lockstep with another proxy draining at
the same time. ``max_close_rate`` widens the window when N is large, but never past
``timeout``; whatever is left at ``timeout`` is closed at once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DrainPlan:
    """The timing rules of one drain, in seconds."""

    spread: float
    timeout: float
    #: Closes per second at most; 0: no ceiling.
    max_close_rate: float = 0.0

    def window(self, count: int) -> float:
        """How long closing *count* connections takes under these rules."""
        window = self.spread
        if self.max_close_rate > 0:
            window = max(window, count / self.max_close_rate)
        return min(window, self.timeout)


def close_times(
    count: int, start: float, plan: DrainPlan, rng: random.Random | None = None
) -> list[float]:
    """The close moments of *count* connections, in increasing order."""
    if count == 0:
        return []
    rng = rng or random.Random()
    slot = plan.window(count) / count
    return [start + (i + rng.random()) * slot for i in range(count)]


class DrainSchedule(Generic[T]):
    """A drain in progress: which items are due at a given moment.

    The driver calls ``due(now)`` from its timer and closes what it returns, and
    ``next_at()`` says when to wake next. Items that end on their own meanwhile are
    ``discard()``ed so that they are not counted as left.
    """

    def __init__(
        self, items: Sequence[T], start: float, plan: DrainPlan,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()
        shuffled = list(items)
        rng.shuffle(shuffled)  # slot order is random too: no client is always first
        self.plan = plan
        self.start = start
        self.deadline = start + plan.timeout
        self._pending = list(zip(close_times(len(shuffled), start, plan, rng), shuffled,
                                 strict=True))
        self._pending.reverse()  # pop() from the end is O(1): earliest last
        self._gone: set[int] = set()
        self.closed = 0

    def discard(self, item: T) -> None:
        self._gone.add(id(item))

    @property
    def left(self) -> int:
        return sum(1 for _, item in self._pending if id(item) not in self._gone)

    def due(self, now: float) -> list[T]:
        """Items whose close moment has come; everything once ``timeout`` has passed."""
        out: list[T] = []
        pending = self._pending
        forced = now >= self.deadline
        while pending and (forced or pending[-1][0] <= now):
            _, item = pending.pop()
            if id(item) not in self._gone:
                out.append(item)
        self.closed += len(out)
        return out

    def next_at(self) -> float | None:
        """When ``due()`` will next return something; None when nothing is left."""
        return min(self._pending[-1][0], self.deadline) if self._pending else None

    def seconds_left(self, now: float) -> float:
        last = self._pending[0][0] if self._pending else now
        return max(0.0, min(last, self.deadline) - now)
