"""A backend link paused for a full client buffer is resumed before it goes back to the
pool: the answer's last bytes may fill the client's buffer (pausing the link) and end
the answer in the same write, and a link pooled paused would never read its next
answer (the request after it would wait for ``http.response_timeout``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from wsproxy.core.http_heads import read_request
from wsproxy.io.http_pool import BackendLink
from wsproxy.io.http_relay import HttpRelay, _Exchange


class Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def test_a_link_paused_for_a_full_client_is_resumed_before_it_is_pooled() -> None:
    given: list[tuple[BackendLink, bool]] = []

    def give(link: BackendLink, *, clean: bool | None = None) -> None:
        assert isinstance(link.transport, Transport)
        given.append((link, link.transport.reading))

    relay: Any = HttpRelay.__new__(HttpRelay)
    relay.ctx = SimpleNamespace(http=SimpleNamespace(pool=SimpleNamespace(give=give)))
    read = read_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 8192)
    assert read is not None
    ex = _Exchange(relay, read[0], "c-1", 0.0, True)
    link = BackendLink(None, None)  # type: ignore[arg-type]
    transport = Transport()
    link.transport = transport  # type: ignore[assignment]
    ex.link = link
    relay._pause_link(ex, True)  # the client's buffer filled (client_paused())
    assert not transport.reading
    relay._release_link(ex, clean=True)
    assert given == [(link, True)]
    assert ex.link is None
