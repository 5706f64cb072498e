"""The ops commands: ``wsproxy drain | undrain | status | connections | rebalance``.

Plain blocking HTTP (urllib) against a running proxy's admin API: these are short
one-shot commands, so an event loop would buy nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import quote

from wsproxy.config import load_config
from wsproxy.units import parse_duration

DEFAULT_ADMIN: Final = "http://127.0.0.1:9090"
#: How long one HTTP call may take (GET /drain?wait= asks for less than this).
TIMEOUT: Final = 30.0


class OpsError(Exception):
    """A clear one-line message for the user; exit status 1."""


class UsageError(OpsError):
    """A bad argument; exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", metavar="URL",
                        help=f"admin API (default: -c FILE's admin section, else {DEFAULT_ADMIN})")
    parser.add_argument("-c", "--config", metavar="FILE", help="read the admin address from it")
    parser.add_argument("--token", help="admin token (default: $WSPROXY_ADMIN_TOKEN)")


class AdminClient:
    def __init__(self, args: argparse.Namespace) -> None:
        self.base = (args.admin or _admin_from_config(args.config) or DEFAULT_ADMIN).rstrip("/")
        self.token = args.token or os.environ.get("WSPROXY_ADMIN_TOKEN")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = TIMEOUT) -> Any:
        data = None if body is None and method == "GET" else json.dumps(body or {}).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc.read())
            if exc.code == 401:
                detail += " (give --token or set WSPROXY_ADMIN_TOKEN)"
            raise OpsError(f"{method} {path}: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OpsError(f"no proxy answering at {self.base} ({reason})") from None
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise OpsError(f"{self.base} did not answer with wsproxy's JSON") from None


def _admin_from_config(path: str | None) -> str | None:
    if path is None:
        return None
    admin = load_config(path).admin
    host = "127.0.0.1" if admin.host in ("0.0.0.0", "::", "") else admin.host
    return f"http://{'[' + host + ']' if ':' in host else host}:{admin.port}"


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body.decode(errors="replace")))
    except ValueError:
        return body.decode(errors="replace").strip()


def run(command: str, args: argparse.Namespace) -> int:
    """Run one ops command; exit status 0, or 1 with one line on stderr."""
    try:
        print(COMMANDS[command](AdminClient(args), args))  # noqa: T201
    except OpsError as exc:
        print(f"wsproxy: {exc}", file=sys.stderr)  # noqa: T201
        return 2 if isinstance(exc, UsageError) else 1
    return 0


def drain(client: AdminClient, args: argparse.Namespace) -> str:
    body = {} if args.spread is None else {"spread": args.spread}
    if args.spread is not None:
        try:
            parse_duration(args.spread)
        except ValueError as exc:
            raise UsageError(f"--spread: {exc}") from None
    path = f"/backends/{quote(args.backend, safe='')}/drain" if args.backend else "/drain"
    started = client.call("POST", path, body)
    what = f"backend {args.backend}" if args.backend else "the proxy"
    if not args.wait:
        return f"draining {what} over {started['spread_s']}s"
    while True:
        status = client.call("GET", "/drain?wait=10s", timeout=TIMEOUT)
        if not status["draining"]:
            return f"drained {what}: {status['closed']} connections closed"
        print(f"... {status['left']} left, {status['seconds_left']}s to go",  # noqa: T201
              file=sys.stderr)


def undrain(client: AdminClient, args: argparse.Namespace) -> str:
    path = f"/backends/{quote(args.backend, safe='')}/undrain" if args.backend else "/undrain"
    result = client.call("POST", path)
    what = f"backend {args.backend}" if args.backend else "the proxy"
    return f"{what}: drain ended" if result.get("was_draining") else f"{what} was not draining"


def status(client: AdminClient, args: argparse.Namespace) -> str:
    backends = client.call("GET", "/backends")["backends"]
    drain_state = client.call("GET", "/drain")
    rows = [("BACKEND", "STATE", "ACTIVE", "URL")]
    for b in backends:
        state = ("removed" if b.get("removed") else "draining" if b["draining"]
                 else "healthy" if b["healthy"] else "unhealthy")
        rows.append((b["name"], state, str(b["active"]), b["url"]))
    lines = _table(rows)
    total = sum(b["active"] for b in backends)
    proxy_draining = any(d["name"] == "proxy" for d in drain_state["drains"])
    proxy_state = "draining" if proxy_draining else "ready"
    lines.append(f"\nproxy: {proxy_state}, {total} connections")
    if drain_state["draining"]:
        lines.append(f"drains: {drain_state['left']} connections left, "
                     f"{drain_state['seconds_left']}s to go")
    return "\n".join(lines)


def connections(client: AdminClient, args: argparse.Namespace) -> str:
    query = f"/connections?sort={args.sort}&top={args.top}"
    rows = [("ID", "CLIENT", "BACKEND", "SUBJECT", "AGE", "MSG IN/OUT", "BYTES IN/OUT")]
    for c in client.call("GET", query)["connections"]:
        rows.append((c["id"], c["client"], c["backend"] or "-", c["subject"] or "-",
                     f"{c['age_s']:.0f}s", f"{c['messages_to_backend']}/{c['messages_to_client']}",
                     f"{c['bytes_to_backend']}/{c['bytes_to_client']}"))
    return "\n".join(_table(rows)) if len(rows) > 1 else "no connections"


def rebalance(client: AdminClient, args: argparse.Namespace) -> str:
    status = client.call("POST", "/rebalance")
    backends = client.call("GET", "/backends")["backends"]
    shares = ", ".join(f"{b['name']} {b['share']:.0%}" for b in backends if not b.get("removed"))
    state = "round running" if status["running"] else "round asked for"
    return (f"rebalance: {state}; max/mean {status['ratio']:.2f} "
            f"(trigger {status['trigger']}); shares: {shares or 'no backends'}")


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


COMMANDS = {"drain": drain, "undrain": undrain, "status": status, "connections": connections,
            "rebalance": rebalance}
