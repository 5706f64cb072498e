"""The ``wsproxy`` command as its users run it: real subprocesses, real signals.

Readiness comes from the processes' own log lines (``proxy.listening``,
``echo.listening``, the demo's banner), never from a sleep; every wait is bounded and
every process started here is killed by its PID if it is still running at the end
(tests/integration/proxy_process.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.proxy_process import (
    EXIT_TIMEOUT,
    START_TIMEOUT,
    WSPROXY,
    run_cli,
    started,
)
from wsproxy.speedups import SPEEDUPS

#: The console script next to this interpreter, as installed by the package.
SCRIPT = Path(sys.executable).with_name("wsproxy")


# Helpers -------------------------------------------------------------------------------


def write_config(path: Path, backend_url: str, *, port: int = 0) -> Path:
    path.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        "admin: {host: 127.0.0.1, port: 0}\n"
        "backends:\n"
        f'  - {{name: echo, url: "{backend_url}"}}\n'
        "drain: {spread: 0s, timeout: 5s}\n"
        "logging: {level: info, format: json}\n",
        encoding="utf-8",
    )
    return path


# check-config and --version --------------------------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"wsproxy \d+\.\d+\.\d+\S* \(speedups: (c|python)\)\n", result.stdout)
    # Which compiled twins run (issue 18): those wsproxy.core.scan and .handshake picked.
    assert f"(speedups: {SPEEDUPS})" in result.stdout


def test_an_unknown_command_exits_2_offering_only_the_users_commands() -> None:
    result = run_cli("chek-config")
    assert result.returncode == 2
    assert "invalid choice: 'chek-config'" in result.stderr
    assert "'check-config'" in result.stderr
    assert "_worker" not in result.stderr  # the workers' own, not offered


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "good.yaml", "ws://127.0.0.1:8001")
    command = [str(SCRIPT)] if SCRIPT.exists() else WSPROXY
    result = run_cli("check-config", "-c", str(config), command=command)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_2_naming_each_key(tmp_path: Path, command: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "backends:\n"
        "  - {name: a, url: \"ws://127.0.0.1:8001\"}\n"
        "limits:\n"
        "  max_conections: 5\n"
        "heartbeat:\n"
        "  interval: soon\n",
        encoding="utf-8",
    )
    result = run_cli(command, "-c", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("wsproxy: config error: limits.max_conections:")
    assert "line 4" in lines[0]
    assert lines[1].startswith("wsproxy: config error: heartbeat.interval:")
    assert '"soon"' in lines[1]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("check-config", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.startswith("wsproxy: config error:")
    assert "nope.yaml" in result.stderr
    assert "Traceback" not in result.stderr


# run ---------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_run_relays_and_sigterm_closes_clients_with_1001(tmp_path: Path) -> None:
    async with started("echo-backend", "--port", "0") as echo:
        listening = await echo.wait_for_event("echo.listening")
        host, port = listening["address"].rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) > 0  # the bound port, not the 0 asked for
        config = write_config(tmp_path / "wsproxy.yaml", f"ws://{listening['address']}")

        async with started("run", "-c", str(config)) as proxy:
            ready = await proxy.wait_for_event("proxy.listening")
            [address] = ready["addresses"]
            assert re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", address)
            async with connect(f"ws://{address}/") as ws:
                await ws.send("through a real process")
                assert await ws.recv() == "through a real process"

                os.kill(proxy.pid, signal.SIGTERM)
                with anyio.fail_after(EXIT_TIMEOUT), pytest.raises(ConnectionClosed) as exc:
                    await ws.recv()
            assert exc.value.rcvd is not None
            assert exc.value.rcvd.code == 1001
            assert await proxy.wait() == 0
            events = [json.loads(line).get("event") for line in await proxy.rest_of_stdout()]
            assert "proxy.stopped" in events
            assert "Traceback" not in await proxy.stderr()

        os.kill(echo.pid, signal.SIGTERM)
        assert await echo.wait() == 0


@pytest.mark.anyio
async def test_run_on_a_port_in_use_fails_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "wsproxy.yaml", "ws://127.0.0.1:8001", port=port)
        async with started("run", "-c", str(config)) as proxy:
            # A whole start (imports, under load seconds) before the exit: both bounds.
            status = await proxy.wait(START_TIMEOUT + EXIT_TIMEOUT)
            stderr = await proxy.stderr()
            stdout = await proxy.rest_of_stdout()
    assert status != 0
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("wsproxy: ")
    assert str(port) in lines[0]
    assert "in use" in lines[0]
    assert not any("proxy.listening" in line for line in stdout)


# demo --------------------------------------------------------------------------------------

DEMO_URL = r"proxy:\s+(ws://127\.0\.0\.1:(\d+)/)"
DEMO_ADMIN = r"admin:\s+http://127\.0\.0\.1:(\d+)/"


@pytest.mark.anyio
async def test_demo_prints_its_bound_urls_relays_and_exits_0_on_sigint() -> None:
    async with started("demo", "--port", "0", "--admin-port", "0") as demo:
        match = await demo.wait_for_line(DEMO_URL)
        url, port = match.group(1), int(match.group(2))
        assert port != 0  # the bound port, not the configured 0
        assert int((await demo.wait_for_line(DEMO_ADMIN)).group(1)) != 0
        async with connect(url) as ws:
            await ws.send("hello through wsproxy")
            assert await ws.recv() == "hello through wsproxy"
            os.kill(demo.pid, signal.SIGINT)
            with anyio.fail_after(EXIT_TIMEOUT), pytest.raises(ConnectionClosed) as exc:
                await ws.recv()
        assert exc.value.rcvd is not None
        assert exc.value.rcvd.code == 1001
        assert await demo.wait() == 0
        assert "Traceback" not in await demo.stderr()
