"""What the workers of ``workers: N`` count together, in memory shared with the parent.

One memfd, made by the parent and inherited by every worker (``--counts-fd``):

- per worker, its connections, open or opening (``setter``): what a worker that dies
  cuts, which the parent reports;
- per worker, what it counts against ``limits.max_connections`` (``SharedPool``);
- per worker, a hash table of its count by client address, for
  ``limits.max_connections_per_ip``: open addressing with linear probing, keyed by
  64 bits of BLAKE2b of the address (the same in every process, unlike ``hash()``).

A worker writes only its own slots and table; every worker reads all of them. The
reads that decide an admission and the writes that publish it happen under one POSIX
record lock on the memfd (``lockf``: one holder among the processes, released by the
kernel if its holder dies), so two workers never both take the last slot, and no
reader sees a table halfway through a deletion. The parent clears a dead worker's
slots and table (``take``) under the same lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Callable, Mapping
from typing import Final

from wsproxy.log import get_logger

log = get_logger()

_SLOT: Final = struct.Struct("<q")
#: A table entry: the address's key (0: free) and this worker's count under it.
_ENTRY: Final = struct.Struct("<Qq")
#: The smallest table; it is sized for twice the startup ``max_connections``, so that
#: it is at most half full while the limit holds (a worker's addresses are at most its
#: connections), which keeps the probes short.
MIN_TABLE: Final = 1024


def table_size(max_connections: int) -> int:
    """The entries of each worker's table: a power of two, at least twice *max_connections*."""
    return max(MIN_TABLE, 1 << (2 * max_connections - 1).bit_length())


def address_key(ip: str) -> int:
    """The table key of *ip*: never 0, the same in every process."""
    key = int.from_bytes(hashlib.blake2b(ip.encode(), digest_size=8).digest(), "little")
    return key or 1


class SharedCounts:
    """The memfd and its layout: *count* workers, *entries* per address table."""

    def __init__(self, count: int, entries: int = MIN_TABLE, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("wsproxy-workers")  # close-on-exec: only pass_fds hands it on
            os.ftruncate(fd, _SLOT.size * 2 * count + _ENTRY.size * entries * count)
        else:  # a worker: the size tells the table's
            entries = (os.fstat(fd).st_size - _SLOT.size * 2 * count) // (_ENTRY.size * count)
        if entries < 1 or entries & (entries - 1):
            raise ValueError(f"a table of {entries} entries: not a power of two")
        self.fd = fd
        self.count = count
        self.entries = entries
        self.memory = mmap.mmap(fd, _SLOT.size * 2 * count + _ENTRY.size * entries * count)

    def connections_offset(self, index: int) -> int:
        return index * _SLOT.size

    def held_offset(self, index: int) -> int:
        return (self.count + index) * _SLOT.size

    def table_offset(self, index: int) -> int:
        return _SLOT.size * 2 * self.count + index * _ENTRY.size * self.entries

    def setter(self, index: int) -> Callable[[int], None]:
        """What worker *index* calls with its number of connections."""
        memory, offset, pack = self.memory, self.connections_offset(index), _SLOT.pack_into
        return lambda value: pack(memory, offset, value)

    def pool(self, index: int) -> SharedPool:
        """Worker *index*'s side of the limits shared by all the workers."""
        return SharedPool(self, index)

    def lock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def take(self, index: int) -> int:
        """Worker *index*'s last number of connections, and everything it counted
        back to nothing (it has exited)."""
        (value,) = _SLOT.unpack_from(self.memory, self.connections_offset(index))
        self.lock()
        try:
            _SLOT.pack_into(self.memory, self.connections_offset(index), 0)
            _SLOT.pack_into(self.memory, self.held_offset(index), 0)
            start = self.table_offset(index)
            self.memory[start:start + _ENTRY.size * self.entries] = bytes(
                _ENTRY.size * self.entries)
        finally:
            self.unlock()
        return int(value)


class SharedPool:
    """Worker *index*'s side of the shared limits (core.registry.Pool)."""

    def __init__(self, counts: SharedCounts, index: int) -> None:
        self.counts = counts
        self.lock = counts.lock
        self.unlock = counts.unlock
        self._memory = counts.memory
        self._held = counts.held_offset(index)
        self._held_row = struct.Struct(f"<{counts.count}q")
        self._held_start = counts.held_offset(0)
        self._table = counts.table_offset(index)
        self._others = [counts.table_offset(w) for w in range(counts.count) if w != index]
        self._mask = counts.entries - 1
        #: Whether a full table was logged (once: it means a reload raised
        #: max_connections past half of what the table was sized for at startup).
        self._full_logged = False

    def others(self) -> int:
        everyone = sum(self._held_row.unpack_from(self._memory, self._held_start))
        (mine,) = _SLOT.unpack_from(self._memory, self._held)
        return int(everyone - mine)

    def others_at(self, ip: str) -> int:
        key = address_key(ip)
        return sum(self._find(table, key)[1] for table in self._others)

    def publish(self, held: int, addresses: Mapping[str, int]) -> None:
        _SLOT.pack_into(self._memory, self._held, held)
        for ip, count in addresses.items():
            self._set(address_key(ip), count)

    def publish_all(self, per_ip: Mapping[str, int]) -> None:
        size = _ENTRY.size * (self._mask + 1)
        self._memory[self._table:self._table + size] = bytes(size)
        for ip, count in per_ip.items():
            self._set(address_key(ip), count)

    # The table …

    def _find(self, table: int, key: int) -> tuple[int, int]:
        """The entry of *key* in *table* (or the free one where it would go) and its
        count (0 if absent); the entry is -1 if the table is full without it."""
        memory, mask, unpack = self._memory, self._mask, _ENTRY.unpack_from
        i = key & mask
        for _ in range(mask + 1):
            found, count = unpack(memory, table + i * _ENTRY.size)
            if found == key:
                return i, count
            if not found:
                return i, 0
            i = (i + 1) & mask
        return -1, 0

    def _set(self, key: int, count: int) -> None:
        """This worker's count under *key*: written, inserted, or deleted (0)."""
        table = self._table
        i, _ = self._find(table, key)
        if i < 0:
            if count and not self._full_logged:
                self._full_logged = True
                log.warning("limits.address_table_full", entries=self._mask + 1,
                            note="this worker's addresses past it count here only")
            return
        (found, _) = _ENTRY.unpack_from(self._memory, table + i * _ENTRY.size)
        if count:
            _ENTRY.pack_into(self._memory, table + i * _ENTRY.size, key, count)
        elif found:
            self._delete(i)

    def _delete(self, hole: int) -> None:
        """Empty entry *hole*, moving back the entries after it that would no longer
        be found past the hole (linear probing's deletion; no tombstones)."""
        memory, mask, table, size = self._memory, self._mask, self._table, _ENTRY.size
        _ENTRY.pack_into(memory, table + hole * size, 0, 0)
        j = hole
        while True:  # ends at a free entry: there is one, the hole
            j = (j + 1) & mask
            key, count = _ENTRY.unpack_from(memory, table + j * size)
            if not key:
                return
            home = key & mask
            # The entry at j may fill the hole if the hole lies on its probe path,
            # between its home and j.
            if (j - home) & mask >= (j - hole) & mask:
                _ENTRY.pack_into(memory, table + hole * size, key, count)
                _ENTRY.pack_into(memory, table + j * size, 0, 0)
                hole = j
