"""Frame arithmetic: close payloads, masking, the frames the proxy builds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import parse_frame
from wsproxy.core import frames
from wsproxy.core.closes import CloseCode
from wsproxy.core.frames import CloseFrameError


class TestParseClosePayload:
    def test_empty_payload_has_no_code(self) -> None:
        assert frames.parse_close_payload(b"") == (None, "")

    def test_code_and_reason(self) -> None:
        assert frames.parse_close_payload(b"\x03\xe8bye") == (1000, "bye")
        assert frames.parse_close_payload(b"\x0f\xa0") == (4000, "")

    def test_utf8_reason(self) -> None:
        reason = "au revoir, señor ✓"
        payload = (1001).to_bytes(2, "big") + reason.encode()
        assert frames.parse_close_payload(payload) == (1001, reason)

    def test_one_byte_payload_is_a_protocol_error(self) -> None:
        with pytest.raises(CloseFrameError) as info:
            frames.parse_close_payload(b"\x03")
        assert info.value.code == CloseCode.PROTOCOL_ERROR

    @pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
    def test_code_not_allowed_on_the_wire(self, code: int) -> None:
        with pytest.raises(CloseFrameError) as info:
            frames.parse_close_payload(code.to_bytes(2, "big") + b"x")
        assert info.value.code == CloseCode.PROTOCOL_ERROR

    def test_reason_not_utf8(self) -> None:
        with pytest.raises(CloseFrameError) as info:
            frames.parse_close_payload(b"\x03\xe8\xff\xfe")
        assert info.value.code == CloseCode.INVALID_FRAME_PAYLOAD_DATA

    def test_is_a_value_error(self) -> None:
        assert issubclass(CloseFrameError, ValueError)


class TestUnmask:
    def test_known_vector(self) -> None:
        # RFC 6455 §5.7: a masked "Hello".
        assert frames.unmask(b"\x7f\x9f\x4d\x51\x58", b"\x37\xfa\x21\x3d") == b"Hello"

    def test_empty(self) -> None:
        assert frames.unmask(b"", b"abcd") == b""

    @given(payload=st.binary(max_size=300), key=st.binary(min_size=4, max_size=4))
    def test_round_trip(self, payload: bytes, key: bytes) -> None:
        masked = frames.unmask(payload, key)
        assert len(masked) == len(payload)
        assert frames.unmask(masked, key) == payload

    @given(payload=st.binary(min_size=1, max_size=64), key=st.binary(min_size=4, max_size=4))
    def test_matches_bytewise_xor(self, payload: bytes, key: bytes) -> None:
        expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        assert frames.unmask(payload, key) == expected

    def test_leading_zero_bytes_are_kept(self) -> None:
        assert frames.unmask(b"\x00\x00\x01", b"\x00\x00\x00\x00") == b"\x00\x00\x01"
        assert frames.unmask(b"ab\x00", b"ab\x00\x00") == b"\x00\x00\x00"


class TestTruncateUtf8:
    def test_short_text_is_untouched(self) -> None:
        assert frames.truncate_utf8("abc", 10) == b"abc"

    def test_cut_on_a_character_boundary(self) -> None:
        assert frames.truncate_utf8("é" * 10, 5) == "é".encode() * 2
        assert frames.truncate_utf8("a€", 3) == b"a"

    @given(text=st.text(max_size=200), limit=st.integers(min_value=0, max_value=130))
    def test_always_valid_and_short_enough(self, text: str, limit: int) -> None:
        data = frames.truncate_utf8(text, limit)
        assert len(data) <= limit
        assert text.encode().startswith(data)
        data.decode("utf-8")  # never split a character


class TestBuildClose:
    @pytest.mark.parametrize("mask", [False, True])
    def test_round_trip(self, mask: bool) -> None:
        frame, _ = parse_frame(frames.build_close(1001, "drain", mask=mask))
        assert frame is not None
        assert frame.opcode == frames.CLOSE
        assert frame.fin
        assert frame.masked is mask
        assert frame.close == (1001, "drain")

    def test_no_code(self) -> None:
        assert frames.build_close(None, mask=False) == b"\x88\x00"

    @pytest.mark.parametrize("char", ["a", "é", "€", "🙂"])
    def test_long_reason_cut_on_a_utf8_boundary(self, char: str) -> None:
        data = frames.build_close(1000, char * 200, mask=True)
        frame, used = parse_frame(data)
        assert frame is not None
        assert used == len(data)
        assert len(frame.payload) <= frames.MAX_CONTROL_PAYLOAD
        code, reason = frame.close  # decodes: the cut is on a character boundary
        assert code == 1000
        assert len(reason.encode()) <= frames.MAX_CLOSE_REASON == 123
        assert len(reason.encode()) > 123 - len(char.encode())
        assert set(reason) == {char}

    @given(reason=st.text(max_size=150), mask=st.booleans())
    def test_always_a_valid_control_frame(self, reason: str, mask: bool) -> None:
        frame, _ = parse_frame(frames.build_close(4000, reason, mask=mask))
        assert frame is not None
        assert len(frame.payload) <= 125
        code, got = frame.close
        assert code == 4000
        assert reason.startswith(got)


class TestBuildFrame:
    @pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
    @pytest.mark.parametrize("mask", [False, True])
    def test_lengths(self, size: int, mask: bool) -> None:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        data = frames.build_frame(frames.BINARY, payload, mask=mask)
        frame, used = parse_frame(data)
        assert frame is not None
        assert used == len(data)
        assert (frame.opcode, frame.fin, frame.rsv, frame.masked) == (frames.BINARY, True, 0, mask)
        assert frame.payload == payload
