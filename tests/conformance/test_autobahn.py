"""Autobahn cases 1-10 through wsproxy score no worse than against the backend directly.

Slow (about a minute) and needs kosoku (`pip install kosoku`, not a project
dependency), so it carries the ``conformance`` marker and stays out of the default
run; run it with ``pytest -m conformance tests/conformance``.
"""

from __future__ import annotations

import json

import pytest

from tests.conformance.autobahn import INSTALL_HINT, kosoku_command, run_comparison


@pytest.mark.conformance
@pytest.mark.timeout(1800)
def test_no_case_is_worse_through_the_proxy(tmp_path):
    if kosoku_command() is None:
        pytest.skip(INSTALL_HINT)
    comparison = run_comparison(["*"], tmp_path)
    assert len(comparison.cases) > 250, f"too few cases compared; see {tmp_path}"
    worse = comparison.as_json()["worse"]
    assert not worse, (
        f"{len(worse)} cases are worse through the proxy (reports in {tmp_path}):\n"
        + json.dumps(worse, indent=2)
    )
