"""The connection limits over the workers: SharedRegistry on a SharedPool
(wsproxy.io.shared_counts), several workers' registries in one process here, each
with its own side of one shared memory, as worker processes have."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from wsproxy.core.registry import SharedRegistry
from wsproxy.io.shared_counts import SharedCounts, table_size

TOTAL = "too many connections"
PER_IP = "too many connections from this address"


def workers(count: int, max_connections: int, max_per_ip: int = 0, entries: int = 1024
            ) -> tuple[SharedCounts, list[SharedRegistry[object]]]:
    counts = SharedCounts(count, entries)
    return counts, [SharedRegistry(max_connections=max_connections, max_per_ip=max_per_ip,
                                   pool=counts.pool(index)) for index in range(count)]


def test_every_workers_connections_count_in_the_proxys_limit() -> None:
    _, (first, second) = workers(2, max_connections=3)
    assert [first.admit(c, "10.0.0.1") for c in ("a", "b")] == [None, None]
    assert second.handshake_started("10.0.0.2") is None
    assert second.admit("c", "10.0.0.3") == TOTAL
    assert first.admit("c", "10.0.0.3") == TOTAL
    second.handshake_ended("10.0.0.2")  # a slot back, for whichever worker asks
    assert first.admit("c", "10.0.0.3") is None
    first.remove("a")
    assert second.admit("d", "10.0.0.4") is None
    assert second.admit("e", "10.0.0.5") == TOTAL


def test_every_workers_connections_count_in_an_addresss_limit() -> None:
    _, (first, second, third) = workers(3, max_connections=100, max_per_ip=2)
    assert first.admit("a", "10.0.0.1") is None
    assert second.handshake_started("10.0.0.1") is None  # a TLS handshake counts too
    assert [r.admit("b", "10.0.0.1") for r in (first, second, third)] == [PER_IP] * 3
    assert third.admit("b", "10.0.0.2") is None  # another address
    second.handshake_ended("10.0.0.1")
    assert third.admit("c", "10.0.0.1") is None
    assert first.admit("d", "10.0.0.1") == PER_IP
    first.remove("a")
    assert second.admit("d", "10.0.0.1") is None


def test_a_resume_shares_its_sessions_slot_and_moves_it_to_its_address() -> None:
    _, (first, second) = workers(2, max_connections=2, max_per_ip=1)
    assert first.admit("held", "10.0.0.1") is None
    assert second.admit("busy", "10.0.0.2") is None
    assert first.admit("resume", "10.0.0.1", in_place_of="held") is None  # at both limits
    first.remove("resume")
    assert first.admit("resume", "10.0.0.3", in_place_of="held") is None
    first.take_over("held", "resume")
    first.remove("resume")
    assert second.admit("c", "10.0.0.4") == TOTAL  # the session still counts, once
    first.remove("busy")  # not first's: nothing changes
    second.remove("busy")
    assert second.admit("c", "10.0.0.3") == PER_IP  # it counts where it is now
    assert second.admit("c", "10.0.0.1") is None  # the address it left is free


def test_an_address_limit_turned_on_by_a_reload_counts_what_is_open() -> None:
    _, (first, second) = workers(2, max_connections=100)
    assert [first.admit(c, "10.0.0.1") for c in ("a", "b")] == [None, None]
    reload(2, first, second)
    assert second.admit("c", "10.0.0.1") == PER_IP  # first's a and b
    first.remove("b")
    assert second.admit("c", "10.0.0.1") is None
    reload(0, first, second)  # and off again: withdrawn
    assert second.admit("d", "10.0.0.1") is None
    reload(1, first, second)
    assert first.admit("e", "10.0.0.2") is None
    assert first.admit("f", "10.0.0.1") == PER_IP  # what both hold there


def reload(max_per_ip: int, *registries: SharedRegistry[object]) -> None:
    for registry in registries:
        registry.max_per_ip = max_per_ip
        registry.limits_changed()


def test_a_dead_workers_counts_are_cleared_by_the_parent() -> None:
    counts, (first, second) = workers(2, max_connections=3, max_per_ip=2)
    assert [second.admit(c, "10.0.0.1") for c in ("a", "b")] == [None, None]
    assert first.admit("c", "10.0.0.1") == PER_IP
    counts.take(1)  # the parent, once worker 1 has exited
    assert [first.admit(c, "10.0.0.1") for c in ("c", "d")] == [None, None]
    assert first.admit("e", "10.0.0.2") is None
    assert first.admit("f", "10.0.0.3") == TOTAL


def test_the_table_is_sized_for_twice_the_limit() -> None:
    assert table_size(1) == 1024
    assert table_size(10000) == 32768
    assert table_size(16384) == 32768


ADDRESSES = [f"10.0.0.{n}" for n in range(12)]


@given(st.lists(st.tuples(st.sampled_from(ADDRESSES), st.integers(0, 3)), max_size=80))
def test_an_address_table_holds_what_was_published(changes: list[tuple[str, int]]) -> None:
    """A table of 16 entries, 12 addresses (many collide): after any series of
    counts set and cleared, each address reads as last published."""
    counts = SharedCounts(2, entries=16)
    writer, reader = counts.pool(0), counts.pool(1)
    model: dict[str, int] = {}
    for ip, count in changes:
        writer.publish(0, {ip: count})
        model[ip] = count
        assert {a: reader.others_at(a) for a in ADDRESSES} == {
            a: model.get(a, 0) for a in ADDRESSES}


HOLDER = """
import fcntl, os, struct, sys
fd = int(sys.argv[1])
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
os.pwrite(fd, struct.pack("<q", 2), int(sys.argv[2]))  # worker 1 of 2 now counts 2
"""


def waiting_for_a_lock(pid: int) -> bool:
    """Whether process *pid* waits for a POSIX lock (``->`` in /proc/locks)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and f" {pid} " in line for line in lines)


def test_an_admission_waits_for_the_worker_that_holds_the_lock() -> None:
    """Two workers never both take the last slot: an admission waits while another
    process holds the lock, then sees what that one published."""
    counts, (first, _) = workers(2, max_connections=2)
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(counts.fd),
                           str(counts.held_offset(1))],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          pass_fds=[counts.fd], text=True) as holder:
        assert holder.stdout is not None
        assert holder.stdin is not None
        try:
            assert holder.stdout.readline() == "locked\n"
            verdict: list[str | None] = []
            admit = threading.Thread(target=lambda: verdict.append(
                first.admit("a", "10.0.0.1")))
            admit.start()
            deadline = time.monotonic() + 60  # a guard against a hang, not a measure
            while not waiting_for_a_lock(os.getpid()):
                assert time.monotonic() < deadline, "the admission never waited"
                assert not verdict, "the admission went ahead while the lock was held"
                time.sleep(0.001)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            admit.join()
            assert verdict == [TOTAL]  # it saw worker 1's 2: the proxy is at its limit
        finally:
            holder.kill()


def test_a_full_table_keeps_what_it_holds_and_says_so_once() -> None:
    counts = SharedCounts(2, entries=16)
    writer, reader = counts.pool(0), counts.pool(1)
    addresses = [f"10.0.1.{n}" for n in range(18)]
    with capture_logs() as logs:
        for ip in addresses:
            writer.publish(0, {ip: 1})
    assert [reader.others_at(ip) for ip in addresses] == [1] * 16 + [0, 0]
    assert [line["event"] for line in logs] == ["limits.address_table_full"]
    writer.publish(0, {addresses[0]: 0})  # a free entry again
    writer.publish(0, {addresses[17]: 1})
    assert reader.others_at(addresses[17]) == 1
