"""The pure parts of DNS discovery: names, URLs, the resolver setting, set changes."""

from __future__ import annotations

import pytest

from wsproxy.control.discovery import (
    backend_name,
    changes,
    discovered_backend,
    is_srv_name,
    make_resolver,
    parse_resolver,
    service_name,
)


@pytest.mark.parametrize(
    ("address", "port", "name"),
    [
        ("10.0.0.1", 8000, "10.0.0.1:8000"),
        ("fd00::1", 8000, "[fd00::1]:8000"),
        ("FD00:0:0:0:0:0:0:1", 443, "[fd00::1]:443"),  # canonical: one name per address
        ("::ffff:10.0.0.1", 80, "[::ffff:a00:1]:80"),
    ],
)
def test_backend_name_is_the_canonical_address(address: str, port: int, name: str) -> None:
    assert backend_name(address, port) == name


def test_backend_name_refuses_what_is_not_an_address() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        backend_name("app.local", 80)


def test_discovered_backend_ipv4() -> None:
    b = discovered_backend("10.0.0.1", 8000, "ws")
    assert (b.name, b.url, b.scheme, b.host, b.port, b.path) == (
        "10.0.0.1:8000", "ws://10.0.0.1:8000", "ws", "10.0.0.1", 8000, ""
    )


def test_discovered_backend_ipv6_wss() -> None:
    b = discovered_backend("fd00::1", 8443, "wss")
    assert (b.name, b.url, b.scheme, b.host, b.port) == (
        "[fd00::1]:8443", "wss://[fd00::1]:8443", "wss", "fd00::1", 8443
    )


def test_same_address_same_config() -> None:
    """set_discovered compares configs: an unchanged address must compare equal."""
    assert discovered_backend("10.0.0.1", 80, "ws") == discovered_backend("10.0.0.1", 80, "ws")
    assert discovered_backend("10.0.0.1", 80, "ws") != discovered_backend("10.0.0.1", 80, "wss")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("app.default.svc.cluster.local", "app.default.svc.cluster.local"),
        ("app.default.svc.cluster.local.", "app.default.svc.cluster.local"),
        ("_ws._tcp.app.default.svc.cluster.local", "app.default.svc.cluster.local"),
        ("_ws._tcp.app.test.", "app.test"),
        ("_only", "_only"),  # nothing left to strip to
    ],
)
def test_service_name_is_what_a_certificate_carries(name: str, expected: str) -> None:
    assert service_name(name) == expected


def test_srv_names_start_with_an_underscore() -> None:
    assert is_srv_name("_ws._tcp.app.test")
    assert not is_srv_name("app.test")
    assert not is_srv_name("a_b.test")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.10", ("10.0.0.10", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[fd00::a]:5353", ("fd00::a", 5353)),
        ("[fd00::a]", ("fd00::a", 53)),
        ("fd00::a", ("fd00::a", 53)),
    ],
)
def test_parse_resolver(text: str, expected: tuple[str, int]) -> None:
    assert parse_resolver(text) == expected


def test_make_resolver_points_at_the_given_server() -> None:
    resolver = make_resolver("127.0.0.1:5353", 2.0)
    assert resolver.nameservers == ["127.0.0.1"]
    assert resolver.port == 5353
    assert resolver.lifetime == 2.0
    assert resolver.timeout == 1.0  # one retry of a lost datagram within the bound
    assert resolver.edns == 0
    assert resolver.payload == 1232


@pytest.mark.parametrize(
    ("old", "new", "added", "removed"),
    [
        ((), ("a", "b"), ["a", "b"], []),
        (("a", "b"), ("b", "c"), ["c"], ["a"]),
        (("a", "b"), ("b", "a"), [], []),
        (("b", "a"), ("c",), ["c"], ["a", "b"]),
    ],
)
def test_changes(
    old: tuple[str, ...], new: tuple[str, ...], added: list[str], removed: list[str]
) -> None:
    assert changes(old, new) == (added, removed)
