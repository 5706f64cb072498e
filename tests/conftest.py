"""Shared fixtures: every async test runs on asyncio (the data plane is asyncio).

Hypothesis runs under the ``wsproxy`` profile: no deadline (a loaded machine makes any
per-example time limit flaky), derandomized (the same examples on every run, so a
failure found once is found again) and ``print_blob`` (a failure prints the
``@reproduce_failure`` line that replays it). ``HYPOTHESIS_PROFILE=explore`` draws
fresh random examples instead, for a hunt rather than a check.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("wsproxy", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("explore", deadline=None, derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "wsproxy"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
