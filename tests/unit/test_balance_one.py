"""Balancer.candidates() with one backend takes a short way (no list, no sort): the same
answer as the general way, and the same turn of the rotation, under every policy and
state. The general way is what two backends, one of them gone from rotation, take."""

from __future__ import annotations

import itertools

import pytest

from wsproxy.config import BackendConfig
from wsproxy.core.balance import BackendState, Balancer, sticky_value

POLICIES = ("round_robin", "least_connections", "hash", "cookie")
#: (healthy, draining, held, removed)
STATES = list(itertools.product((True, False), repeat=4))


def backend(name: str, port: int) -> BackendState:
    return BackendState(BackendConfig.from_url(name=name, url=f"ws://127.0.0.1:{port}"))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("least_loaded", [False, True])
def test_one_backend_is_picked_as_the_general_way_picks_it(policy: str,
                                                           least_loaded: bool) -> None:
    for (healthy, draining, held, removed), key, sticky in itertools.product(
        STATES, (None, "k"), ((), ("stale",), (sticky_value("a"),)),
    ):
        only, twin, out = backend("a", 8001), backend("a", 8001), backend("z", 8002)
        for b in (only, twin):
            b.healthy, b.draining, b.held, b.removed = healthy, draining, held, removed
        out.healthy = False
        short, general = Balancer(policy, [only]), Balancer(policy, [twin, out])
        short.least_loaded = general.least_loaded = least_loaded
        for _ in range(3):
            picked = short.candidates(key, sticky)
            expected = general.candidates(key, sticky)
            assert [b.name for b in picked] == [b.name for b in expected]
            assert picked == ([only] if only.usable else [])
            assert short._turn == general._turn  # a backend added later: the same rotation


def test_a_second_backend_joins_the_rotation_where_it_stood() -> None:
    a, b = backend("a", 8001), backend("b", 8002)
    short, general = Balancer("round_robin", [a]), Balancer("round_robin", [a, b])
    b.healthy = False
    for _ in range(3):
        short.candidates()
        general.candidates()
    short.backends["b"] = b
    b.healthy = True
    assert [x.name for x in short.candidates()] == [x.name for x in general.candidates()]
