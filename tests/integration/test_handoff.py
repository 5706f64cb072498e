"""io.handoff: one worker hands a client's socket to a sibling, on real Unix sockets.

The "client" is one end of a socketpair; the test keeps the other end and checks that
the socket the sibling adopted is the same connection (bytes both ways).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from wsproxy.io import handoff as handoff_module
from wsproxy.io.handoff import Handoff, socket_path

pytestmark = pytest.mark.anyio


class Adopted:
    def __init__(self) -> None:
        self.clients: list[tuple[socket.socket, str, bytes]] = []
        self.changed = asyncio.Event()

    def __call__(self, sock: socket.socket, peer: str, data: bytes) -> None:
        self.clients.append((sock, peer, data))
        self.changed.set()

    async def until(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.clients) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def pair(made: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    made.append(socket.socketpair())
    return made[-1]


async def test_the_sibling_serves_the_same_connection(tmp_path: Path, pairs) -> None:
    loop = asyncio.get_running_loop()
    first, second, adopted = Handoff(str(tmp_path), 0, loop), Handoff(str(tmp_path), 1, loop), \
        Adopted()
    second.open(adopted)
    try:
        ours, theirs = pair(pairs)
        assert first.send(1, theirs.fileno(), "203.0.113.7", b"GET / HTTP/1.1\r\n\r\n")
        theirs.close()  # the sender's own descriptor goes; the connection stays
        await adopted.until(1)
        [(sock, peer, data)] = adopted.clients
        with sock:
            assert (peer, data) == ("203.0.113.7", b"GET / HTTP/1.1\r\n\r\n")
            ours.sendall(b"more")
            assert sock.recv(16) == b"more"
            sock.sendall(b"back")
            assert ours.recv(16) == b"back"
    finally:
        first.close()
        second.close()


async def test_a_sibling_that_is_not_running_cannot_take_it(tmp_path: Path, pairs) -> None:
    loop = asyncio.get_running_loop()
    first = Handoff(str(tmp_path), 0, loop)
    _, theirs = pair(pairs)
    assert not first.send(1, theirs.fileno(), "a", b"")  # never started
    gone = Handoff(str(tmp_path), 2, loop)
    gone.open(Adopted())
    gone.close()  # died: its socket file stays, nobody reads it
    assert not first.send(2, theirs.fileno(), "a", b"")
    assert not first.send(0, theirs.fileno(), "a", b"")  # itself
    too_big = b"x" * handoff_module.MAX_MESSAGE
    assert not first.send(1, theirs.fileno(), "a", too_big)
    first.close()


async def test_a_replaced_sibling_gets_what_comes_after(tmp_path: Path, pairs) -> None:
    loop = asyncio.get_running_loop()
    first = Handoff(str(tmp_path), 0, loop)
    old, new, adopted_old, adopted_new = (Handoff(str(tmp_path), 1, loop),
                                          Handoff(str(tmp_path), 1, loop), Adopted(), Adopted())
    old.open(adopted_old)
    _, theirs = pair(pairs)
    assert first.send(1, theirs.fileno(), "a", b"1")
    await adopted_old.until(1)
    old.close()
    new.open(adopted_new)  # the replacement binds the same path
    try:
        assert first.send(1, theirs.fileno(), "a", b"2")
        await adopted_new.until(1)
        assert [data for _, _, data in adopted_new.clients] == [b"2"]
    finally:
        for sock, _, _ in adopted_old.clients + adopted_new.clients:
            sock.close()
        first.close()
        new.close()


async def test_a_busy_sibling_is_waited_for_in_order(tmp_path: Path, pairs, monkeypatch) -> None:
    """A sibling that does not read: its queue fills (net.unix.max_dgram_qlen), the
    rest wait, up to MAX_WAITING; once it reads, all arrive, in order."""
    monkeypatch.setattr(handoff_module, "MAX_WAITING", 40)
    loop = asyncio.get_running_loop()
    first = Handoff(str(tmp_path), 0, loop)
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # bound, not read yet
    busy.bind(socket_path(str(tmp_path), 1))
    busy.setblocking(False)
    _, theirs = pair(pairs)
    taken = [first.send(1, theirs.fileno(), "a", str(i).encode()) for i in range(200)]
    assert all(taken[:40])
    assert not all(taken)  # past its queue and MAX_WAITING: refused, not grown
    got: list[bytes] = []
    with busy, anyio.fail_after(10):
        while len(got) < taken.count(True):
            await anyio.wait_readable(busy)
            while True:
                try:
                    message, fds, _, _ = socket.recv_fds(busy, 4096, 1)
                except BlockingIOError:
                    break
                for fd in fds:
                    os.close(fd)
                header, _, data = message.partition(b"\n")
                assert json.loads(header) == {"peer": "a"}
                got.append(data)
    assert got == [str(i).encode() for i, ok in enumerate(taken) if ok]
    first.close()
