"""Session's table of bare close payloads (a code, no reason) says what
frames.parse_close_payload says of them: every two-byte payload either is not in the
table or is parsed to the same (code, reason), of the same types."""

from __future__ import annotations

import pytest

from wsproxy.core.frames import CloseFrameError, parse_close_payload
from wsproxy.core.session import _BARE_CLOSES


def test_every_two_byte_payload() -> None:
    for n in range(1 << 16):
        payload = n.to_bytes(2, "big")
        try:
            parsed = parse_close_payload(payload)
        except CloseFrameError:
            assert payload not in _BARE_CLOSES
            continue
        table = _BARE_CLOSES.get(payload)
        if table is not None:
            assert table == parsed
            assert [type(v) for v in table] == [type(v) for v in parsed]
    assert len(_BARE_CLOSES) == 12  # 1000-1003, 1007-1014


@pytest.mark.parametrize("payload", [b"", b"\x03", b"\x03\xe8a", b"\x03\xe8\xff"])
def test_other_payloads_are_not_in_it(payload: bytes) -> None:
    assert payload not in _BARE_CLOSES
