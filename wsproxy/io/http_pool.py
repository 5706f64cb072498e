"""Keep-alive connections to backends for plain HTTP requests, a few idle per backend.

A ``BackendLink`` is one connection to a backend with its h11 client state. While a
request uses it, its transport's callbacks go to that request's relay; between
requests it waits in the ``BackendPool``, where a close or stray bytes from the
backend retire it and an idle timer closes it before the backend's own keep-alive
timeout would (uvicorn's is 5 s, gunicorn's 2 s).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Protocol, cast

import h11

from wsproxy.io.pass_end import PassEnd, PassEndWriter

if TYPE_CHECKING:
    from wsproxy.core.balance import BackendState

#: How long an idle backend connection is kept: below common backend keep-alive
#: timeouts, so that a request rarely meets a connection the backend is closing.
POOL_IDLE_TIMEOUT: Final = 1.5


class LinkUser(Protocol):
    """What a relay using a link hears from it."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_eof(self) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...


class BackendLink(asyncio.Protocol):
    """One connection to a backend, used by one request at a time."""

    __slots__ = (
        "_idle_timer", "_out", "_pass_end", "backend", "h11", "idle_until", "pool", "reused",
        "transport", "user",
    )

    def __init__(self, backend: BackendState, pass_end: PassEnd) -> None:
        """*pass_end*: the loop's (its writes go out at the end of the pass)."""
        self.backend = backend
        self._pass_end = pass_end
        #: Every write to the backend, and the close, at the end of the loop's pass.
        self._out: PassEndWriter | None = None
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.user: LinkUser | None = None
        self.pool: BackendPool | None = None
        #: Served a request before: a failure without an answer may be a stale connection.
        self.reused = False
        #: While pooled: when it is closed for idleness. The timer that checks it is
        #: kept while the link is taken and given back (_idle_check()).
        self._idle_timer: asyncio.TimerHandle | None = None
        self.idle_until = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._out = PassEndWriter(self.transport, self._pass_end)

    def data_received(self, data: bytes) -> None:
        if self.user is not None:
            self.user.upstream_data(data)
        else:
            self.close()  # an idle connection has nothing to say: not ours to guess

    def eof_received(self) -> bool:
        if self.user is not None:
            self.user.upstream_eof()
        else:
            self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.user is not None:
            user, self.user = self.user, None
            user.upstream_eof()
        self.leave_pool()

    def pause_writing(self) -> None:
        if self.user is not None:
            self.user.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.user is not None:
            self.user.upstream_paused(False)

    def write(self, data: bytes | None) -> None:
        if data and self.transport is not None:
            assert self._out is not None
            self._out.write(data)

    def close(self, *, abort: bool = False) -> None:
        """End this connection, once what this pass wrote is out (abort: at once after
        that, dropping what the transport still buffers)."""
        self.user = None
        self.leave_pool()
        out = self._out
        if self.transport is not None and out is not None:
            out.abort() if abort else out.close(None)

    def idle_check(self) -> None:
        """The idle timer: close the link if it sat in the pool until ``idle_until``;
        in use, the timer ends (give() starts one again); given back since, again later."""
        self._idle_timer = None
        pool = self.pool
        if pool is None:
            return
        at = self.idle_until
        if at > pool._loop.time() + 0.001:  # (the loop's clock may lag by a millisecond)
            self._idle_timer = pool._loop.call_at(at, self.idle_check)
        else:
            self.close()

    def leave_pool(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.pool is not None:
            self.pool.discard(self)


class BackendPool:
    """Idle keep-alive links, at most *size* per backend, newest reused first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self.size = size
        self._idle: dict[BackendState, list[BackendLink]] = {}

    def take(self, backend: BackendState) -> BackendLink | None:
        links = self._idle.get(backend)
        while links:
            link = links.pop()
            link.pool = None  # its idle timer stays, and finds it in use (idle_check())
            if link.transport is not None and not link.transport.is_closing():
                return link
            link.leave_pool()
        return None

    def give(self, link: BackendLink, *, clean: bool | None = None) -> None:
        """*link* finished a request; keep it if it can serve another. *clean*: whether
        the request and its answer left it so, when the relay framed them itself (its
        h11 then saw nothing); None: its h11 says."""
        link.user = None
        h = link.h11
        backend = link.backend
        if clean is None:
            clean = h.our_state is h11.DONE and h.their_state is h11.DONE
            if clean:
                h.start_next_cycle()
        if (
            not clean or link.transport is None or link.transport.is_closing()
            or not backend.usable or self.size == 0
        ):
            link.close()
            return
        links = self._idle.setdefault(backend, [])
        if len(links) >= self.size:
            links.pop(0).close()
        link.reused = True
        link.pool = self
        link.idle_until = self._loop.time() + POOL_IDLE_TIMEOUT
        if link._idle_timer is None:
            link._idle_timer = self._loop.call_at(link.idle_until, link.idle_check)
        links.append(link)

    def discard(self, link: BackendLink) -> None:
        link.pool = None
        links = self._idle.get(link.backend)
        if links is not None and link in links:
            links.remove(link)
            if not links:
                del self._idle[link.backend]

    def idle(self, backend: BackendState) -> int:
        """How many idle links to *backend* are kept."""
        return len(self._idle.get(backend, ()))

    def close_idle(self, backend: BackendState) -> int:
        """Close the idle links to *backend* (it is draining); how many there were."""
        links = list(self._idle.get(backend, ()))
        for link in links:
            link.close()
        return len(links)

    def close(self) -> None:
        """Close every idle link (the proxy is stopping)."""
        for links in list(self._idle.values()):
            for link in list(links):
                link.close()
