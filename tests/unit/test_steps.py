"""wsproxy.io.steps: a coroutine run by hand ends, fails and is cancelled as a Task's would."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wsproxy.io.steps import Steps

pytestmark = pytest.mark.anyio


class Ended:
    """The done callback: how each run ended, and an event set when one has."""

    def __init__(self) -> None:
        self.outcomes: list[BaseException | None] = []
        self.event = asyncio.Event()

    def __call__(self, steps: Steps, exc: BaseException | None) -> None:
        assert not steps.running
        self.outcomes.append(exc)
        self.event.set()


async def test_runs_its_first_step_at_once_and_the_rest_on_wake_ups() -> None:
    seen: list[str] = []
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def body() -> None:
        seen.append("first")
        seen.append(f"got {await future}")
        await asyncio.sleep(0)  # a bare yield
        seen.append("after a bare yield")

    ended = Ended()
    steps = Steps()
    steps.start(body(), ended)
    assert seen == ["first"]
    assert steps.running
    future.set_result(7)
    await ended.event.wait()
    assert seen == ["first", "got 7", "after a bare yield"]
    assert ended.outcomes == [None]


async def test_an_exception_out_of_it_goes_to_done() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def body() -> None:
        await future

    ended = Ended()
    Steps().start(body(), ended)
    future.set_exception(OSError("refused"))
    await ended.event.wait()
    [exc] = ended.outcomes
    assert isinstance(exc, OSError)
    assert str(exc) == "refused"


async def test_one_that_ends_in_its_first_step_is_done_at_once() -> None:
    async def body() -> None:
        raise ValueError("at once")

    ended = Ended()
    Steps().start(body(), ended)
    [exc] = ended.outcomes
    assert isinstance(exc, ValueError)


async def test_cancel_reaches_the_future_it_waits_on() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    cleaned: list[bool] = []

    async def body() -> None:
        try:
            await future
        except asyncio.CancelledError:
            cleaned.append(True)
            raise

    ended = Ended()
    steps = Steps()
    steps.start(body(), ended)
    steps.cancel()
    assert future.cancelled()
    await ended.event.wait()
    assert cleaned == [True]
    assert isinstance(ended.outcomes[0], asyncio.CancelledError)


async def test_cancel_after_its_future_is_done_is_thrown_in_at_the_next_step() -> None:
    """As a Task's: the future already has its result, the wake-up has not run yet."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    after: list[str] = []

    async def body() -> None:
        await future
        after.append("not reached")

    ended = Ended()
    steps = Steps()
    steps.start(body(), ended)
    future.set_result(1)
    steps.cancel()
    await ended.event.wait()
    assert after == []
    assert isinstance(ended.outcomes[0], asyncio.CancelledError)


async def test_cancel_while_it_runs_cancels_what_it_waits_on_next() -> None:
    """A cancel from inside the coroutine's own step (as a dial's failure path may)."""
    loop = asyncio.get_running_loop()
    steps = Steps()
    futures: list[asyncio.Future[Any]] = []

    async def body() -> None:
        steps.cancel()  # the coroutine is running: nothing is waited on yet
        futures.append(loop.create_future())
        await futures[0]

    ended = Ended()
    steps.start(body(), ended)
    assert futures[0].cancelled()
    await ended.event.wait()
    assert isinstance(ended.outcomes[0], asyncio.CancelledError)


async def test_cancel_after_the_end_does_nothing() -> None:
    async def body() -> None:
        return None

    ended = Ended()
    steps = Steps()
    steps.start(body(), ended)
    steps.cancel()
    assert ended.outcomes == [None]
    assert not steps.running


async def test_a_yield_asyncio_cannot_wait_on_is_a_bug_reported_to_done() -> None:
    class Odd:
        def __await__(self) -> Any:
            yield "not a future"

    async def body() -> None:
        await Odd()

    ended = Ended()
    Steps().start(body(), ended)
    [exc] = ended.outcomes
    assert isinstance(exc, RuntimeError)
