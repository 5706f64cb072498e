"""wsproxy.log_buffer: lines queued without blocking, written in order, the excess counted.

The writer is a function the test controls: it can block (a stuck stdout reader) until
the test releases it, and tells the test when a write has begun, so that what is in
the queue at each step is known without sleeping.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from wsproxy import log_buffer
from wsproxy.log_buffer import LineBuffer, fd_writer

#: Bound on waits for the writer thread (normally microseconds).
WAIT = 10.0


class StuckReader:
    """A writer that blocks until released; it records what it wrote."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.data = bytearray()

    def __call__(self, data: bytes) -> None:
        self.entered.set()
        assert self.release.wait(WAIT)
        self.data += data

    def lines(self) -> list[str]:
        return self.data.decode().splitlines()


def test_a_stuck_writer_never_blocks_put_and_the_oldest_are_dropped_and_counted() -> None:
    reader = StuckReader()
    buffer = LineBuffer(reader, max_lines=100)
    buffer.put("first")
    assert reader.entered.wait(WAIT)  # the writer took "first" and is stuck writing it
    for i in range(105):
        buffer.put(f"line {i}")  # returns at once: the last 5 push the first 5 out
    assert buffer.dropped == 5
    reader.release.set()
    assert buffer.close()
    assert reader.lines() == ["first", *(f"line {i}" for i in range(5, 105))]
    assert buffer.written == 101
    assert buffer.dropped == 5


def test_close_writes_what_is_queued_and_later_lines_are_dropped() -> None:
    reader = StuckReader()
    reader.release.set()
    buffer = LineBuffer(reader)
    for i in range(1000):
        buffer.put(f"{i}")
    assert buffer.close()
    buffer.put("after close")
    assert reader.lines() == [str(i) for i in range(1000)]
    assert buffer.dropped == 1


def test_close_waits_no_longer_than_its_timeout_for_a_stuck_reader() -> None:
    reader = StuckReader()
    buffer = LineBuffer(reader)
    buffer.put("stuck")
    assert reader.entered.wait(WAIT)
    started = time.monotonic()
    assert buffer.close(timeout=0.2) is False
    assert time.monotonic() - started >= 0.2
    reader.release.set()  # let the thread finish


def test_a_broken_output_drops_and_counts_every_line_without_raising() -> None:
    calls = []

    def broken(data: bytes) -> None:
        calls.append(data)
        raise BrokenPipeError(32, "Broken pipe")

    buffer = LineBuffer(broken)
    buffer.put("lost")
    buffer.close()
    for _ in range(3):
        buffer.put("also lost")
    assert calls == [b"lost\n"]
    assert buffer.dropped == 4


def _through_a_pipe(data: bytes, *, blocking: bool, read_size: int) -> bytes:
    """What fd_writer writes of *data* into a pipe that a thread reads, *read_size*
    bytes at a time."""
    r, w = os.pipe()
    os.set_blocking(w, blocking)
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(r, read_size):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        fd_writer(w)(data)
    finally:
        os.close(w)
        reader.join(WAIT)
        os.close(r)
    return bytes(received)


@pytest.mark.skipif(not hasattr(os, "pipe"), reason="needs os.pipe")
def test_fd_writer_writes_everything_even_to_a_non_blocking_pipe() -> None:
    data = b"x" * 300_000 + b"\n"  # several times a pipe's capacity
    assert _through_a_pipe(data, blocking=False, read_size=65536) == data


def test_lines_from_several_threads_all_get_written_in_each_threads_order() -> None:
    """The writer's wake-up (a lock put() releases) loses no line whatever the
    interleaving: four threads put 5,000 lines each, every one is written."""
    out = bytearray()
    buffer = LineBuffer(out.extend, max_lines=100_000)
    start = threading.Barrier(4)

    def producer(name: str) -> None:
        start.wait(WAIT)
        for i in range(5_000):
            buffer.put(f"{name} {i}")

    threads = [threading.Thread(target=producer, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    buffer.put("last")
    assert buffer.close()
    lines = out.decode().splitlines()
    assert len(lines) == 20_001
    assert buffer.dropped == 0
    for n in range(4):
        assert [line for line in lines if line.startswith(f"t{n} ")] == [
            f"t{n} {i}" for i in range(5_000)]


@pytest.mark.parametrize("batch", [1, 2, 7, 600])  # one line, a few, more than BATCH
def test_batches_are_written_as_utf8_with_replace(batch: int) -> None:
    """What the writer writes for a batch: the lines joined, each ending in a newline,
    as ``.encode("utf-8", "replace")`` writes them (a lone surrogate replaced)."""
    reader = StuckReader()
    buffer = LineBuffer(reader)
    buffer.put("first")
    assert reader.entered.wait(WAIT)  # the writer is stuck: the batch queues behind
    lines = [f"{i} é \ud800 ü" if i % 3 == 0 else f"{i} plain" for i in range(batch)]
    for line in lines:
        buffer.put(line)
    reader.release.set()
    assert buffer.close()
    expected = ("\n".join(["first", *lines]) + "\n").encode("utf-8", "replace")
    assert bytes(reader.data) == expected
    assert buffer.written == batch + 1


def test_fd_writer_after_a_partial_write() -> None:
    """A write the pipe takes part of goes on from where it stopped."""
    data = bytes(range(256)) * 1000  # more than a pipe's capacity: written in parts
    assert _through_a_pipe(data, blocking=True, read_size=4096) == data


def test_lines_that_come_while_the_writer_gathers_go_out_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One wake-up for many lines: the first put wakes the writer, the lines put while
    it lets them gather (GATHER, held here) wake nothing more and go out with it, in
    order, in one write."""
    gathering, go = threading.Event(), threading.Event()

    def gather(seconds: float) -> None:
        assert seconds == log_buffer.GATHER
        gathering.set()
        assert go.wait(WAIT)

    monkeypatch.setattr(log_buffer, "_gather", gather)
    writes: list[bytes] = []
    buffer = LineBuffer(writes.append)
    buffer.put("0")
    assert gathering.wait(WAIT)
    for i in range(1, 100):
        buffer.put(str(i))
    go.set()
    assert buffer.close()
    assert writes == ["".join(f"{i}\n" for i in range(100)).encode()]
