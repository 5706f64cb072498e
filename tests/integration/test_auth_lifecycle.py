"""Auth over a connection's life: JWT expiry closes with 1008; revocation by subject."""

from __future__ import annotations

import json
import math
import time
import urllib.request

import anyio
import anyio.to_thread
import jwt
import pytest
from websockets.asyncio.client import connect

from tests.integration.peers import backend, closed_by_proxy, make_config, running_proxy

pytestmark = pytest.mark.anyio

SECRET = "a-test-secret-of-at-least-32-bytes!!"


#: Bound on waits for what normally takes milliseconds.
WAIT = 10.0
#: The short-lived token's life: long enough for its upgrade and first echo on a
#: loaded machine (``exp`` is whole seconds: it lives between this and one more).
SHORT_LIFE = 3


def token(subject: str, lifetime: int) -> str:
    """A token valid for at least *lifetime* seconds from now (``exp`` rounded up)."""
    now = time.time()
    return jwt.encode({"sub": subject, "iat": int(now), "exp": math.ceil(now) + lifetime},
                      SECRET, "HS256")


def jwt_config(backends, *, close_on_expiry: bool = True):  # type: ignore[no-untyped-def]
    return make_config(
        backends,
        auth={"type": "jwt", "close_on_expiry": close_on_expiry,
              "jwt": {"algorithms": ["HS256"], "secret": SECRET, "leeway": 0}},
        # The sweeper visits connections a few times a second with a short heartbeat
        # interval; the timeout is long enough that healthy peers never trip it.
        heartbeat={"interval": "200ms", "timeout": "10s"},
    )


async def test_a_connection_is_closed_with_1008_when_its_jwt_expires() -> None:
    async with backend() as b, running_proxy(jwt_config([b])) as ctx:
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
        short = {"Authorization": f"Bearer {token('ann', SHORT_LIFE)}"}
        long = {"Authorization": f"Bearer {token('bob', 600)}"}
        async with connect(url, additional_headers=short) as expiring, connect(
            url, additional_headers=long
        ) as lasting:
            await expiring.send("before")
            assert await expiring.recv() == "before"
            closed = await closed_by_proxy(expiring, within=SHORT_LIFE + 1 + WAIT)
            assert closed == (1008, "token expired")
            await lasting.send("still here")
            assert await lasting.recv() == "still here"
    assert [h["X-Auth-Subject"] for _, h in b.requests] == ["ann", "bob"]


async def test_close_on_expiry_off_keeps_the_connection() -> None:
    async with backend() as b, running_proxy(jwt_config([b], close_on_expiry=False)) as ctx:
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"
        async with connect(url, additional_headers={
                "Authorization": f"Bearer {token('ann', 60)}"}) as ws:
            [conn] = ctx.registry.connections.values()
            assert conn.liveness is not None
            assert conn.liveness.expires_at is None  # nothing to close it for
            await ws.send("x")
            assert await ws.recv() == "x"


def revoke(admin: str, subject: str) -> dict[str, list[str]]:
    request = urllib.request.Request(
        admin + "/connections/close", method="POST", data=json.dumps({"subject": subject}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        result: dict[str, list[str]] = json.loads(response.read())
        return result


async def test_revoking_a_subject_closes_its_connections_with_1008() -> None:
    async with backend() as b, running_proxy(jwt_config([b])) as ctx:
        url = f"ws://127.0.0.1:{ctx.addresses[0][1]}/"

        def auth(subject: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token(subject, 600)}"}

        async with connect(url, additional_headers=auth("mallory")) as m1, connect(
            url, additional_headers=auth("mallory")
        ) as m2, connect(url, additional_headers=auth("alice")) as a:
            views = [c.view() for c in ctx.registry.connections.values()]
            assert sorted(v["subject"] for v in views) == ["alice", "mallory", "mallory"]
            assert ctx.admin_address is not None
            answer = await anyio.to_thread.run_sync(
                revoke, f"http://127.0.0.1:{ctx.admin_address[1]}", "mallory"
            )
            assert len(answer["closed"]) == 2
            assert await closed_by_proxy(m1) == (1008, "connection revoked")
            assert await closed_by_proxy(m2) == (1008, "connection revoked")
            await a.send("untouched")
            assert await a.recv() == "untouched"
