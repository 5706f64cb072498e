"""``max_connections`` over the workers: registries that claim their slots from one
SharedPool (wsproxy.workers), as worker processes do through shared memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from wsproxy.core.registry import Registry
from wsproxy.workers import CountSlots, SharedPool

TOTAL = "too many connections"
PER_IP = "too many connections from this address"


def workers(count: int, max_connections: int, max_per_ip: int = 0
            ) -> tuple[CountSlots, list[Registry[object]]]:
    slots = CountSlots(count)
    registries: list[Registry[object]] = []
    for index in range(count):
        registry: Registry[object] = Registry(max_connections=max_connections,
                                              max_per_ip=max_per_ip)
        registry.pool = slots.pool(index)
        registries.append(registry)
    return slots, registries


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


def test_a_resume_shares_its_sessions_slot_without_claiming_another() -> None:
    _, (first, second) = workers(2, max_connections=2)
    assert first.admit("held", "10.0.0.1") is None
    assert second.admit("busy", "10.0.0.2") is None
    assert first.admit("resume", "10.0.0.3", in_place_of="held") is None
    first.take_over("held", "resume")
    first.remove("resume")
    assert second.admit("other", "10.0.0.4") == TOTAL  # the session still counts, once
    first.remove("held")
    assert second.admit("other", "10.0.0.4") is None


def test_the_per_address_limit_stays_each_workers_own() -> None:
    _, (first, second) = workers(2, max_connections=10, max_per_ip=1)
    assert first.admit("a", "10.0.0.1") is None
    assert first.admit("b", "10.0.0.1") == PER_IP  # and no slot of the pool taken
    assert second.admit("b", "10.0.0.1") is None
    assert [first.admit(f"c{n}", f"10.0.1.{n}") for n in range(8)] == [None] * 8
    assert second.admit("z", "10.0.2.1") == TOTAL


def test_a_dead_workers_slots_are_given_back_by_the_parent() -> None:
    slots, (first, second) = workers(2, max_connections=2)
    assert [second.admit(c, "10.0.0.1") for c in ("a", "b")] == [None, None]
    assert first.admit("c", "10.0.0.2") == TOTAL
    slots.take(1)  # the parent, once worker 1 has exited
    assert [first.admit(c, "10.0.0.2") for c in ("c", "d")] == [None, None]


HOLDER = """
import fcntl, os, struct, sys
fd = int(sys.argv[1])
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
os.pwrite(fd, struct.pack("<q", 2), 8 * 3)  # worker 1 of 2 now counts 2
"""


def waiting_for_a_lock(pid: int) -> bool:
    """Whether process *pid* waits for a POSIX lock (``->`` in /proc/locks)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and f" {pid} " in line for line in lines)


def test_a_claim_waits_for_the_worker_that_holds_the_lock() -> None:
    """Two workers never both take the last slot: a claim waits while another process
    holds the lock, then sees what that one published."""
    slots = CountSlots(2)
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(slots.fd)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          pass_fds=[slots.fd], text=True) as holder:
        assert holder.stdout is not None
        assert holder.stdin is not None
        try:
            assert holder.stdout.readline() == "locked\n"
            verdict: list[bool] = []
            claim = threading.Thread(target=lambda: verdict.append(
                SharedPool(slots, 0).claim(0, 2)))
            claim.start()
            deadline = time.monotonic() + 60  # a guard against a hang, not a measure
            while not waiting_for_a_lock(os.getpid()):
                assert time.monotonic() < deadline, "the claim never waited for the lock"
                assert not verdict, "the claim went ahead while the lock was held"
                time.sleep(0.001)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            claim.join()
            assert verdict == [False]  # it saw worker 1's 2: the proxy is at its limit
        finally:
            holder.kill()
