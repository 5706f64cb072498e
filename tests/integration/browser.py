"""Running the browser scripts (``*.mjs`` next to this file, on top of ``browser.mjs``).

Each script drives headless Chromium with playwright-core and prints one JSON object as
its last line of stdout. The tests that use them skip with :func:`missing`'s reason when
Chromium, node or playwright-core is absent: ``.ci/run`` installs them (Debian
``chromium``; ``npm install --prefix $WSPROXY_PLAYWRIGHT_DIR playwright-core``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import anyio

CHROMIUM: Final = os.environ.get("WSPROXY_CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT_DIR: Final = Path(os.environ.get("WSPROXY_PLAYWRIGHT_DIR", "/tmp/wsproxy-pw"))
#: Bound on every wait inside a browser script; the whole script gets twice that.
WAIT_MS: Final = 20_000


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
