"""Smoke test of the wsproxy image, as a pod would run it (deploy/build-image.sh runs it).

The image's root filesystem (``buildah mount``) is run the way a container runtime
would run it: the image's ENTRYPOINT + CMD, Env and User, as PID 1 of a new PID
namespace, on a read-only root, with the config directory mounted at /etc/wsproxy
(as a ConfigMap is). The network is the host's; only 127.0.0.1 is used.

In front of it: ``wsproxy echo-backend`` on the host (the "app"). Through it: a client.
Then the pod is deleted the way Kubernetes deletes one: SIGTERM to wsproxy and, at the
same moment, the app container's preStop hook (deploy/kubernetes/overlays/sidecar/
wsproxy-prestop.sh). Checked:

  * /healthz and /readyz answer 200 on the main port; messages are echoed;
  * after SIGTERM /readyz is 503 at once, and for drain.delay new upgrades still succeed;
  * after drain.delay new upgrades get 503;
  * every client gets 1001 with a "retry-after-ms=N" reason;
  * wsproxy (PID 1, uid 10001) exits 0 within drain.delay + drain.timeout + 5 s;
  * the preStop hook returns 0 after the last close, so the app outlived the drain.

Usage: python deploy/smoke-test.py --rootfs DIR --image-config FILE [--prestop FILE]
(FILE: the output of `buildah inspect --type image IMAGE`)
(needs root for the namespaces and mounts, and the ``websockets`` package).
"""
# A test driver: it prints, and blocks its event loop on purpose for the steps that are
# not the client's (starting processes, reading /proc).
# ruff: noqa: T201, ASYNC220, ASYNC230, ASYNC240

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets

DELAY, SPREAD, TIMEOUT = 2.0, 3.0, 6.0
HINT = re.compile(r"retry-after-ms=\d+$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), 1):
        return True


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"smoke: FAIL: {what} within {timeout:.0f}s")


class Checks:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        stamp = f"{time.monotonic() - self.t0:6.2f}s"
        print(f"smoke: {stamp} {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failed.append(what)


def container_command(rootfs: Path, config_dir: Path, image: dict[str, Any]) -> list[str]:
    """unshare + chroot: a minimal container runtime for one image rootfs."""
    cfg = image["config"]
    argv = [*(cfg.get("Entrypoint") or []), *(cfg.get("Cmd") or [])]
    env = cfg.get("Env") or []
    user = cfg.get("User") or "0:0"
    if ":" not in user:
        user = f"{user}:{user}"

    def q(s: str) -> str:
        return "'" + s.replace("'", "'\\''") + "'"

    setup = " && ".join([
        "set -e",
        "mount --make-rprivate /",
        f"mount --bind {q(str(rootfs))} {q(str(rootfs))}",
        f"mount -t proc proc {q(str(rootfs / 'proc'))}",
        f"mount -t tmpfs -o mode=755,nosuid tmpfs {q(str(rootfs / 'dev'))}",
        *(f"touch {q(str(rootfs / 'dev' / n))} && mount --bind /dev/{n} "
          f"{q(str(rootfs / 'dev' / n))}" for n in ("null", "zero", "full", "random", "urandom")),
        f"mount --bind {q(str(config_dir))} {q(str(rootfs / 'etc/wsproxy'))}",
        f"mount -o remount,bind,ro {q(str(rootfs))}",  # readOnlyRootFilesystem
        f"exec chroot --userspec={q(user)} {q(str(rootfs))} /usr/bin/env -i "
        + " ".join(q(e) for e in env) + " " + " ".join(q(a) for a in argv),
    ])
    return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--", "sh", "-c", setup]


def child_of(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise SystemExit("smoke: FAIL: the container process did not start")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


async def echo_ok(ws: websockets.ClientConnection, check: Checks, who: str) -> None:
    await ws.send(f"hello from {who}")
    text = await asyncio.wait_for(ws.recv(), 5)
    await ws.send(b"\x00\x01binary")
    data = await asyncio.wait_for(ws.recv(), 5)
    check(text == f"hello from {who}" and data == b"\x00\x01binary",
          f"{who}: text and binary messages echoed through the containerised proxy")


async def close_of(ws: websockets.ClientConnection) -> tuple[int | None, str, float]:
    try:
        while True:
            await ws.recv()
    except websockets.ConnectionClosed as exc:
        rcvd = exc.rcvd
        return (rcvd.code if rcvd else None, rcvd.reason if rcvd else "", time.monotonic())


async def run(args: argparse.Namespace, check: Checks, work: Path) -> None:
    app_port, port, admin_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    config_dir = work / "config"
    config_dir.mkdir()
    (config_dir / "wsproxy.yaml").write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin_port}}}\n"
        f"backends:\n  - {{name: app, url: 'ws://127.0.0.1:{app_port}'}}\n"
        f"drain: {{delay: {DELAY}s, spread: {SPREAD}s, timeout: {TIMEOUT}s}}\n"
        "logging: {level: info, format: json}\n"
    )
    os.chmod(config_dir, 0o755)
    os.chmod(config_dir / "wsproxy.yaml", 0o644)
    inspected = json.loads(Path(args.image_config).read_text())
    image = inspected.get("OCIv1", inspected)  # `buildah inspect` output, or an OCI config

    app_log = open(work / "app.log", "wb")  # noqa: SIM115
    app = subprocess.Popen(
        [sys.executable, "-m", "wsproxy", "echo-backend", "--port", str(app_port)],
        stdout=app_log, stderr=subprocess.STDOUT)
    proxy_log = open(work / "wsproxy.log", "wb")  # noqa: SIM115
    runtime = subprocess.Popen(container_command(Path(args.rootfs), config_dir, image),
                               stdout=proxy_log, stderr=subprocess.STDOUT)
    hook: subprocess.Popen[bytes] | None = None
    try:
        pid1 = child_of(runtime.pid)
        wait_for("the app is listening",
                 lambda: listening(app_port), 15)
        wait_for("/readyz answers 200 on the main port",
                 lambda: status(f"{base}/readyz") == 200, 20)
        st = proc_status(pid1)
        ns_pids = st.get("NSpid", "").split()
        check(ns_pids[-1:] == ["1"], f"wsproxy is PID 1 in its PID namespace (NSpid {ns_pids})")
        uid = st.get("Uid", "").split()[:1]
        check(uid == [str(image["config"].get("User", "")).split(":")[0]],
              f"wsproxy runs as the image's user (uid {uid})")
        cmdline = Path(f"/proc/{pid1}/cmdline").read_bytes().split(b"\0")
        check(b"run" in cmdline and b"/etc/wsproxy/wsproxy.yaml" in cmdline,
              "the image's ENTRYPOINT + CMD: " + " ".join(a.decode() for a in cmdline if a))
        root_ro = any(line.split()[4] == "/" and "ro" in line.split()[5].split(",")
                      for line in Path(f"/proc/{pid1}/mountinfo").read_text().splitlines())
        check(root_ro, "its root filesystem is read-only")
        check(status(f"{base}/healthz") == 200, "GET /healthz on the main port: 200")
        check(status(f"http://127.0.0.1:{admin_port}/readyz") == 200,
              "GET /readyz on the admin port (loopback): 200")

        url = f"ws://127.0.0.1:{port}/smoke"
        async with websockets.connect(url) as first:
            await echo_ok(first, check, "client 1")
            first_close = asyncio.create_task(close_of(first))

            # The pod is deleted: SIGTERM to wsproxy, the app's preStop hook at once.
            t_term = time.monotonic()
            os.kill(pid1, signal.SIGTERM)
            if args.prestop:
                env = {**os.environ, "WSPROXY_ADMIN": f"http://127.0.0.1:{admin_port}",
                       "WSPROXY_DRAIN_WAIT": str(int(DELAY + TIMEOUT + 5))}
                hook = subprocess.Popen(["sh", args.prestop], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            await asyncio.sleep(0.3)
            check(status(f"{base}/readyz") == 503, "SIGTERM: /readyz answers 503 at once")

            async with websockets.connect(url) as second:  # within drain.delay
                await echo_ok(second, check, "client 2 (during drain.delay)")
                second_close = asyncio.create_task(close_of(second))
                await asyncio.sleep(max(0.0, t_term + DELAY + 0.5 - time.monotonic()))
                try:
                    async with websockets.connect(url):
                        refused = None
                except websockets.InvalidStatus as exc:
                    refused = exc.response.status_code
                check(refused == 503, f"after drain.delay a new upgrade gets 503 (got {refused})")
                closes = [await first_close, await second_close]
            for n, (code, reason, at) in enumerate(closes, 1):
                check(code == 1001 and bool(HINT.search(reason)),
                      f"client {n} got {code} {reason!r} {at - t_term:.2f}s after SIGTERM")

        limit = DELAY + TIMEOUT + 5
        try:
            rc = runtime.wait(timeout=max(0.1, t_term + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
        t_exit = time.monotonic()
        check(rc == 0, f"wsproxy exited with {rc} {t_exit - t_term:.2f}s after SIGTERM "
                       f"(limit: delay + timeout + 5 s = {limit:.0f}s)")
        if hook is not None:
            try:
                _, err = hook.communicate(timeout=10)
                hook_rc: int | None = hook.returncode
            except subprocess.TimeoutExpired:
                hook_rc, err = None, b""
            t_hook = time.monotonic()
            last_close = max(at for _, _, at in closes)
            check(hook_rc == 0 and t_hook >= last_close,
                  f"the app's preStop hook returned {hook_rc} {t_hook - t_term:.2f}s after "
                  f"SIGTERM, after the last close ({last_close - t_term:.2f}s): "
                  + err.decode(errors="replace").strip().replace("\n", " ")[:160])
            check(app.poll() is None, "the app was still serving when its hook returned")
        logged = (work / "wsproxy.log").read_text(errors="replace")
        events = [json.loads(line).get("event") for line in logged.splitlines()
                  if line.startswith("{")]
        check("proxy.listening" in events and "proxy.stopped" in events,
              "JSON log lines on stdout, proxy.listening ... proxy.stopped")
    finally:
        for proc in (hook, runtime):
            if proc is not None and proc.poll() is None:
                proc.kill()  # --kill-child takes the container process with it
                proc.wait()
        app.send_signal(signal.SIGTERM)  # the app's own SIGTERM, after its preStop hook
        try:
            app.wait(timeout=5)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()
        app_log.close()
        proxy_log.close()
        if check.failed or args.verbose:
            logged = (work / "wsproxy.log").read_text(errors="replace")
            sys.stdout.write("---- wsproxy log ----\n" + logged)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", required=True, help="the image's mounted root filesystem")
    parser.add_argument("--image-config", required=True,
                        help="`buildah inspect --type image IMAGE` output (or an OCI config)")
    parser.add_argument("--prestop", help="the app container's preStop hook script")
    parser.add_argument("-v", "--verbose", action="store_true", help="print wsproxy's log")
    args = parser.parse_args()
    check = Checks()
    with tempfile.TemporaryDirectory(prefix="wsproxy-smoke-") as work:
        asyncio.run(run(args, check, Path(work)))
    took = time.monotonic() - check.t0
    if check.failed:
        print(f"smoke: FAILED ({len(check.failed)} checks) in {took:.1f}s", flush=True)
        return 1
    print(f"smoke: all checks ok in {took:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
