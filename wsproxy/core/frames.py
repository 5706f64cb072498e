"""RFC 6455 frame arithmetic: header constants, close payloads, frames we build.

The relay never decodes data frames: it reads headers in place and skips payloads by
arithmetic (wsproxy.core.session). This module holds the pieces that are not the hot
loop: the rules for control frames and close payloads, and builders for the few
frames the proxy writes itself (its pings, its closes). The close codes live in
wsproxy.core.closes.
"""

from __future__ import annotations

import os
from typing import Final

from wsproxy.core.closes import CloseCode, is_sendable

# Opcodes (RFC 6455 §5.2).
CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

FIN: Final = 0x80
RSV_BITS: Final = 0x70
RSV1: Final = 0x40
MASK_BIT: Final = 0x80

#: Control frames carry at most 125 payload bytes (§5.5).
MAX_CONTROL_PAYLOAD: Final = 125
#: A close reason fits in what is left of a control payload after the code.
MAX_CLOSE_REASON: Final = MAX_CONTROL_PAYLOAD - 2

class CloseFrameError(ValueError):
    """A close payload that breaks §5.5.1; ``code`` is what to fail the leg with."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def parse_close_payload(payload: bytes) -> tuple[int | None, str]:
    """Read a close frame's (code, reason); (None, "") for an empty payload.

    Raises:
        CloseFrameError: a one-byte payload or a code not allowed on the wire
            (1002), or a reason that is not UTF-8 (1007).
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise CloseFrameError(CloseCode.PROTOCOL_ERROR, "close payload of one byte")
    code = int.from_bytes(payload[:2], "big")
    if not is_sendable(code):
        raise CloseFrameError(CloseCode.PROTOCOL_ERROR, f"close code {code} is not allowed")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise CloseFrameError(
            CloseCode.INVALID_FRAME_PAYLOAD_DATA, "close reason is not UTF-8"
        ) from None
    return code, reason


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR *payload* with the 4-byte masking *key* (§5.3). Meant for small payloads."""
    if not payload:
        return payload
    # int XOR over the whole payload beats a per-byte loop by an order of magnitude.
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    n = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return n.to_bytes(len(payload), "big")


def build_frame(opcode: int, payload: bytes = b"", *, mask: bool) -> bytes:
    """One final frame. *mask* is True towards a backend (we are its client, §5.1)."""
    length = len(payload)
    if length < 126:
        head = bytes((FIN | opcode, (MASK_BIT if mask else 0) | length))
    elif length < 1 << 16:
        head = bytes((FIN | opcode, (MASK_BIT if mask else 0) | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((FIN | opcode, (MASK_BIT if mask else 0) | 127)) + length.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(payload, key)


def truncate_utf8(text: str, limit: int) -> bytes:
    """Encode *text* in at most *limit* bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def build_close(code: int | None, reason: str = "", *, mask: bool) -> bytes:
    """A close frame; the reason is cut to fit in a control frame."""
    if code is None:
        return build_frame(CLOSE, b"", mask=mask)
    payload = code.to_bytes(2, "big") + truncate_utf8(reason, MAX_CLOSE_REASON)
    return build_frame(CLOSE, payload, mask=mask)


def deflate_bound(size: int) -> int:
    """The most wire bytes a message of *size* bytes takes under permessage-deflate.

    Deflate makes what it cannot compress longer. The bound is zlib's own worst case
    for any parameters (deflateBound() in deflate.c, raw deflate), since each peer
    picks its memLevel and window (RFC 7692 §7.1.2) and the proxy sees neither:

    - stored blocks: 5 bytes of header per block, and a block can be as short as 127
      bytes (memLevel 1): about 4%. One header per 16383 bytes (0.03%) holds for
      zlib's defaults only (memLevel 8, 15-bit window); websockets' memLevel 5 makes
      blocks of 2047 bytes.
    - fixed-Huffman blocks: with a window no larger than the symbol buffer (window
      bits <= memLevel + 7), a block's bytes may have left the window, so it cannot be
      stored; a fixed block costs 9 bits a byte plus 10 bits a block of 255 or more
      bytes: about 13%. (Measured on random bytes with zlib 1.2.13: 5.1% with memLevel
      4 and a 9-bit window, over the 4% above.)

    Plus 2 bytes for the end of a message (RFC 7692 §7.2.1): the sync flush's empty
    stored block, whose LEN/NLEN (00 00 ff ff) the sender removes, still leaves its
    3 header bits and filler to a byte boundary.
    """
    fixed = size + (size >> 3) + (size >> 8) + (size >> 9) + 4
    stored = size + (size >> 5) + (size >> 7) + (size >> 11) + 7
    return max(fixed, stored) + 2
