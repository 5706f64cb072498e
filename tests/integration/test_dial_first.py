"""The dialer sends an upgrade's request head with the connection (wsproxy.io.dialer):
for a plain backend at a literal address, the head is in the backend's socket by the
time the dial's first step returns, before the loop runs again, so that the backend is
woken once for both (issue 18). A backend by host name (or wss) gets it the usual
way, from the caller, once the transport is there.

Real sockets on 127.0.0.1, on uvloop and on asyncio's own loop; a backend that has
not accepted yet (its listening socket, read with a non-blocking accept and recv).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from wsproxy.config import BackendConfig
from wsproxy.io import dialer
from wsproxy.io.dialer import dial, py_dial_send

try:
    from wsproxy.core import _scan
except ImportError:  # no compiler at install: the Python twin alone
    _scan = None  # type: ignore[assignment]
from wsproxy.io.steps import Steps

HEAD = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
#: Guards against a hang only (a dropped SYN is sent again after ~1 s, then 3 s).
GUARD = 20.0
Run = Callable[[Coroutine[Any, Any, None]], None]
DialSend = Callable[[int, str, int, bytes], tuple[int, int]]
RUNS: dict[str, Run] = {"uvloop": uvloop.run, "asyncio": asyncio.run}
on_both_loops = pytest.mark.parametrize("run", RUNS.values(), ids=RUNS.keys())


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


def backend_at(host: str, port: int) -> BackendConfig:
    return BackendConfig.from_url(name="b", url=f"ws://{host}:{port}")


def first_step(coro: Coroutine[Any, Any, asyncio.Transport]) -> asyncio.Future[Any]:
    """Run *coro*'s first step in the caller's frame (as a Connection's dial runs:
    wsproxy.io.steps); the future says how it ended, with the transport it made."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[Any] = loop.create_future()
    made: list[asyncio.Transport] = []

    async def keep() -> None:
        made.append(await coro)

    def done(_: Steps, exc: BaseException | None) -> None:
        if exc is None:
            ended.set_result(made[0])
        else:
            ended.set_exception(exc)

    Steps().start(keep(), done)
    return ended


@on_both_loops
def test_the_head_is_in_the_backends_socket_when_the_first_step_returns(run: Run) -> None:
    listener = listening()
    asked: list[int] = []

    def head() -> bytes:
        asked.append(1)
        return HEAD

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ended = first_step(dial(loop, asyncio.Protocol, backend_at(*listener.getsockname()),
                                None, first=head))
        # Not a loop pass yet: the connection is in the backlog, the head in its socket.
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.recv(len(HEAD) + 1, socket.MSG_DONTWAIT) == HEAD
            transport = await ended
            assert transport.get_extra_info("peername") == listener.getsockname()
            transport.write(b"more")  # the transport goes on from there
            accepted.setblocking(True)
            assert accepted.recv(4) == b"more"
            transport.close()
        assert asked == [1]

    with listener:
        run(main())


@on_both_loops
def test_a_refused_dial_raises_oserror_after_making_the_head(run: Run) -> None:
    # A port bound and not listening: the connection is refused (a RST, on loopback
    # seen by the send right after connect(), which had said EINPROGRESS).
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # (OutOfDescriptors, the proxy's own trouble, is no OSError: not this)
        with pytest.raises(ConnectionRefusedError):
            await dial(loop, asyncio.Protocol, backend_at(*closed.getsockname()), None,
                       first=lambda: HEAD)

    with closed:
        run(main())


@on_both_loops
def test_a_backend_by_name_gets_the_head_from_the_caller(run: Run) -> None:
    listener = listening()

    def head() -> bytes:
        raise AssertionError("not for a host name: the loop's connect resolves it")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        port = listener.getsockname()[1]
        transport = await dial(loop, asyncio.Protocol, backend_at("localhost", port), None,
                               first=head)
        accepted, _ = listener.accept()
        with accepted:
            transport.write(HEAD)
            accepted.setblocking(True)
            assert accepted.recv(len(HEAD)) == HEAD
            transport.close()

    with listener:
        run(main())


def full_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full, and the connections that fill
    it: a further connection stays under way (its SYN dropped, sent again after ~1 s)
    until the queue has room. (The one that showed the queue full is closed: under
    way, it would compete for the room with the connection the test makes.)"""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    while True:
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        fillers.append(filler)
        filler.connect_ex(listener.getsockname())
        try:
            filler.getpeername()
        except OSError:  # ENOTCONN: this one is still under way, so the queue is full
            fillers.pop().close()
            return listener, fillers


@on_both_loops
def test_a_connection_still_under_way_gets_the_head_once_it_is_made(
    run: Run, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The path of a backend further away than loopback: connect() says EINPROGRESS
    and the connection is not made yet, so nothing is sent with it; the dial waits for
    it as the loop's connect would, and the head goes through the transport."""
    sends: list[int] = []

    def recorded(family: int, host: str, port: int, data: bytes) -> tuple[int, int]:
        fd, sent = py_dial_send(family, host, port, data)
        sends.append(sent)
        return fd, sent

    monkeypatch.setattr(dialer, "dial_send", recorded)
    listener, fillers = full_listener()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ended = first_step(dial(loop, asyncio.Protocol, backend_at(*listener.getsockname()),
                                None, first=lambda: HEAD))
        assert sends == [0]  # under way: nothing could be sent with it
        listener.setblocking(False)
        # Room in the queue: the connections that filled it, then the dial's (its SYN,
        # sent again, gets in).
        accepted = []
        for _ in range(len(fillers) + 1):
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), GUARD)
            accepted.append(conn)
        transport = await asyncio.wait_for(ended, GUARD)
        [ours] = [c for c in accepted if c.getpeername() == transport.get_extra_info("sockname")]
        ours.settimeout(GUARD)
        assert ours.recv(len(HEAD) + 1) == HEAD  # written by the transport, once made
        transport.close()
        for conn in accepted:
            conn.close()

    with listener:
        try:
            run(main())
        finally:
            for filler in fillers:
                filler.close()


# dial_send: _scan.dial_send (C) and py_dial_send, the same answers (twins).
SENDS = {"python": py_dial_send, **({"c": _scan.dial_send} if _scan is not None else {})}
both_twins = pytest.mark.parametrize("send", SENDS.values(), ids=SENDS.keys())


@both_twins
@pytest.mark.parametrize("data", [HEAD, b""], ids=["head", "nothing"])
def test_dial_send_connects_and_sends(send: DialSend, data: bytes) -> None:
    with listening() as listener:
        host, port = listener.getsockname()
        fd, sent = send(socket.AF_INET, host, port, data)
        with socket.socket(fileno=fd) as sock:
            assert sent == len(data)
            assert sock.gettimeout() == 0 or os.get_blocking(fd) is False
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getpeername() == sock.getsockname()
                if data:
                    assert accepted.recv(len(data) + 1, socket.MSG_DONTWAIT) == data
                else:
                    with pytest.raises(BlockingIOError):
                        accepted.recv(1, socket.MSG_DONTWAIT)


@both_twins
def test_dial_send_refused(send: DialSend) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        host, port = closed.getsockname()
        with pytest.raises(ConnectionRefusedError):
            send(socket.AF_INET, host, port, HEAD)


@both_twins
@pytest.mark.parametrize(("family", "host"), [
    (socket.AF_INET, "localhost"), (socket.AF_INET, "::1"), (socket.AF_INET6, "127.0.0.1"),
])
def test_dial_send_wants_a_literal_address_of_its_family(
    send: DialSend, family: int, host: str,
) -> None:
    with pytest.raises(ValueError, match="not a literal address"):
        send(family, host, 9, HEAD)


@both_twins
def test_dial_send_over_ipv6(send: DialSend) -> None:
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with listener:
        listener.listen(1)
        fd, sent = send(socket.AF_INET6, "::1", listener.getsockname()[1], HEAD)
        os.close(fd)
        accepted, _ = listener.accept()
        with accepted:
            assert sent == len(HEAD)
            assert accepted.recv(len(HEAD)) == HEAD
