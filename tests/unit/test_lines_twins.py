"""The closed line and the log clock in C (wsproxy/_lines.c) give what their Python
references in wsproxy.log give (issue 18): the same string for the same fields and
timestamp, the same timestamp for the same instant.

Properties with hypothesis, derandomized (the same inputs every run); the reference is
held to json_line's bytes by tests/unit/test_log_render.py.
"""

from __future__ import annotations

import enum
import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy import log as wslog

try:
    from wsproxy import _lines
except ImportError:  # built without a C compiler: nothing to compare
    _lines = None  # type: ignore[assignment]

if _lines is not None:  # (wsproxy.log does this where it picks the C twins)
    _lines.set_fallback(wslog.millis_repr)

needs_c = pytest.mark.skipif(_lines is None, reason="the C lines were not built")

SETTINGS = settings(derandomize=True, max_examples=600, deadline=None)


class Code(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001


texts = st.text(max_size=12) | st.text("abc \"~", max_size=20) | st.sampled_from(
    ["", "127.0.0.1", "é", "\ud800", '"\\\n', "b\x00", "\x7f", "~ ", "\U0001f600", "a" * 300]
)
maybe_text = st.none() | texts
counts = st.integers(min_value=0, max_value=2**70) | st.integers(-(2**65), 2**65)
codes = st.none() | st.integers(min_value=-(2**65), max_value=2**65) | st.sampled_from(list(Code))
durations = (
    st.floats(min_value=0, max_value=2e9) | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(0, 10**9).map(lambda n: n / 1000 + 0.0005) | st.integers(0, 10**6)
    # Halfway between two thousandths, or next to it, up to 1e9 (the C writes most
    # durations from the product x * 1000, and leaves those near a tie to the digits).
    | st.tuples(st.integers(0, 10**12 - 1), st.sampled_from([-1, 0, 1])).map(
        lambda t: _next_to((t[0] + 0.5) / 1000, t[1]))
)
def _next_to(x: float, step: int) -> float:
    return x if step == 0 else math.nextafter(x, math.inf * step)


stamps = st.sampled_from(["2026-01-01T00:00:00.000001Z", "2026-01-01T00:00:00Z", "", "é"])


@needs_c
@SETTINGS
@given(st.tuples(stamps, texts, texts, maybe_text, maybe_text, texts, durations, codes, codes,
                 maybe_text, maybe_text, counts, counts, counts, counts, counts, counts))
def test_the_same_line(fields: tuple[Any, ...]) -> None:
    assert _lines.render_closed(*fields) == wslog.py_render_closed(*fields)


@needs_c
def test_every_field_written() -> None:
    """Every str field there and plain, every number its own digits: the most pieces."""
    fields = ("2026-01-01T00:00:00.000001Z", "c1", "10.0.0.1", "b2", "drain", "closed", 0.5,
              1012, 1012, "proxy", "backend draining; retry-after-ms=634", 2**40, 2, 3, 4, 5, 6)
    assert _lines.render_closed(*fields) == wslog.py_render_closed(*fields)
    long = tuple(f * 50 if isinstance(f, str) else f for f in fields)
    assert _lines.render_closed(*long) == wslog.py_render_closed(*long)


@needs_c
def test_an_ordinary_line_is_json() -> None:
    fields = ("2026-01-01T00:00:00.000001Z", "c1", "10.0.0.1", "b", None, "closed", 0.0125,
              Code.NORMAL, 1000, "client", "bye \"now\"", 1, 2, 30, 40, 0, 0)
    line = _lines.render_closed(*fields)
    assert line == wslog.py_render_closed(*fields)
    assert json.loads(line)["reason"] == 'bye "now"'
    assert json.loads(line)["duration_s"] == round(0.0125, 3)


@needs_c
@pytest.mark.parametrize(("index", "value"), [
    (1, 5), (2, b"ip"), (3, 1.5), (5, None), (7, "1000"), (7, 1000.0), (11, "1"),
])
def test_the_same_errors(index: int, value: Any) -> None:
    fields: list[Any] = ["s", "c1", "10.0.0.1", None, None, "closed", 0.5, None, None, None,
                         None, 0, 0, 0, 0, 0, 0]
    fields[index] = value
    try:
        expected: Any = wslog.py_render_closed(*fields)
    except TypeError:
        with pytest.raises(TypeError):
            _lines.render_closed(*fields)
    else:
        assert _lines.render_closed(*fields) == expected


@needs_c
def test_a_duration_it_does_not_format_goes_to_millis_repr() -> None:
    fields: list[Any] = ["s", "c1", "10.0.0.1", None, None, "closed", 0.5, None, None, None,
                         None, 0, 0, 0, 0, 0, 0]
    for duration in (1e9, 1e17, -1.0, -0.0, float("nan"), float("inf"), 3, True):
        fields[6] = duration
        assert _lines.render_closed(*fields) == wslog.py_render_closed(*fields)


@needs_c
@SETTINGS
@given(st.integers(min_value=0, max_value=2**63 - 1 - 2 * 10**9)
       | st.integers(min_value=1_700_000_000 * 10**9, max_value=1_900_000_000 * 10**9))
def test_the_same_timestamp(ns: int) -> None:
    c_clock, py_clock = _lines.Clock(), wslog._Clock()
    assert c_clock.stamp_at(ns) == py_clock.stamp_at(ns)
    # Again in the same second (the cached date and time) and in the next one.
    assert c_clock.stamp_at(ns + 1000) == py_clock.stamp_at(ns + 1000)
    later = ns + 1_000_000_000
    assert c_clock.stamp_at(later) == py_clock.stamp_at(later)


@needs_c
def test_the_clock_is_time_ns() -> None:
    import time

    before = time.time_ns() // 1000 * 1000
    stamp = _lines.Clock().stamp()
    after = time.time_ns()
    assert wslog._Clock().stamp_at(before) <= stamp <= wslog._Clock().stamp_at(after)


@needs_c
def test_the_compiled_twins_are_in_use() -> None:
    if os.environ.get("WSPROXY_NO_SPEEDUPS", "") not in ("", "0"):
        assert wslog.LINES_SPEEDUPS == "python"
        assert wslog.render_closed is wslog.py_render_closed
    else:
        assert wslog.LINES_SPEEDUPS == "c"
        assert wslog.render_closed is _lines.render_closed


def test_no_speedups_means_the_python_lines() -> None:
    code = ("from wsproxy import log; "
            "print(log.LINES_SPEEDUPS, log.render_closed is log.py_render_closed, "
            "type(log._clock).__name__)")
    env = {**os.environ, "WSPROXY_NO_SPEEDUPS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["python", "True", "_Clock"]
