"""wsproxy.auth.jwks.JwksUrl: caching and rate-limited refresh, on a fake clock.

The fetch is injected here (the real HTTP client is exercised against a real server
in tests/integration/test_auth.py).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from structlog.testing import capture_logs

from wsproxy.auth import AuthFailed, Credentials
from wsproxy.auth.http import HttpError, HttpResponse
from wsproxy.auth.jwks import JwksUrl, KeysUnavailable
from wsproxy.auth.jwt import JwtAuthenticator
from wsproxy.config import JwtAuthConfig
from wsproxy.core.handshake import UpgradeRequest

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:1/jwks"
REQUEST = UpgradeRequest(
    target=b"/", host=b"h", key=b"k", subprotocols=(), extensions=(), origin=None, headers=()
)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}


class KeyServer:
    """A fake fetch: serves ``keys`` (or fails), counts calls."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.calls = 0
        self.status = 200
        self.error: Exception | None = None
        self.body: bytes | None = None  # instead of the keys
        self.gate: anyio.Event | None = None

    async def __call__(self, url: str, headers: list[tuple[bytes, bytes]]) -> HttpResponse:
        self.calls += 1
        assert url == URL
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
        return HttpResponse(status=self.status, headers=(), body=body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def source(server: KeyServer, clock: Clock, **kwargs: Any) -> JwksUrl:
    return JwksUrl(URL, clock=clock, fetch=server, **kwargs)


async def test_the_first_lookup_fetches_and_later_ones_do_not(clock: Clock):
    key = new_key()
    server = KeyServer(jwk(key, "a"))
    keys = source(server, clock)
    assert server.calls == 0  # nothing at build time
    for _ in range(5):
        assert await keys.find("a") is not None
    assert server.calls == 1


async def test_an_unknown_kid_refreshes_at_most_once_per_interval(clock: Clock):
    server = KeyServer(jwk(new_key(), "a"))
    keys = source(server, clock)
    await keys.find("a")
    server.keys.append(jwk(new_key(), "b"))
    clock.now += 10
    assert await keys.find("b") is None  # fetched 10 s ago: no refetch
    assert await keys.find("zzz") is None
    assert server.calls == 1
    clock.now += 20
    assert await keys.find("b") is not None  # 30 s on: refetched, found
    assert server.calls == 2
    for kid in ("x", "y", "z"):  # a flood of forged kids...
        assert await keys.find(kid) is None
    assert server.calls == 2  # ...costs no fetch


async def test_concurrent_lookups_share_one_fetch(clock: Clock):
    server = KeyServer(jwk(new_key(), "a"))
    server.gate = anyio.Event()
    keys = source(server, clock)
    found: list[object] = []

    async def look() -> None:
        found.append(await keys.find("a"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(look)
        await anyio.wait_all_tasks_blocked()
        server.gate.set()
    assert server.calls == 1
    assert len(found) == 10
    assert all(found)


async def test_old_keys_are_refetched_after_max_age(clock: Clock):
    server = KeyServer(jwk(new_key(), "a"))
    keys = source(server, clock, max_age=600)
    await keys.find("a")
    server.keys = [jwk(new_key(), "b")]  # "a" withdrawn at the issuer
    clock.now += 599
    assert await keys.find("a") is not None
    clock.now += 1
    assert await keys.find("a") is None
    assert server.calls == 2


async def test_reload_refetches_on_the_next_lookup(clock: Clock):
    server = KeyServer(jwk(new_key(), "a"))
    keys = source(server, clock)
    await keys.find("a")
    keys.reload()
    assert server.calls == 1  # reload itself does no I/O
    await keys.find("a")
    assert server.calls == 2


@pytest.mark.parametrize("failure", ["error", "status", "not json", "no keys"])
async def test_no_keys_yet_and_the_fetch_fails_is_unavailable(clock: Clock, failure: str):
    server = KeyServer(jwk(new_key(), "a"))
    if failure == "error":
        server.error = HttpError("ConnectionRefusedError: refused")
    elif failure == "status":
        server.status = 500
    elif failure == "not json":
        server.body = b"<html>"
    else:
        server.keys = []
    keys = source(server, clock)
    with capture_logs() as logs, pytest.raises(KeysUnavailable):
        await keys.find("a")
    assert [e["event"] for e in logs] == ["auth.jwks_fetch_failed"]
    assert server.calls == 1
    clock.now += 5
    with pytest.raises(KeysUnavailable):
        await keys.find("a")
    assert server.calls == 1  # a server that is down is not asked per connection


async def test_a_failed_refresh_keeps_the_keys_held(clock: Clock):
    server = KeyServer(jwk(new_key(), "a"))
    keys = source(server, clock)
    await keys.find("a")
    server.error = HttpError("down")
    clock.now += 30
    with pytest.raises(KeysUnavailable):  # unknown kid, and we could not look
        await keys.find("b")
    assert await keys.find("a") is not None  # the known key still works
    server.error = None
    clock.now += 30
    assert await keys.find("a") is not None
    assert await keys.find("b") is None  # fetched fine: "b" really is unknown


async def test_a_fetch_that_hangs_times_out(clock: Clock):
    server = KeyServer(jwk(new_key(), "a"))
    server.gate = anyio.Event()  # never set
    keys = source(server, clock, timeout=0.05)
    with capture_logs() as logs, pytest.raises(KeysUnavailable):
        await keys.find("a")
    assert logs[0]["error"] == "TimeoutError"


# Through the authenticator…


def authenticator(keys: JwksUrl) -> JwtAuthenticator:
    return JwtAuthenticator(JwtAuthConfig(algorithms=("ES256",), jwks_url=URL), keys)


async def test_unknown_kid_then_refresh_finds_it(clock: Clock):
    server = KeyServer(jwk(new_key(), "old"))
    auth = authenticator(source(server, clock))
    rotated = new_key()
    token = jwt.encode({"sub": "bob"}, rotated, algorithm="ES256", headers={"kid": "new"})
    with pytest.raises(AuthFailed) as caught:
        await auth.authenticate(REQUEST, Credentials(token=token), "127.0.0.1")
    assert (caught.value.status, caught.value.reason) == (401, "unknown_key")
    server.keys.append(jwk(rotated, "new"))
    clock.now += 30
    identity = await auth.authenticate(REQUEST, Credentials(token=token), "127.0.0.1")
    assert identity.subject == "bob"


async def test_key_server_down_is_503_never_allowed(clock: Clock):
    server = KeyServer()
    server.error = HttpError("down")
    auth = authenticator(source(server, clock))
    token = jwt.encode({"sub": "bob"}, new_key(), algorithm="ES256", headers={"kid": "k"})
    with pytest.raises(AuthFailed) as caught:
        await auth.authenticate(REQUEST, Credentials(token=token), "127.0.0.1")
    assert (caught.value.status, caught.value.reason) == (503, "auth_unavailable")
