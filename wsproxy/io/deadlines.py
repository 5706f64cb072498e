"""Coarse per-connection deadlines on one loop timer (issue 18).

Every upgrade used to make three or four loop timers (the request's deadline, the
dial's limits.backend_timeout, the close handshake's heartbeat.timeout, the wait for
the backend's EOF), each nearly always cancelled: with uvloop a timer made and
cancelled cost ~6k instructions, ~20k an upgrade. Here a deadline is an entry in a
dict per slot of 1/64 s: armed and disarmed in ~3.5k, and one loop timer stands for
the earliest slot that holds any.

A deadline fires once the loop's clock has passed it, at most one slot (~16 ms)
later than a loop timer would have: never earlier. The loop timer is set for the
earliest slot when it is armed; when it fires, the slots emptied meanwhile (nearly
all: most deadlines are disarmed within milliseconds) are dropped and it is set for
the earliest one still holding a deadline, so it fires about once per the longest
deadline's length rather than once per slot or per deadline. The key of an entry is its
callback, a bound method (equal for the same object and function), so that whoever
armed it can disarm it with the same method and deadline, and no handle is kept.
"""

from __future__ import annotations

import asyncio
import heapq
import weakref
from collections.abc import Callable
from math import ceil
from typing import Any, Final

from wsproxy.io.pass_end import report_failed_callback

#: Slots per second.
RATE: Final = 64.0
#: The argument of a callback called without one.
NO_ARG: Final[Any] = object()


class Deadlines:
    """The deadlines of one event loop (``deadlines_of()``)."""

    __slots__ = ("__weakref__", "_due", "_heap", "_loop", "_timer", "_timer_slot")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: slot -> {callback: its argument, or NO_ARG}
        self._due: dict[int, dict[Callable[..., object], object]] = {}
        #: The slots of _due (each once), earliest first.
        self._heap: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0

    def pending(self) -> int:
        """The deadlines armed."""
        return sum(len(entries) for entries in self._due.values())

    def arm(self, when: float, callback: Callable[..., object], arg: object = NO_ARG) -> None:
        """Call *callback* (with *arg*, if given) once the loop's clock passes *when*.
        *callback* must not be armed already for the same slot."""
        # The first slot starting at or after *when*: math.ceil, one C call (~0.4k
        # instructions, where -int(-when * RATE // 1) took ~1.6k: int() is a type's call).
        slot = ceil(when * RATE)
        entries = self._due.get(slot)
        if entries is not None:
            entries[callback] = arg
            return
        self._due[slot] = {callback: arg}
        heapq.heappush(self._heap, slot)
        if self._timer is None or slot < self._timer_slot:
            self._schedule(slot)

    def disarm(self, when: float, callback: Callable[..., object]) -> None:
        """Forget *callback*'s deadline *when* (as it was armed); nothing if it fired."""
        entries = self._due.get(ceil(when * RATE))  # (arm()'s slot)
        if entries is not None:
            entries.pop(callback, None)

    def _schedule(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self._loop.call_at(slot / RATE, self._run)

    def _run(self) -> None:
        self._timer = None
        heap, due, loop = self._heap, self._due, self._loop
        now = loop.time()
        while heap:
            slot = heap[0]
            entries = due[slot]
            if not entries:  # all disarmed (the usual fate of a deadline): forgotten
                heapq.heappop(heap)
                del due[slot]
                continue
            if slot / RATE > now:  # not yet (a loop timer may fire a little early)
                self._schedule(slot)
                return
            heapq.heappop(heap)
            # Taken one by one from the dict in place (still in _due), so that a
            # callback can disarm the ones after it, and one armed for this slot
            # meanwhile runs too.
            while entries:
                callback = next(iter(entries))
                arg = entries.pop(callback)
                try:
                    callback() if arg is NO_ARG else callback(arg)
                except Exception as exc:
                    report_failed_callback(loop, "deadline", callback, exc)
            del due[slot]


_BY_LOOP: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines]] = (
    weakref.WeakKeyDictionary()
)
_last: list[Any] = [None, None]  # (loop, its Deadlines): the usual look-up, without weakref's


def deadlines_of(loop: asyncio.AbstractEventLoop) -> Deadlines:
    """The Deadlines of *loop* (one per loop, made when first asked for)."""
    if _last[0] is loop:
        deadlines: Deadlines = _last[1]
        return deadlines
    found = _BY_LOOP.get(loop)
    deadlines = found if found is not None else _BY_LOOP.setdefault(loop, Deadlines(loop))
    _last[:] = [loop, deadlines]
    return deadlines
