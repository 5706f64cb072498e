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
