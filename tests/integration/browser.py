"""Running the browser scripts (``*.mjs`` next to this file, on top of ``browser.mjs``).

Each script drives headless Chromium with playwright-core and prints one JSON object as
its last line of stdout. The tests that use them call :func:`skip_unless_available`: on a
developer's machine without Chromium, node or playwright-core they skip and say which is
missing. ``.ci/run`` installs them (Debian ``chromium``; ``npm install --prefix
$WSPROXY_PLAYWRIGHT_DIR playwright-core``) and sets ``WSPROXY_REQUIRE_BROWSER=1``, which
turns that skip into a failure: where the browser tests are meant to run, a broken install
must not pass as a green run that tested nothing in a browser.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import pytest

CHROMIUM: Final = os.environ.get("WSPROXY_CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT_DIR: Final = Path(os.environ.get("WSPROXY_PLAYWRIGHT_DIR", "/tmp/wsproxy-pw"))
#: Bound on every wait inside a browser script; the whole script gets twice that.
WAIT_MS: Final = 20_000
#: Set (to anything but "" or "0") where the browser tests must run: CI.
REQUIRE_ENV: Final = "WSPROXY_REQUIRE_BROWSER"


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set WSPROXY_CHROMIUM)"
    if shutil.which("node") is None:
        return "no node on PATH (needed to run playwright-core)"
    if not (PLAYWRIGHT_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        return (
            f"playwright-core not installed under {PLAYWRIGHT_DIR} "
            "(npm install --prefix DIR playwright-core, or set WSPROXY_PLAYWRIGHT_DIR)"
        )
    return None


def required() -> bool:
    """Whether a missing browser piece fails the test (``WSPROXY_REQUIRE_BROWSER=1``)."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def skip_unless_available() -> None:
    """Skip the calling test when a browser piece is missing; fail it where one is required."""
    reason = missing()
    if reason is None:
        return
    if required():
        pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so the browser tests must run here",
                    pytrace=False)
    pytest.skip(reason)


async def run_script(
    script: Path, args: Sequence[str] = (), stdin: bytes | None = None
) -> dict[str, Any]:
    """Run ``node script --timeout-ms=WAIT_MS *args`` (bounded) and return its report.

    Fails the test, with the script's stderr, unless the report says ``"ok": true``.
    """
    command = ["node", str(script), f"--timeout-ms={WAIT_MS}", *args]
    env = {
        **os.environ,
        "WSPROXY_PLAYWRIGHT_DIR": str(PLAYWRIGHT_DIR),
        "WSPROXY_CHROMIUM": CHROMIUM,
    }
    with anyio.fail_after(WAIT_MS / 1000 * 2):
        done = await anyio.run_process(command, input=stdin, env=env, check=False)
    output = done.stdout.decode().strip()
    stderr = done.stderr.decode()
    assert output, f"no output from {script.name}; stderr:\n{stderr}"
    result: dict[str, Any] = json.loads(output.splitlines()[-1])
    assert result["ok"], f"{result.get('error')}\nstderr:\n{stderr}"
    assert done.returncode == 0, stderr
    return result
