"""The plain HTTP side asks its owner what only a drain changes (an exchange's start and
end, refusing) only while a drain is in progress: the drains it watches (Drains hands
them over) are empty otherwise; unwired, it asks every time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wsproxy.io.plain_http import PlainHttp

pytestmark = pytest.mark.anyio


class Exchange:
    backend = None


class Owner:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def refusing_requests(self) -> bool:
        self.asked.append("refusing")
        return True

    def relay_ended(self) -> None:
        pass

    def exchange_started(self, exchange: Any) -> None:
        self.asked.append("started")

    def exchange_ended(self, exchange: Any) -> None:
        self.asked.append("ended")


async def test_the_owner_is_asked_only_while_a_drain_is_in_progress() -> None:
    owner = Owner()
    http = PlainHttp(owner, asyncio.get_running_loop(), pool_size=0)
    ex = Exchange()
    # Unwired: as before, every time.
    http.exchange_started(ex)  # type: ignore[arg-type]
    http.exchange_ended(ex)  # type: ignore[arg-type]
    assert http.refusing()
    assert owner.asked == ["started", "ended", "refusing"]
    drains: dict[Any, object] = {}
    http.watch(drains)
    owner.asked.clear()
    http.exchange_started(ex)  # type: ignore[arg-type]
    assert http.exchanges == {ex}  # counted all the same (a later drain finds it: on())
    assert not http.refusing()
    http.exchange_ended(ex)  # type: ignore[arg-type]
    assert not http.exchanges
    assert owner.asked == []
    drains["backend"] = object()  # a backend's drain: its exchanges, not refusing
    http.exchange_started(ex)  # type: ignore[arg-type]
    assert not http.refusing()
    http.exchange_ended(ex)  # type: ignore[arg-type]
    assert owner.asked == ["started", "ended"]
    drains[None] = object()  # the proxy's: the owner says when it refuses
    assert http.refusing()
    assert owner.asked[-1] == "refusing"
