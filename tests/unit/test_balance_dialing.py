"""least_connections counts the upgrades being dialled, not only the open connections.

A reconnect wave (a drain, a rebalancing round) sends many upgrades within one dial's
time: counting only open connections, each of them saw the same emptiest backend and
they all went there (a rebalancing round then had to move some of them again).
"""

from __future__ import annotations

from wsproxy.config import BackendConfig
from wsproxy.core.balance import BackendState, Balancer


def states(*names: str) -> list[BackendState]:
    return [BackendState(BackendConfig.from_url(name=n, url=f"ws://127.0.0.1:{9000 + i}"))
            for i, n in enumerate(names)]


def pick(balancer: Balancer) -> BackendState:
    """One upgrade: the best candidate, now being dialled."""
    best = balancer.candidates()[0]
    best.dialing += 1
    return best


def test_a_burst_of_upgrades_is_spread_while_they_are_dialled() -> None:
    a, b, c = states("a", "b", "c")
    a.active = 10
    balancer = Balancer("least_connections", [a, b, c])
    picked = [pick(balancer).name for _ in range(10)]
    # b and c fill up turn by turn; a, already at 10, gets none of the first ten.
    assert sorted(picked) == ["b"] * 5 + ["c"] * 5


def test_a_settled_dial_counts_as_what_it_became() -> None:
    a, b = states("a", "b")
    balancer = Balancer("least_connections", [a, b])
    first = pick(balancer)
    first.dialing -= 1  # it failed: nothing left of it
    assert first.active == first.dialing == 0
    second = pick(balancer)
    second.dialing -= 1
    second.active += 1  # it opened
    assert balancer.candidates()[0] is not second
