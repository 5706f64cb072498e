"""wsproxy.core.nonces: bytes sliced off one urandom read, each handed out once."""

from __future__ import annotations

import os
from itertools import count

import pytest

from wsproxy.core import nonces


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """os.urandom replaced by batches of a running count (reads are counted)."""
    reads: list[int] = []
    numbers = count()

    def urandom(n: int) -> bytes:
        reads.append(n)
        return bytes(next(numbers) % 256 for _ in range(n))

    monkeypatch.setattr(nonces.os, "urandom", urandom)
    monkeypatch.setattr(nonces, "_batch", b"")
    monkeypatch.setattr(nonces, "_at", 0)
    return reads


def test_slices_follow_each_other_without_overlap(counted: list[int]) -> None:
    handed = b"".join(nonces.random_bytes(n) for n in (6, 16, 6, 16))
    assert handed == bytes(range(44))
    assert counted == [nonces.BATCH]


def test_a_slice_that_does_not_fit_starts_a_new_batch(counted: list[int]) -> None:
    taken = 0
    while taken + 16 <= nonces.BATCH:
        assert len(nonces.random_bytes(16)) == 16
        taken += 16
    last = nonces.random_bytes(16)  # the rest of the first batch is too short
    assert len(last) == 16
    assert counted == [nonces.BATCH, nonces.BATCH]
    assert last == bytes(i % 256 for i in range(nonces.BATCH, nonces.BATCH + 16))


def test_keys_and_ids_are_fresh_from_the_real_source() -> None:
    seen = {nonces.random_bytes(16) for _ in range(1000)}
    assert len(seen) == 1000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_does_not_hand_out_its_parents_bytes() -> None:
    nonces.random_bytes(6)  # a batch is there to inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes, to the parent
        try:
            os.write(write, nonces.random_bytes(16))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != nonces.random_bytes(16)
