"""The command line: ``wsproxy run | demo | check-config | echo-backend``."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio

from wsproxy import __version__, ops
from wsproxy.auth.factory import build_authenticator
from wsproxy.config import ProxyConfig, load_config, parse_config
from wsproxy.errors import ConfigError
from wsproxy.log import configure_logging, get_logger
from wsproxy.speedups import SPEEDUPS

if TYPE_CHECKING:
    from wsproxy.supervisor import ProxyContext

#: The command a parent runs each worker of `workers: N` with (wsproxy.workers
#: spells it too: it imports nothing of the command line).
WORKER: Final = "_worker"
#: Exit status for a configuration the user has to fix (SPEC.md).
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsproxy`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [WORKER]:  # not among the commands a user is offered
        args = _worker_parser().parse_args(argv[1:])
    else:
        args = _parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"wsproxy: config error: {problem}", file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsproxy", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"wsproxy {__version__} (speedups: {SPEEDUPS})"
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a config file (exit 0 or 2)")
    check.add_argument("-c", "--config", required=True, metavar="FILE")
    check.set_defaults(func=_cmd_check_config)

    demo = sub.add_parser("demo", help="two echo backends and the proxy, on 127.0.0.1")
    demo.add_argument("--port", type=int, default=8080, help="the proxy's port (8080)")
    demo.add_argument("--admin-port", type=int, default=9090, help="the admin page's (9090)")
    demo.set_defaults(func=_cmd_demo)

    drain = sub.add_parser("drain", help="drain a running proxy, or one backend")
    drain.add_argument("--backend", metavar="NAME")
    drain.add_argument("--spread", metavar="DURATION", help='e.g. "10s" (default: drain.spread)')
    drain.add_argument("--wait", action="store_true", help="return when the drain is done")
    undrain = sub.add_parser("undrain", help="end a drain")
    undrain.add_argument("--backend", metavar="NAME")
    status = sub.add_parser("status", help="backends, their state and connection counts")
    conns = sub.add_parser("connections", help="a running proxy's connections")
    conns.add_argument("--top", type=int, default=20, metavar="N")
    conns.add_argument("--sort", choices=("age", "traffic"), default="age")
    rebalance = sub.add_parser("rebalance", help="one rebalancing round now")
    for name, command in (("drain", drain), ("undrain", undrain), ("status", status),
                          ("connections", conns), ("rebalance", rebalance)):
        ops.add_arguments(command)
        command.set_defaults(func=partial(_cmd_ops, name))

    echo = sub.add_parser("echo-backend", help="a built-in echo WebSocket server")
    echo.add_argument("--port", type=int, required=True)
    echo.add_argument("--host", default="127.0.0.1")
    echo.set_defaults(func=_cmd_echo)
    return parser


def _worker_parser() -> argparse.ArgumentParser:
    """``wsproxy _worker``: a worker of `workers: N` (wsproxy.workers), started by its
    parent; kept out of the commands ``_parser()`` offers users."""
    worker = argparse.ArgumentParser(prog=f"wsproxy {WORKER}")
    worker.add_argument("-c", "--config", required=True)
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--count", type=int, required=True)
    worker.add_argument("--fds", required=True)
    worker.add_argument("--report-fd", type=int, required=True)
    worker.add_argument("--counts-fd", type=int, required=True)
    worker.add_argument("--parent", type=int, required=True)
    # Where the workers' sockets for handing a resume to its session's worker are.
    worker.add_argument("--handoff-dir", required=True)
    # What the operator drained before this worker (a replacement) started.
    worker.add_argument("--drained-proxy", action="store_true")
    worker.add_argument("--drained-backend", action="append", default=[])
    worker.set_defaults(func=_cmd_worker)
    return worker


def _cmd_ops(name: str, args: argparse.Namespace) -> int:
    return ops.run(name, args)


def _load(path: str) -> ProxyConfig:
    """The config, with what it points at checked too (key files, JWKS files)."""
    config = load_config(path)
    build_authenticator(config.auth)
    return config


def _cmd_check_config(args: argparse.Namespace) -> int:
    _load(args.config)
    print(f"{args.config}: ok")  # noqa: T201
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    configure_logging(config.logging.level, config.logging.format)
    if config.workers > 1:
        from wsproxy.workers import run_workers

        return _run_async(run_workers, config, args.config)
    return _run_async(_serve_until_signal, config, args.config)


def _cmd_worker(args: argparse.Namespace) -> int:
    """One worker of ``workers: N``: serve() on the parent's sockets, under its shares."""
    import os
    import socket

    import structlog

    from wsproxy.io.shared_counts import SharedCounts
    from wsproxy.supervisor import Drained
    from wsproxy.workers import TOKEN_ENV, die_with_parent, worker_config

    die_with_parent(args.parent)
    token = os.environ.pop(TOKEN_ENV)
    config = _load(args.config)
    configure_logging(config.logging.level, config.logging.format)
    structlog.contextvars.bind_contextvars(worker=args.index, pid=os.getpid())
    sockets = [socket.socket(fileno=int(fd)) for fd in args.fds.split(",")]

    def adapt(loaded: ProxyConfig) -> ProxyConfig:
        return worker_config(loaded, args.index, args.count, token)

    def report(ctx: ProxyContext) -> None:
        assert ctx.admin_address is not None
        os.write(args.report_fd, f"{ctx.admin_address[1]}\n".encode())
        os.close(args.report_fd)

    slots = SharedCounts(args.count, fd=args.counts_fd)
    drained = Drained(args.drained_proxy, frozenset(args.drained_backend))
    return _run_async(_serve_until_signal, adapt(config), args.config, report,
                      {"sockets": sockets, "adapt": adapt, "on_count": slots.setter(args.index),
                       "pool": slots.pool(args.index),
                       "drained": drained, "handoff": (args.handoff_dir, args.index)})


def _cmd_demo(args: argparse.Namespace) -> int:
    configure_logging("info", "console")
    return _run_async(_demo, args.port, args.admin_port)


def _cmd_echo(args: argparse.Namespace) -> int:
    configure_logging("info", "json")
    return _run_async(_echo, args.host, args.port)


def _run_async(fn: Callable[..., Coroutine[Any, Any, int]], *args: Any) -> int:
    """anyio.run on asyncio, with uvloop where it is installed (PERF-NOTES.md)."""
    options = {"use_uvloop": importlib.util.find_spec("uvloop") is not None}
    try:
        return anyio.run(fn, *args, backend="asyncio", backend_options=options)
    except (OSError, BaseExceptionGroup) as exc:
        # A port in use, a certificate file that cannot be read: no traceback.
        errors = _leaves(exc)
        if not all(isinstance(e, OSError) for e in errors):
            raise
        for error in errors:
            print(f"wsproxy: {error}", file=sys.stderr)  # noqa: T201
        return 1


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]


async def _serve_until_signal(config: ProxyConfig, config_path: str | None = None,
                              on_started: Callable[[ProxyContext], None] | None = None,
                              options: dict[str, Any] | None = None) -> int:
    """Run the proxy: SIGTERM/SIGINT drain it and stop, again skips the spread,
    SIGHUP reloads the config file. *options* go to serve() (a worker's)."""
    from wsproxy.supervisor import serve

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as proxy:  # ends when the proxy stopped
                ctx = await proxy.start(partial(serve, config, config_path=config_path,
                                                **(options or {})))
                outer.start_soon(_watch_signals, signals, ctx)
                if on_started is not None:
                    on_started(ctx)
            outer.cancel_scope.cancel()
    return 0


async def _watch_signals(signals: AsyncIterator[int], ctx: ProxyContext) -> None:
    stops = 0
    async for signum in signals:
        get_logger().info("proxy.signal", signal=signal.Signals(signum).name)
        if signum == signal.SIGHUP:
            ctx.reload()
            continue
        stops += 1
        ctx.shutdown() if stops == 1 else ctx.hurry()


async def _echo(host: str, port: int) -> int:
    from wsproxy.echo import start_echo_server

    server = await start_echo_server(host, port)
    get_logger().info("echo.listening", address=f"{host}:{server.sockets[0].getsockname()[1]}")
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            break
    server.close()
    return 0


async def _demo(port: int, admin_port: int) -> int:
    from wsproxy.echo import start_echo_server

    echoes = [await start_echo_server(name=f"echo-{i + 1}") for i in range(2)]
    backends = [
        {"name": f"echo-{i + 1}", "url": f"ws://127.0.0.1:{s.sockets[0].getsockname()[1]}"}
        for i, s in enumerate(echoes)
    ]
    config = parse_config({
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "backends": backends,
        "logging": {"level": "info", "format": "console"},
        "plain_http": "proxy",  # the demo page comes through the proxy too
        # A demo stops at Ctrl-C without making anyone wait for a spread.
        "drain": {"spread": "1s", "timeout": "3s"},
    })
    def announce(ctx: ProxyContext) -> None:
        assert ctx.admin_address is not None
        print(_DEMO_TEXT.format(  # noqa: T201
            port=ctx.addresses[0][1], admin=ctx.admin_address[1],
            backends=", ".join(f"{b['name']} at {b['url']}" for b in backends)), flush=True)

    await _serve_until_signal(config, None, announce)
    for server in echoes:
        server.close()
    return 0


_DEMO_TEXT = """
wsproxy demo is running. Ctrl-C stops it (with a close frame to every client).

  proxy:     ws://127.0.0.1:{port}/
  page:      http://127.0.0.1:{port}/   (served by a backend through the proxy; opens a WebSocket)
  admin:     http://127.0.0.1:{admin}/   (backends, connections, drain buttons)
  backends:  {backends} (built-in echo servers)

Try it:
  python -m websockets ws://127.0.0.1:{port}/          # pip install websockets
  or, in a browser console:
    ws = new WebSocket("ws://127.0.0.1:{port}/"); ws.onmessage = e => console.log(e.data);
    ws.onopen = () => ws.send("hello through wsproxy");
  and drain a backend while connected:
    wsproxy drain --admin http://127.0.0.1:{admin} --backend echo-1 --spread 5s
"""
