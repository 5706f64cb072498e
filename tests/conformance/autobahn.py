"""Autobahn conformance through wsproxy: the same backend, direct and proxied, case by case.

    python -m tests.conformance.autobahn [--cases '1.*,2.*,...'] [--out DIR]

1. starts a ``websockets`` echo server (``max_size=2**25``, ``compression="deflate"``)
   on an ephemeral 127.0.0.1 port, in a subprocess;
2. runs kosoku's fuzzing client against it directly (report in ``OUT/direct``);
3. starts ``wsproxy run`` in front of the same echo server (``max_message_size: 32MiB``
   so that the 16 MiB cases of group 9 fit, ``compression: passthrough``) on a port the
   OS picks, read back from the ``proxy.listening`` log line, and runs kosoku against
   the proxy (report in ``OUT/proxy``, the proxy's log in ``OUT/wsproxy.log``);
4. compares both ``index.json`` files for groups 1-10 (12.* and 13.* are excluded) and
   prints the counts per verdict and every case that differs between the two paths.

Through a correct proxy every case scores as it does directly: the same ``behavior``,
the same ``behaviorClose``, the same close code from the peer. One exception, the race
cases (:data:`RACE_CASES`): a valid message followed at once by a bad frame is OK when
the backend echoes the message before it handles the close and NON-STRICT when it does
not, on either path from run to run. Their ``behavior`` may differ between OK and
NON-STRICT (and must be one of the two on both paths: never FAILED); everything else
about them must match too. Exit status: 0 when no case differs beyond that, 1 when some
do, 2 when the run itself could not be done.

kosoku (the ``kosoku`` package: a runner of the Autobahn case files) is in the project's
``test`` extra: ``pip install -e '.[test]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXCLUDED = ("12.*", "13.*")
GROUPS = range(1, 11)
INSTALL_HINT = (
    "kosoku is not installed: it runs the Autobahn cases. It is in the test extra: "
    f"`{sys.executable} -m pip install -e '.[test]'`."
)
KOSOKU_TIMEOUT = 900.0  # seconds per run; cases 1-10 take about 30 s
START_TIMEOUT = 20.0

#: A valid message and, at once, a bad frame (reserved bits, reserved opcodes). Whether the
#: echo of the message reaches the client before the close is a race in the backend
#: (``websockets`` answers the close before its handler echoes), on either path; the
#: proxy's extra hop loses it a little more often. README "Conformance" has the numbers.
RACE_CASES = frozenset({"3.2", "3.3", "3.4", "4.1.3", "4.1.4", "4.1.5", "4.2.3", "4.2.4", "4.2.5"})
#: The ``behavior`` verdicts a race case may take, on each path independently.
RACE_VERDICTS = frozenset({"OK", "NON-STRICT"})
MISSING = "MISSING"
ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "WRONG CODE",
         "UNCLEAN", "FAILED BY CLIENT", "NO_CLOSE", "ERROR", MISSING]


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split(".") if part.isdigit())


class SetupError(RuntimeError):
    """The comparison could not be run (kosoku missing, a server did not start, ...)."""


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# kosoku -------------------------------------------------------------------------------


def kosoku_command() -> list[str] | None:
    """The kosoku console script of this interpreter's environment, else on PATH."""
    if importlib.util.find_spec("kosoku") is None:
        return None
    beside = Path(sys.executable).with_name("kosoku")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("kosoku")
    return [found] if found else None


def run_kosoku(address: str, cases: Sequence[str], report_dir: Path) -> None:
    command = kosoku_command()
    if command is None:
        raise SetupError(INSTALL_HINT)
    argv = [*command, "-m", "fuzzingclient", "-o", str(report_dir)]
    for pattern in cases:
        argv += ["-i", pattern]
    for pattern in EXCLUDED:
        argv += ["-x", pattern]
    argv.append(address)
    report_dir.mkdir(parents=True, exist_ok=True)
    with open(report_dir / "kosoku.log", "wb") as log:
        # kosoku exits 1 whenever a case fails (the bare echo server fails some of its
        # own): the verdicts come from index.json, not from the exit status.
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                              timeout=KOSOKU_TIMEOUT, check=False)
    if not (report_dir / "index.json").is_file():
        raise SetupError(f"kosoku wrote no index.json (exit {done.returncode}); "
                         f"see {report_dir / 'kosoku.log'}")


def load_index(report_dir: Path) -> dict[str, dict[str, Any]]:
    """case id -> index entry, over every agent in the report (there is one)."""
    index = json.loads((report_dir / "index.json").read_text())
    entries: dict[str, dict[str, Any]] = {}
    for by_case in index.values():
        entries.update(by_case)
    return entries


def load_case(report_dir: Path, entry: dict[str, Any] | None) -> dict[str, Any]:
    if not entry:
        return {}
    path = report_dir / entry["reportfile"]
    return json.loads(path.read_text()) if path.is_file() else {}


# The processes ------------------------------------------------------------------------


class Process:
    """A child process whose stdout lines are copied to a file and offered to a waiter."""

    def __init__(self, argv: Sequence[str], log_path: Path, **kwargs: Any) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log,
                                     cwd=ROOT, **kwargs)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,),
                                        daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._log.write(line)
            self._log.flush()
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, match: Callable[[bytes], Any], what: str) -> Any:
        """The first non-None ``match(line)`` of the child's stdout."""
        while True:
            try:
                line = self.lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                raise SetupError(f"{what}: nothing after {START_TIMEOUT:.0f} s; "
                                 f"see {self.log_path}") from None
            if line is None:
                raise SetupError(f"{what}: the process exited ({self.proc.wait()}); "
                                 f"see {self.log_path}")
            found = match(line)
            if found is not None:
                return found

    def stop(self) -> None:
        """SIGTERM this child (by its PID), then SIGKILL it if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@contextlib.contextmanager
def started(argv: Sequence[str], log_path: Path) -> Iterator[Process]:
    process = Process(argv, log_path)
    try:
        yield process
    finally:
        process.stop()


def _echo_port(line: bytes) -> int | None:
    text = line.decode(errors="replace").strip()
    return int(text.removeprefix("ECHO ")) if text.startswith("ECHO ") else None


def _proxy_port(line: bytes) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != "proxy.listening":
        return None
    for address in record.get("addresses", []):
        host, _, port = str(address).rpartition(":")
        if host.strip("[]") == "127.0.0.1":
            return int(port)
    raise SetupError(f"proxy.listening names no 127.0.0.1 address: {record}")


def proxy_config(backend_port: int) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "backends": [{"name": "echo", "url": f"ws://127.0.0.1:{backend_port}"}],
        "limits": {"max_message_size": "32MiB"},
        "compression": "passthrough",
        "drain": {"spread": "1s", "timeout": "2s"},
        # info, because proxy.listening (which carries the port) is logged at info.
        "logging": {"level": "info", "format": "json"},
    }


# The echo server (run in its own process: ``python -m tests.conformance.autobahn --echo``)


def serve_echo() -> None:
    import asyncio

    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        async with serve(echo, "127.0.0.1", 0, max_size=2**25,
                         compression="deflate") as server:
            port = next(iter(server.sockets)).getsockname()[1]
            say(f"ECHO {port}")
            await stop

    asyncio.run(main())


# The comparison -----------------------------------------------------------------------


@dataclass
class Case:
    """One case's verdicts, direct and through the proxy."""

    id: str
    direct: dict[str, Any]
    proxy: dict[str, Any]

    def verdicts(self, side: str) -> tuple[str, str]:
        entry = getattr(self, side)
        return entry.get("behavior", MISSING), entry.get("behaviorClose", MISSING)

    def outcome(self, side: str) -> tuple[str, str, Any]:
        """What must match between the paths: both verdicts and the peer's close code."""
        return (*self.verdicts(side), getattr(self, side).get("remoteCloseCode"))

    @property
    def race(self) -> bool:
        """A race case whose ``behavior`` is OK or NON-STRICT on both paths."""
        return self.id in RACE_CASES and all(
            self.verdicts(side)[0] in RACE_VERDICTS for side in ("direct", "proxy"))

    @property
    def tolerated(self) -> bool:
        """Differs only in a race case's OK / NON-STRICT ``behavior``."""
        direct, proxy = self.outcome("direct"), self.outcome("proxy")
        return direct != proxy and self.race and direct[1:] == proxy[1:]

    @property
    def mismatch(self) -> bool:
        """Differs beyond what is tolerated, or is a race case outside OK / NON-STRICT."""
        if self.id in RACE_CASES and not self.race:
            return True
        return self.outcome("direct") != self.outcome("proxy") and not self.tolerated


@dataclass
class Comparison:
    out: Path
    cases: list[Case] = field(default_factory=list)

    @property
    def mismatches(self) -> list[Case]:
        return [case for case in self.cases if case.mismatch]

    @property
    def tolerated(self) -> list[Case]:
        return [case for case in self.cases if case.tolerated]

    def counts(self, side: str, which: int) -> Counter[str]:
        return Counter(case.verdicts(side)[which] for case in self.cases)

    def details(self, case: Case, side: str) -> dict[str, Any]:
        report = load_case(self.out / side, getattr(case, side))
        keys = ("behavior", "behaviorClose", "result", "resultClose", "remoteCloseCode",
                "remoteCloseReason", "localCloseCode", "localCloseReason", "wasClean",
                "wasNotCleanReason", "droppedByMe", "failedByMe", "closedByMe",
                "wasServerConnectionDropTimeout", "wasCloseHandshakeTimeout",
                "wasOpenHandshakeTimeout")
        return {key: report.get(key) for key in keys}

    def as_json(self) -> dict[str, Any]:
        return {
            "counts": {side: {"behavior": dict(self.counts(side, 0)),
                              "behaviorClose": dict(self.counts(side, 1))}
                       for side in ("direct", "proxy")},
            "mismatches": {case.id: {side: self.details(case, side)
                                     for side in ("direct", "proxy")}
                           for case in self.mismatches},
            "tolerated": {case.id: {"direct": case.verdicts("direct"),
                                    "proxy": case.verdicts("proxy")}
                          for case in self.tolerated},
        }


def in_scope(case_id: str, patterns: Sequence[str]) -> bool:
    group = case_key(case_id)[:1]
    if not group or group[0] not in GROUPS:
        return False
    return any(fnmatch.fnmatchcase(case_id, p) for p in patterns)


def compare(out: Path, patterns: Sequence[str]) -> Comparison:
    direct, proxy = load_index(out / "direct"), load_index(out / "proxy")
    ids = sorted((i for i in direct.keys() | proxy.keys() if in_scope(i, patterns)), key=case_key)
    return Comparison(out, [Case(i, direct.get(i, {}), proxy.get(i, {})) for i in ids])


def run_comparison(patterns: Sequence[str], out: Path) -> Comparison:
    """Run the suite direct and through wsproxy into ``out``; compare the reports."""
    if kosoku_command() is None:
        raise SetupError(INSTALL_HINT)
    out.mkdir(parents=True, exist_ok=True)
    echo_argv = [sys.executable, "-m", "tests.conformance.autobahn", "--echo"]
    with started(echo_argv, out / "echo.log") as echo:
        echo_port = echo.wait_for(_echo_port, "echo server")
        say(f"echo server on 127.0.0.1:{echo_port}; kosoku direct -> {out / 'direct'}")
        run_kosoku(f"127.0.0.1:{echo_port}", patterns, out / "direct")

        config = out / "wsproxy.yaml"
        config.write_text(yaml.safe_dump(proxy_config(echo_port), sort_keys=False))
        proxy_argv = [sys.executable, "-m", "wsproxy", "run", "-c", str(config)]
        with started(proxy_argv, out / "wsproxy.log") as proxy:
            proxy_port = proxy.wait_for(_proxy_port, "wsproxy")
            say(f"wsproxy on 127.0.0.1:{proxy_port}; kosoku via proxy -> {out / 'proxy'}")
            run_kosoku(f"127.0.0.1:{proxy_port}", patterns, out / "proxy")
    comparison = compare(out, patterns)
    (out / "comparison.json").write_text(json.dumps(comparison.as_json(), indent=2))
    return comparison


# Output -------------------------------------------------------------------------------


def print_counts(comparison: Comparison) -> None:
    for which, title in ((0, "behavior"), (1, "behaviorClose")):
        direct, proxy = comparison.counts("direct", which), comparison.counts("proxy", which)
        labels = [v for v in ORDER if v in direct or v in proxy]
        labels += sorted((direct.keys() | proxy.keys()) - set(labels))
        say(f"{title:<16} {'direct':>7} {'proxy':>7}")
        for label in labels:
            say(f"  {label:<14} {direct[label]:>7} {proxy[label]:>7}")


def print_case(comparison: Comparison, case: Case) -> None:
    say(f"{case.id}: direct {'/'.join(case.verdicts('direct'))}"
        f" -> proxy {'/'.join(case.verdicts('proxy'))}")
    for side in ("direct", "proxy"):
        d = comparison.details(case, side)
        say(f"    {side}: result: {d['result']!r}")
        say(f"    {' ' * len(side)}  resultClose: {d['resultClose']!r}")
        say(f"    {' ' * len(side)}  close code from peer {d['remoteCloseCode']}"
            f" {d['remoteCloseReason']!r}, sent {d['localCloseCode']};"
            f" clean={d['wasClean']} ({d['wasNotCleanReason']}),"
            f" droppedByMe={d['droppedByMe']}, failedByMe={d['failedByMe']},"
            f" dropTimeout={d['wasServerConnectionDropTimeout']},"
            f" closeTimeout={d['wasCloseHandshakeTimeout']}")


def report(comparison: Comparison) -> int:
    say(f"\n{len(comparison.cases)} cases compared (groups 1-10); reports in {comparison.out}")
    print_counts(comparison)
    tolerated = comparison.tolerated
    if tolerated:
        say(f"\n{len(tolerated)} race cases differ between OK and NON-STRICT (tolerated):")
        for case in tolerated:
            say(f"  {case.id}: direct {'/'.join(case.verdicts('direct'))}"
                f" -> proxy {'/'.join(case.verdicts('proxy'))}")
    mismatches = comparison.mismatches
    if not mismatches:
        say("\nno case differs through the proxy beyond the tolerated races")
        return 0
    say(f"\n{len(mismatches)} cases DIFFER through the proxy:")
    for case in mismatches:
        print_case(comparison, case)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance.autobahn",
        description="Run the Autobahn cases (groups 1-10, via kosoku) against a websockets "
                    "echo server directly and through wsproxy, and compare case by case.")
    parser.add_argument("--cases", default="*",
                        help="comma-separated case ids or globs, e.g. '1.*,9.3.1' (default: *)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report directory (default: a new temporary directory)")
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo:
        serve_echo()
        return 0
    patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
    out = args.out or Path(tempfile.mkdtemp(prefix="wsproxy-autobahn-"))
    try:
        comparison = run_comparison(patterns, out.resolve())
    except SetupError as exc:
        sys.stderr.write(f"autobahn: {exc}\n")
        return 2
    if not comparison.cases:
        sys.stderr.write(f"autobahn: no case of groups 1-10 matches {args.cases!r}\n")
        return 2
    return report(comparison)


if __name__ == "__main__":
    sys.exit(main())
