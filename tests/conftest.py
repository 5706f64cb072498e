"""Shared fixtures: every async test runs on asyncio (the data plane is asyncio).

Hypothesis runs under the ``wsproxy`` profile: no deadline (a loaded machine makes any
per-example time limit flaky), derandomized (the same examples on every run, so a
failure found once is found again) and ``print_blob`` (a failure prints the
``@reproduce_failure`` line that replays it). ``HYPOTHESIS_PROFILE=explore`` draws
fresh random examples instead, for a hunt rather than a check.
"""

from __future__ import annotations

import faulthandler
import fcntl
import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("wsproxy", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("explore", deadline=None, derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "wsproxy"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# The suite runs in parallel (pytest-xdist, ``-n`` in pyproject's addopts): it mostly waits
# on sockets, subprocesses, Node and Chromium, so several workers share 2 cores well. A
# test marked ``exclusive`` measures a rate, a spread or a deadline under load of its own
# making and cannot share the CPU with other tests: it runs alone. The workers share a
# readers-writer lock (flock on two files in the run's temporary directory): every test
# holds it shared, an exclusive one holds it exclusively; the gate, taken first by both,
# lets a waiting exclusive test in before any shared holder that comes after it (a flock
# queue does not, so a stream of short tests would starve it). Taken in
# pytest_runtest_protocol outside pytest-timeout's timer (tryfirst: the outer wrapper),
# so a test waiting for its turn is not timed out for the wait.

EXCLUSIVE = "exclusive"
#: A property test's run time grows with CPU contention (hundreds of examples, all CPU);
#: the suite's 30 s timeout is a guard against hangs, not a bound on that, so these get
#: at least this one (four workers, a CPU-heavy job and other suites on 2 cores made a
#: ~10 s one run past 120 s).
PROPERTY_TEST_TIMEOUT = 240.0
#: Beyond twice its timeout, a test is stuck for good: its worker ends (_watchdog).
HANG_GRACE = 60.0


#: The run's config, in xdist's controller (pytest_handlecrashitem has none).
_controller: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _controller.append(config)
    config.addinivalue_line(
        "markers",
        f"{EXCLUSIVE}: runs alone, no other test beside it in a parallel run (it measures "
        "a rate, a spread or a deadline under load of its own)",
    )


def _is_property_test(item: pytest.Item) -> bool:
    return bool(getattr(getattr(item, "obj", None), "is_hypothesis_test", False))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _spread_property_tests(items)
    for item in items:
        if not _is_property_test(item):
            continue
        if _own_timeout(item) < PROPERTY_TEST_TIMEOUT:
            item.add_marker(pytest.mark.timeout(PROPERTY_TEST_TIMEOUT), append=False)


def _spread_property_tests(items: list[pytest.Item]) -> None:
    """Put the property tests (the longest, all CPU) first in each worker's share.

    ``--dist worksteal`` hands worker k the k-th of N contiguous slices of the list and
    an idle worker steals the back half of another's queue. In collection order the
    property tests (tests/unit) come last, so they were the run's tail, one after
    another on whichever worker held them; at the front of every slice they start at
    once, one per worker, and the short tests fill the end. Every worker computes the
    same order (xdist requires it); outside xdist the order is left as collected.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        return
    heavy = [item for item in items if _is_property_test(item)]
    rest = iter([item for item in items if not _is_property_test(item)])
    ordered: list[pytest.Item] = []
    for k in range(workers):
        size = (len(items) - len(ordered)) // (workers - k)  # worksteal's own split
        share = heavy[k::workers]
        ordered += share
        ordered += [item for _, item in zip(range(size - len(share)), rest, strict=False)]
    ordered += list(rest)
    assert len(ordered) == len(items)
    items[:] = ordered


def _run_lock_dir(config: pytest.Config) -> Path | None:
    """The directory all xdist workers of this run share, or None outside xdist."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    # Each worker's basetemp is <run dir>/popen-gwN: the parent is the run's own.
    return Path(config._tmp_path_factory.getbasetemp()).parent  # type: ignore[attr-defined]


def _stuck_after(item: pytest.Item) -> float:
    """How long *item* may run before its worker is presumed stuck (see _watchdog)."""
    timeout = _own_timeout(item) or item.config.getini("timeout") or 0
    return 2 * float(timeout) + HANG_GRACE


def _own_timeout(item: pytest.Item) -> float:
    """*item*'s ``timeout`` marker (0: none)."""
    own = item.get_closest_marker("timeout")
    return float((own.args or [own.kwargs.get("timeout", 0)])[0]) if own else 0.0


def _stacks_file(run_dir: Path, nodeid: str) -> Path:
    return run_dir / f"stuck-{hashlib.sha1(nodeid.encode()).hexdigest()[:16]}.txt"


@contextmanager
def _watchdog(item: pytest.Item, run_dir: Path | None) -> Iterator[None]:
    """A test past pytest-timeout's signal that still runs (a task that ignores
    cancellation can keep an event loop's teardown waiting for ever) ends its
    process with every thread's stack: xdist reports the worker crashed on that
    test, with the stacks (pytest_handlecrashitem), instead of the run hanging
    until CI kills it. Outside xdist the stacks go to stderr."""
    stacks = None if run_dir is None else _stacks_file(run_dir, item.nodeid).open("w")
    faulthandler.dump_traceback_later(_stuck_after(item), exit=True,
                                      file=stacks or sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if stacks is not None:
            stacks.close()
            Path(stacks.name).unlink()


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport) -> None:
    """xdist's controller: a worker crashed on *crashitem*; its stacks, if the
    watchdog wrote them, go into the report."""
    config = _controller[0]
    run_dir = Path(config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    stacks = _stacks_file(run_dir, crashitem)
    if stacks.exists():
        report.longrepr = f"{report.longrepr}\n\nStuck; every thread's stack:\n" \
                          f"{stacks.read_text(errors='replace')}"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    lock_dir = _run_lock_dir(item.config)
    if lock_dir is None:
        with _watchdog(item, None):
            yield
        return
    exclusive = item.get_closest_marker(EXCLUSIVE) is not None
    with (lock_dir / "exclusive.gate").open("a") as gate, \
            (lock_dir / "exclusive.lock").open("a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            with _watchdog(item, lock_dir):  # armed once the lock is ours: waiting is no hang
                yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(gate, fcntl.LOCK_UN)
