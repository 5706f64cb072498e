"""The close codes and the proxy's own closes (wsproxy.core.closes)."""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import CloseReason

from wsproxy.core import closes
from wsproxy.core.closes import CloseCode, ProxyClose, is_sendable
from wsproxy.core.frames import MAX_CLOSE_REASON

#: Every (code, reason) the proxy sends on its own behalf with a fixed code.
FIXED = [v for v in vars(closes).values() if isinstance(v, ProxyClose)]
#: The reasons of those whose code comes from the config.
CONFIGURED = [closes.PROXY_DRAINING, closes.BACKEND_DRAINING, closes.BACKEND_RESTARTING,
              closes.AGE_LIMIT, closes.PROXY_STOPPED]


@pytest.mark.parametrize(
    ("code", "sendable"),
    [
        (999, False),
        (1000, True),
        (1001, True),
        (1002, True),
        (1003, True),
        (1004, False),  # reserved
        (1005, False),  # local only: no status
        (1006, False),  # local only: abnormal closure
        (1007, True),
        (1008, True),
        (1009, True),
        (1010, True),
        (1011, True),
        (1012, True),
        (1013, True),
        (1014, True),
        (1015, False),  # local only: TLS handshake
        (1016, False),
        (2999, False),
        (3000, True),
        (3999, True),
        (4000, True),
        (4999, True),
        (5000, False),
        (0, False),
        (65535, False),
    ],
)
def test_is_sendable(code: int, sendable: bool) -> None:
    assert is_sendable(code) is sendable


def test_the_codes_are_wsprotos_and_more() -> None:
    assert {reason.value for reason in CloseReason} <= set(CloseCode)
    assert CloseCode.BAD_GATEWAY == 1014


def test_registered_codes_are_the_sendable_ones() -> None:
    assert sorted(closes.REGISTERED) == [*range(1000, 1004), *range(1007, 1015)]


@pytest.mark.parametrize("close", FIXED, ids=lambda c: c.reason)
def test_proxy_closes_can_go_on_the_wire(close: ProxyClose) -> None:
    assert is_sendable(close.code)
    assert isinstance(close.code, CloseCode)
    # Whole, with the longest reconnect hint ("; retry-after-ms=1000") appended.
    assert len((close.reason + "; retry-after-ms=1000").encode()) <= MAX_CLOSE_REASON


@pytest.mark.parametrize("reason", CONFIGURED)
def test_configured_closes_reasons_fit_with_a_hint(reason: str) -> None:
    assert len((reason + "; retry-after-ms=1000").encode()) <= MAX_CLOSE_REASON


@pytest.mark.parametrize(
    ("code", "allowed"),
    [(1000, True), (1001, True), (1002, False), (1008, True), (1011, True), (1013, True),
     (1014, False), (2999, False), (3000, True), (4999, True), (5000, False)],
)
def test_admin_codes(code: int, allowed: bool) -> None:
    assert closes.is_admin_code(code) is allowed
