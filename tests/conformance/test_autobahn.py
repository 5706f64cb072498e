"""Autobahn cases 1-10 score the same through wsproxy as against the backend directly.

Runs kosoku (in the ``test`` extra) twice, about 40 s in all, so it carries the
``conformance`` marker and stays out of the default run; ``.ci/run`` runs it as a step
of its own: ``pytest -m conformance tests/conformance``. The race cases may differ
between OK and NON-STRICT (``autobahn.RACE_CASES``); any other difference fails.
"""

from __future__ import annotations

import json

import pytest

from tests.conformance.autobahn import (
    INSTALL_HINT,
    RACE_CASES,
    RACE_VERDICTS,
    kosoku_command,
    run_comparison,
)


@pytest.mark.conformance
@pytest.mark.timeout(1800)
def test_every_case_scores_the_same_through_the_proxy(tmp_path):
    # kosoku is a test dependency: its absence is a broken environment, not a skip.
    assert kosoku_command() is not None, INSTALL_HINT
    comparison = run_comparison(["*"], tmp_path)
    assert len(comparison.cases) > 250, f"too few cases compared; see {tmp_path}"
    mismatches = comparison.as_json()["mismatches"]
    assert not mismatches, (
        f"{len(mismatches)} cases differ through the proxy (reports in {tmp_path}):\n"
        + json.dumps(mismatches, indent=2)
    )
    races = {case.id: case.verdicts("proxy")[0] for case in comparison.cases
             if case.id in RACE_CASES}
    assert races.keys() == RACE_CASES
    assert set(races.values()) <= RACE_VERDICTS
