"""The relay renders the middle of its access lines once while they repeat it (the same
head, answer, backend and client: log.request_fields()); every line is still the one
log.request_line() renders from its fields."""

from __future__ import annotations

from typing import Any

import pytest

from wsproxy import log as wslog
from wsproxy.config import BackendConfig
from wsproxy.core.balance import BackendState
from wsproxy.core.http_heads import read_request
from wsproxy.io.http_relay import HttpRelay, _Exchange


class _FixedClock:
    def stamp(self) -> str:
        return "2026-01-01T00:00:00.000001Z"


def test_each_line_is_request_lines_whatever_changes_between_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wslog, "_clock", _FixedClock())
    relay: Any = HttpRelay.__new__(HttpRelay)
    relay._log_fields = None
    relay.client_ip = "10.0.0.1"
    a = BackendState(BackendConfig.from_url(name="a", url="ws://127.0.0.1:8001"))
    b = BackendState(BackendConfig.from_url(name="b", url="ws://127.0.0.1:8002"))
    get = read_request(b"GET /x?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", 8192)
    post = read_request(b"POST /y HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", 8192)
    assert get is not None
    assert post is not None
    cases = [  # (head, status, backend, client, error)
        (get, 200, a, "10.0.0.1", None), (get, 200, a, "10.0.0.1", None),
        (get, 404, a, "10.0.0.1", None), (get, 404, b, "10.0.0.1", None),
        (post, 404, b, "10.0.0.1", None), (post, None, None, "10.0.0.1", "client_gone"),
        (post, None, None, "10.0.0.2", "client_gone"), (get, 200, a, "10.0.0.2", None),
    ]
    for n, (read, status, backend, client, error) in enumerate(cases):
        relay.client_ip = client
        ex = _Exchange(relay, read[0], f"c-{n}", 1.0, True)
        ex.status, ex.backend, ex.error = status, backend, error
        ex.body_in, ex.bytes_out = n, 10 * n
        lines: list[str] = []
        relay._log_request(ex, 1.25, lines.append)
        method, path = ("GET", "/x") if read is get else ("POST", "/y")
        assert lines == [wslog.request_line(
            f"c-{n}", client, method, path, status, backend and backend.name, 0.25, n, 10 * n,
            error)]
    assert isinstance(relay._log_fields, tuple)
