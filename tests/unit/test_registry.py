"""The connection limits' bookkeeping: admitted upgrades and TLS handshakes."""

from __future__ import annotations

from wsproxy.core.registry import Registry

TOTAL = "too many connections"
PER_IP = "too many connections from this address"


def test_handshakes_count_in_the_total() -> None:
    registry: Registry[object] = Registry(max_connections=2, max_per_ip=0)
    assert registry.handshake_started("10.0.0.1") is None
    assert registry.handshake_started("10.0.0.2") is None
    assert registry.handshake_started("10.0.0.3") == TOTAL
    assert registry.admit("c1", "10.0.0.4") == TOTAL
    registry.handshake_ended("10.0.0.1")
    assert registry.admit("c1", "10.0.0.4") is None
    assert registry.handshake_started("10.0.0.5") == TOTAL
    assert registry.handshakes == 1


def test_handshakes_and_admitted_upgrades_share_the_per_ip_count() -> None:
    registry: Registry[object] = Registry(max_connections=100, max_per_ip=2)
    assert registry.admit("c1", "10.0.0.1") is None
    assert registry.handshake_started("10.0.0.1") is None
    assert registry.handshake_started("10.0.0.1") == PER_IP
    assert registry.admit("c2", "10.0.0.1") == PER_IP
    assert registry.handshake_started("10.0.0.2") is None  # another address
    registry.handshake_ended("10.0.0.1")
    assert registry.admit("c2", "10.0.0.1") is None
    registry.remove("c1")
    registry.remove("c2")
    registry.handshake_ended("10.0.0.2")
    assert registry.handshakes == 0
    # Nothing left over: a full quota is available again at both addresses.
    for ip in ("10.0.0.1", "10.0.0.2"):
        assert registry.handshake_started(ip) is None
        assert registry.handshake_started(ip) is None
        assert registry.handshake_started(ip) == PER_IP


def test_a_handshake_without_an_address_counts_in_the_total_only() -> None:
    registry: Registry[object] = Registry(max_connections=3, max_per_ip=1)
    assert registry.handshake_started(None) is None
    assert registry.handshake_started(None) is None  # a trusted proxy's: no per-IP limit
    assert registry.admit("c1", "10.0.0.1") is None
    assert registry.handshake_started(None) == TOTAL
    registry.handshake_ended(None)
    registry.handshake_ended(None)
    assert registry.handshakes == 0
    assert registry.admit("c2", "10.0.0.1") == PER_IP


def test_a_resumed_session_takes_over_its_resume_attempts_slot() -> None:
    registry: Registry[object] = Registry(max_connections=2, max_per_ip=1)
    assert registry.admit("held", "10.0.0.1") is None
    assert registry.admit("resume", "10.0.0.2") is None
    registry.take_over("held", "resume")
    registry.remove("resume")  # the attempt ends: nothing of it is counted any more
    assert registry.admit("c1", "10.0.0.1") is None  # the first address is free again
    assert registry.admit("c2", "10.0.0.2") == TOTAL
    registry.remove("c1")
    assert registry.admit("c2", "10.0.0.2") == PER_IP  # the session counts there now
    registry.remove("held")
    assert registry.admit("c2", "10.0.0.2") is None
    registry.take_over("c2", "gone")  # an attempt not counted: nothing changes
    assert registry.admit("c3", "10.0.0.2") == PER_IP


def test_a_resume_shares_its_sessions_slot_until_it_takes_it_over() -> None:
    registry: Registry[object] = Registry(max_connections=1, max_per_ip=1)
    assert registry.admit("held", "10.0.0.1") is None
    assert registry.admit("other", "10.0.0.2") == TOTAL
    # From the address it left, at both limits: in, in the session's slot…
    assert registry.admit("resume", "10.0.0.1", in_place_of="held") is None
    # …one attempt at a time: a second one is counted as any other.
    assert registry.admit("resume2", "10.0.0.1", in_place_of="held") == TOTAL
    registry.take_over("held", "resume")
    registry.remove("resume")
    assert registry.admit("again", "10.0.0.1", in_place_of="held") is None  # its turn now
    registry.remove("again")
    assert registry.admit("other", "10.0.0.2") == TOTAL  # the session still counts, once
    registry.remove("held")
    assert registry.admit("other", "10.0.0.2") is None


def test_a_resume_from_another_address_moves_the_slot_there() -> None:
    registry: Registry[object] = Registry(max_connections=3, max_per_ip=1)
    assert registry.admit("held", "10.0.0.1") is None
    assert registry.admit("busy", "10.0.0.2") is None
    assert registry.admit("resume", "10.0.0.2", in_place_of="held") == PER_IP
    assert registry.admit("resume", "10.0.0.3", in_place_of="held") is None
    registry.take_over("held", "resume")
    registry.remove("resume")
    assert registry.admit("c1", "10.0.0.1") is None  # the address it left is free
    assert registry.admit("c2", "10.0.0.3") == TOTAL
    registry.remove("c1")
    assert registry.admit("c2", "10.0.0.3") == PER_IP  # it counts where it is now


def test_a_failed_resume_or_an_ended_session_leaves_nothing_counted() -> None:
    registry: Registry[object] = Registry(max_connections=2, max_per_ip=0)
    assert registry.admit("held", "10.0.0.1") is None
    assert registry.admit("resume", "10.0.0.1", in_place_of="held") is None
    registry.remove("resume")  # refused by auth, say: the session keeps its slot
    assert registry.admit("c1", "10.0.0.1") is None
    assert registry.admit("c2", "10.0.0.1") == TOTAL
    assert registry.admit("resume", "10.0.0.1", in_place_of="held") is None
    registry.remove("held")  # its window passed meanwhile
    registry.take_over("held", "resume")
    registry.remove("resume")
    registry.remove("c1")
    assert [registry.admit(c, "10.0.0.1") for c in ("c3", "c4")] == [None, None]
    assert registry.admit("c5", "10.0.0.1") == TOTAL
