"""wsproxy.io.pass_end: callbacks at the end of the loop's pass, in order, each on its own.

On both loops (asyncio's and uvloop's), without sockets: what is added during a pass
runs once that pass's callbacks are done, in order, and what a callback adds runs in
a batch of its own, after the callbacks already scheduled; the loop is asked for one
callback a batch however many are added; an exception goes to the loop's exception
handler and the others still run. ``PassEndWriter`` (the plain HTTP relay's): a pass's
writes in one piece at its end, a close after them, an abort at once after them, the
abort of a peer that does not read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wsproxy.io.pass_end import PassEnd, PassEndWriter

LOOPS = ["asyncio"]
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    pass
else:
    LOOPS.append("uvloop")


def run(loop_kind: str, main: Any) -> Any:
    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_callbacks_run_after_the_pass_in_the_order_added(loop_kind: str) -> None:
    async def main(loop: asyncio.AbstractEventLoop) -> list[str]:
        order: list[str] = []
        pass_end = PassEnd(loop)
        done = loop.create_future()

        def a_pass() -> None:  # stands for one pass's I/O callbacks
            pass_end.add(lambda: order.append("first"))
            order.append("the pass goes on")
            pass_end.add(lambda: order.append("second"))
            order.append("the pass ends")
            loop.call_soon(done.set_result, None)

        loop.call_soon(a_pass)
        await done
        return order

    assert run(loop_kind, main) == ["the pass goes on", "the pass ends", "first", "second"]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_what_a_callback_adds_waits_for_the_next_pass(loop_kind: str) -> None:
    async def main(loop: asyncio.AbstractEventLoop) -> list[str]:
        order: list[str] = []
        pass_end = PassEnd(loop)
        done = loop.create_future()

        def later() -> None:
            order.append("added by a callback")
            done.set_result(None)

        def first() -> None:
            order.append("first")
            loop.call_soon(order.append, "called soon before it")
            pass_end.add(later)  # not in this batch: a new one, after that callback

        for _ in range(3):
            pass_end.add(lambda: order.append("same pass"))
        pass_end.add(first)
        await done
        return order

    assert run(loop_kind, main) == [
        "same pass", "same pass", "same pass", "first", "called soon before it",
        "added by a callback",
    ]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_an_exception_goes_to_the_loop_and_the_others_still_run(loop_kind: str) -> None:
    async def main(loop: asyncio.AbstractEventLoop) -> tuple[list[str], list[Any]]:
        heard: list[Any] = []
        loop.set_exception_handler(lambda _loop, context: heard.append(context["exception"]))
        order: list[str] = []
        pass_end = PassEnd(loop)
        done = loop.create_future()

        def broken() -> None:
            raise RuntimeError("a bug")

        pass_end.add(broken)
        pass_end.add(lambda: order.append("after it"))
        pass_end.add(lambda: done.set_result(None))
        await done
        return order, heard

    order, heard = run(loop_kind, main)
    assert order == ["after it"]
    assert [type(exc) for exc in heard] == [RuntimeError]


class RecordingLoop:
    """What PassEnd asks of a loop, recording the callbacks it is asked to call soon."""

    def __init__(self) -> None:
        self.soon: list[Any] = []

    def call_soon(self, callback: Any) -> None:
        self.soon.append(callback)


def test_the_loop_is_asked_once_a_batch() -> None:
    loop = RecordingLoop()
    pass_end = PassEnd(loop)  # type: ignore[arg-type]
    ran: list[int] = []
    for i in range(3):
        pass_end.add(lambda i=i: ran.append(i))
    assert len(loop.soon) == 1
    loop.soon.pop()()
    assert ran == [0, 1, 2]
    pass_end.add(lambda: ran.append(3))
    assert len(loop.soon) == 1  # the next batch's
    loop.soon.pop()()
    assert ran == [0, 1, 2, 3]


class FakeTransport:
    """Records what is done to it, in order; *buffered*: what get_write_buffer_size() says."""

    def __init__(self, buffered: int = 0) -> None:
        self.done: list[Any] = []
        self.buffered = buffered
        self.closing = False

    def write(self, data: bytes) -> None:
        self.done.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.done.append(list(chunks))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.done.append("close")
        self.closing = True

    def abort(self) -> None:
        self.done.append("abort")
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return self.buffered


class TimerLoop(RecordingLoop):
    """A RecordingLoop that also records call_later()."""

    def __init__(self) -> None:
        super().__init__()
        self.later: list[tuple[float, Any]] = []

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append((delay, callback))


def writer(buffered: int = 0) -> tuple[PassEndWriter, FakeTransport, TimerLoop]:
    loop = TimerLoop()
    transport = FakeTransport(buffered)
    return PassEndWriter(transport, PassEnd(loop)), transport, loop  # type: ignore[arg-type]


def test_the_writes_of_a_pass_go_out_together_at_its_end() -> None:
    w, transport, loop = writer()
    w.write(b"head")
    w.writelines([b"body", b"end"])
    assert transport.done == []
    assert len(loop.soon) == 1
    loop.soon.pop()()
    assert transport.done == [[b"head", b"body", b"end"]]
    w.write(b"next pass")
    loop.soon.pop()()
    assert transport.done[-1] == b"next pass"  # one piece: write(), not writelines()


def test_a_close_waits_for_the_writes_and_an_abort_does_not() -> None:
    w, transport, loop = writer()
    w.write(b"answer")
    w.close(5.0)
    assert transport.done == []
    loop.soon.pop()()
    assert transport.done == [b"answer", "close"]
    assert loop.later == []  # nothing left buffered: no abort armed

    w, transport, loop = writer()
    w.close(5.0)  # nothing queued: at once
    assert transport.done == ["close"]

    w, transport, loop = writer()
    w.write(b"cut short")
    w.abort()  # what was queued is written first, as a write then an abort did
    assert transport.done == [b"cut short", "abort"]
    loop.soon.pop()()  # the pass's flush finds nothing
    assert transport.done == [b"cut short", "abort"]


def test_a_peer_that_does_not_read_is_aborted_after_the_delay() -> None:
    w, transport, loop = writer(buffered=1 << 20)
    w.write(b"a lot")
    w.close(5.0)
    loop.soon.pop()()
    assert transport.done == [b"a lot", "close"]
    assert loop.later == [(5.0, transport.abort)]

    w, transport, loop = writer(buffered=1 << 20)
    w.close(None)  # none asked for (a backend link): none armed
    assert transport.done == ["close"]
    assert loop.later == []


def test_an_early_flush_and_a_closed_transport() -> None:
    w, transport, loop = writer()
    w.write(b"owed")
    w.flush()  # before the transport goes to another driver
    assert transport.done == [b"owed"]
    loop.soon.pop()()
    assert transport.done == [b"owed"]
    transport.closing = True  # lost meanwhile: nothing more is written to it
    w.write(b"too late")
    loop.soon.pop()()
    assert transport.done == [b"owed"]
