"""Coarse per-connection deadlines (wsproxy.io.deadlines), on asyncio's loop and uvloop:
a deadline fires once the loop's clock has passed it, never before; disarmed, it does
not; a callback may disarm or arm others of the same slot; one that raises goes to the
loop's exception handler and the others still run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from math import ceil
from typing import Any

import pytest
import uvloop

from wsproxy.io.deadlines import RATE, Deadlines, deadlines_of

LOOPS: list[Callable[[], asyncio.AbstractEventLoop]] = [
    asyncio.new_event_loop, uvloop.new_event_loop,
]


def run(make: Callable[[], asyncio.AbstractEventLoop], body: Callable[..., Any]) -> None:
    loop = make()
    try:
        loop.run_until_complete(body(loop))
    finally:
        loop.close()


class Calls:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.at: dict[str, float] = {}
        self.done = asyncio.Event()

    def fired(self, name: str = "plain") -> None:
        self.at[name] = self.loop.time()
        self.done.set()

    def other(self) -> None:
        self.fired("other")


@pytest.mark.parametrize("make", LOOPS)
def test_fires_once_the_clock_has_passed_it(make: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        deadlines, calls = Deadlines(loop), Calls(loop)
        when = loop.time() + 0.05
        deadlines.arm(when, calls.fired, "a")
        await calls.done.wait()
        assert calls.at["a"] >= when
        assert deadlines.pending() == 0

    run(make, body)


@pytest.mark.parametrize("make", LOOPS)
def test_disarmed_it_does_not_fire(make: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        deadlines, calls = Deadlines(loop), Calls(loop)
        when = loop.time() + 0.02
        deadlines.arm(when, calls.fired, "gone")
        deadlines.arm(when + 0.03, calls.other)
        deadlines.disarm(when, calls.fired)
        assert deadlines.pending() == 1
        await calls.done.wait()
        assert list(calls.at) == ["other"]

    run(make, body)


@pytest.mark.parametrize("make", LOOPS)
def test_callbacks_of_one_slot_see_each_other(
    make: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        deadlines, calls = Deadlines(loop), Calls(loop)
        when = loop.time() + 0.02
        order: list[str] = []

        def first() -> None:
            order.append("first")
            deadlines.disarm(when, second)  # cancelled by the one before it
            deadlines.arm(when, calls.other)  # armed for the slot that is running
            deadlines.arm(loop.time() - 1, third)  # already past

        def second() -> None:
            order.append("second")

        def third() -> None:
            order.append("third")

        deadlines.arm(when, first)
        deadlines.arm(when, second)
        await calls.done.wait()
        assert order == ["first", "third"]
        assert "other" in calls.at
        assert deadlines.pending() == 0

    run(make, body)


@pytest.mark.parametrize("make", LOOPS)
def test_a_callback_that_raises_goes_to_the_handler(
    make: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        deadlines, calls = Deadlines(loop), Calls(loop)
        seen: list[BaseException] = []
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["exception"]))
        when = loop.time() + 0.01

        def bad() -> None:
            raise RuntimeError("boom")

        deadlines.arm(when, bad)
        deadlines.arm(when, calls.fired, "after")
        await calls.done.wait()
        assert [str(e) for e in seen] == ["boom"]

    run(make, body)


@pytest.mark.parametrize("make", LOOPS)
def test_earlier_deadlines_move_the_timer_forward(
    make: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        deadlines, calls = Deadlines(loop), Calls(loop)
        deadlines.arm(loop.time() + 30, calls.other)
        soon = loop.time() + 0.02
        deadlines.arm(soon, calls.fired, "soon")
        await asyncio.wait_for(calls.done.wait(), 10)
        assert calls.at["soon"] >= soon
        assert calls.at["soon"] < soon + 10
        deadlines.disarm(loop.time() + 30, calls.other)  # not the same slot: kept
        assert deadlines.pending() == 1

    run(make, body)


def test_one_per_loop() -> None:
    a, b = asyncio.new_event_loop(), uvloop.new_event_loop()
    try:
        assert deadlines_of(a) is deadlines_of(a)
        assert deadlines_of(b) is not deadlines_of(a)
        assert deadlines_of(a) is deadlines_of(a)
    finally:
        a.close()
        b.close()


def test_slots_never_start_before_the_deadline() -> None:
    for when in (0.0, 0.001, 1 / RATE, 1 / RATE + 1e-9, 123.456789, 1e6 + 0.3):
        slot = ceil(when * RATE)  # Deadlines.arm's slot
        assert slot / RATE >= when
        assert slot / RATE - when < 1 / RATE
