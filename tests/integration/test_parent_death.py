"""A worker learns its parent's death once (workers.die_with_parent).

The kernel sends PR_SET_PDEATHSIG's signal each time the *thread* that is a process's
parent exits, passing the process on to a thread of the same parent still alive: a
worker got SIGTERM two or three times from one killed parent, and one that came after
its drain, with SIGTERM's default action back, killed it before it wrote its last log
lines. Here the child is started from a thread that then ends (one death signal),
and the parent is then killed (one more at least): the child must see one SIGTERM.
"""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import os, signal, sys, time
from wsproxy.workers import die_with_parent

parent, report = int(sys.argv[1]), int(sys.argv[2])
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(signal.SIGTERM))
die_with_parent(parent)
print("ready", flush=True)
# Until the parent is gone: its last thread's death signal is sent as it reparents us
# (nothing to wait on but the parent's id; the handlers run before the next line).
while os.getppid() == parent:
    time.sleep(0.01)
os.write(report, str(len(got)).encode())
"""

PARENT = """
import os, subprocess, sys, threading, time

def spawn():  # from a thread that ends once the child is ready
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()),
                              sys.argv[2]], stdout=subprocess.PIPE, text=True,
                             pass_fds=[int(sys.argv[2])])
    assert child.stdout.readline() == "ready\\n"

thread = threading.Thread(target=spawn)
thread.start()
thread.join()
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
print("spawned", flush=True)
time.sleep(600)
"""


def test_a_worker_sees_one_sigterm_when_its_parent_dies() -> None:
    read_end, write_end = os.pipe()
    try:
        with subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(write_end)],
                              stdout=subprocess.PIPE, text=True,
                              pass_fds=[write_end]) as parent:
            os.close(write_end)
            write_end = -1
            assert parent.stdout is not None
            try:
                assert parent.stdout.readline() == "spawned\n"
            finally:
                parent.kill()
        with os.fdopen(read_end, "rb") as report:  # until the child exits
            read_end = -1
            assert report.read() == b"1"  # SIGTERMs the child saw
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
