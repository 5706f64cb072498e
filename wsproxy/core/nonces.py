"""Random bytes for an upgrade's nonces, from one ``os.urandom`` read for many.

An upgrade needs two: its connection id (6 bytes) and the Sec-WebSocket-Key of the
proxy's handshake with the backend (16 bytes, RFC 6455 §4.1: "randomly selected").
A system call each was two of an upgrade's; ``random_bytes()`` slices them off a
batch read once per ~70 upgrades.

Why the keys stay unpredictable: every byte still comes from the kernel's CSPRNG
(what ``os.urandom`` and ``secrets`` read), and each is handed out once, as read,
never derived from another. Seeing any number of earlier ids and keys tells nothing
about the next (the CSPRNG's outputs are independent); the only difference is that
up to a batch of future bytes sits in this process's memory, where whoever can read
it can read the live keys anyway. A child made by ``fork()`` drops the batch it
inherited (``os.register_at_fork``), so no two processes hand out the same bytes.

Not thread-safe: for the event loop's thread (connections are made there only).
"""

from __future__ import annotations

import os
from typing import Final

#: Bytes read at a time: ~70 upgrades' worth (22 bytes each).
BATCH: Final = 1536

_batch = b""
_at = 0


def random_bytes(n: int) -> bytes:
    """*n* bytes (at most BATCH) from the kernel's CSPRNG, none ever handed out twice."""
    global _batch, _at
    at = _at
    end = at + n
    if end > len(_batch):
        _batch = os.urandom(BATCH)
        at, end = 0, n
    _at = end
    return _batch[at:end]


def _forget() -> None:
    """In a forked child: the parent's batch is the parent's alone."""
    global _batch, _at
    _batch, _at = b"", 0


os.register_at_fork(after_in_child=_forget)
