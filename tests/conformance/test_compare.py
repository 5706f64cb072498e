"""The direct-versus-proxied comparison of two Autobahn reports (no kosoku, no sockets).

Reports are written as kosoku writes them (``index.json``: agent -> case -> entry). Only
a race case's ``behavior`` may differ, and only between OK and NON-STRICT; a different
close code or close verdict, in any case, fails, and so does a race case gone FAILED.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.autobahn import RACE_CASES, compare


def entry(behavior: str = "OK", close: str = "OK", code: int | None = 1002) -> dict[str, Any]:
    return {"behavior": behavior, "behaviorClose": close, "remoteCloseCode": code,
            "reportfile": "none.json"}


def write_reports(out: Path, direct: dict[str, Any], proxy: dict[str, Any]) -> None:
    for side, cases in (("direct", direct), ("proxy", proxy)):
        (out / side).mkdir(parents=True)
        (out / side / "index.json").write_text(json.dumps({"agent": cases}))


def mismatched_ids(out: Path) -> list[str]:
    return [case.id for case in compare(out, ["*"]).mismatches]


@pytest.mark.parametrize("case_id", sorted(RACE_CASES))
@pytest.mark.parametrize(("direct", "proxy"), [("OK", "NON-STRICT"), ("NON-STRICT", "OK")])
def test_a_race_case_may_go_either_way(tmp_path: Path, case_id: str, direct: str,
                                       proxy: str) -> None:
    write_reports(tmp_path, {case_id: entry(direct), "1.1.1": entry()},
                  {case_id: entry(proxy), "1.1.1": entry()})
    comparison = compare(tmp_path, ["*"])
    assert [case.id for case in comparison.tolerated] == [case_id]
    assert comparison.mismatches == []


@pytest.mark.parametrize(("direct", "proxy"), [
    (entry("OK"), entry("FAILED")),                      # a race case never FAILS
    (entry("FAILED"), entry("FAILED")),                  # not even on both paths
    (entry("OK"), entry("NON-STRICT", code=1000)),       # the close code must match
    (entry("OK"), entry("NON-STRICT", close="UNCLEAN")),  # and the close verdict
])
def test_a_race_case_differs_in_nothing_else(tmp_path: Path, direct: dict[str, Any],
                                            proxy: dict[str, Any]) -> None:
    write_reports(tmp_path, {"3.2": direct}, {"3.2": proxy})
    assert mismatched_ids(tmp_path) == ["3.2"]


@pytest.mark.parametrize(("direct", "proxy"), [
    (entry("OK"), entry("NON-STRICT")),          # not a race case: OK -> NON-STRICT fails
    (entry("NON-STRICT"), entry("OK")),          # any difference, even a "better" one
    (entry("OK", code=1002), entry("OK", code=1000)),
    (entry("FAILED", "WRONG CODE"), entry("FAILED", "FAILED")),
])
def test_any_difference_in_another_case_fails(tmp_path: Path, direct: dict[str, Any],
                                              proxy: dict[str, Any]) -> None:
    write_reports(tmp_path, {"5.15": direct}, {"5.15": proxy})
    assert mismatched_ids(tmp_path) == ["5.15"]


def test_a_case_missing_from_one_report_fails(tmp_path: Path) -> None:
    write_reports(tmp_path, {"1.1.1": entry(), "1.1.2": entry()}, {"1.1.1": entry()})
    assert mismatched_ids(tmp_path) == ["1.1.2"]


def test_the_same_outcomes_pass(tmp_path: Path) -> None:
    cases = {"3.2": entry("NON-STRICT"), "7.1.5": entry("FAILED", "WRONG CODE"),
             "9.3.1": entry("FAILED", "FAILED", 1009), "12.1.1": entry("OK")}
    write_reports(tmp_path, cases, dict(cases))
    comparison = compare(tmp_path, ["*"])
    assert [case.id for case in comparison.cases] == ["3.2", "7.1.5", "9.3.1"]
    assert comparison.mismatches == []
    assert comparison.tolerated == []
