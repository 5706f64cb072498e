"""The JSON line renderer (wsproxy.log): the same bytes as structlog's JSONRenderer()
(json.dumps), and TimeStamper's timestamp, for any event dict.

Properties with hypothesis, derandomized (the same inputs every run).
"""

from __future__ import annotations

import datetime
import enum
import json
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy import log as wslog
from wsproxy.log import json_line, render_json

SETTINGS = settings(derandomize=True, max_examples=400, deadline=None)


#: structlog's own renderer, as configured before wsproxy rendered lines itself.
_STRUCTLOG_JSON = structlog.processors.JSONRenderer()


def reference(event_dict: dict[str, Any]) -> str:
    return str(_STRUCTLOG_JSON(None, "info", dict(event_dict)))


class Colour(enum.Enum):
    RED = "red"


class Code(enum.IntEnum):
    NORMAL = 1000


scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text() | st.sampled_from([Colour.RED, Code.NORMAL, b"raw", (1, "a")])
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@SETTINGS
@given(st.dictionaries(st.text(max_size=12), values, max_size=12))
def test_the_same_bytes_as_json_dumps(event_dict: dict[str, Any]) -> None:
    assert render_json(dict(event_dict)) == reference(event_dict)


def test_the_canonical_line_and_the_odd_values() -> None:
    line = {"conn_id": "ab12", "client": "127.0.0.1", "backend": None, "duration_s": 0.25,
            "close_code_client": 1000, "ok": True, "subject": "é", "state": Colour.RED,
            "code": Code.NORMAL, "n": 2**70, "s": "\ud800", "nan": float("nan")}
    assert render_json(dict(line)) == reference(line)


def test_an_error_is_json_dumps_s_and_leaves_nothing_behind() -> None:
    circular: dict[str, Any] = {"a": 1}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        reference(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        render_json(circular)
    # Nothing is left behind: the same objects render afterwards.
    inner = {"x": [1, 2]}
    assert render_json({"a": inner, "b": inner}) == reference({"a": inner, "b": inner})


@pytest.mark.parametrize("ns", [
    1_765_000_000_123_456_789,  # a fraction
    1_765_000_000_000_000_999,  # under a microsecond: isoformat() writes no fraction
    1_765_000_000_000_001_000,
])
def test_the_timestamp_is_timestampers(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    monkeypatch.setattr(wslog.time, "time_ns", lambda: ns)
    monkeypatch.setattr(wslog, "_clock", wslog._Clock())
    moment = datetime.datetime.fromtimestamp(ns // 10**9, datetime.UTC).replace(
        microsecond=ns // 1000 % 10**6)
    line = json.loads(json_line(None, "info", {"event": "x"}))
    assert line["timestamp"] == moment.isoformat().replace("+00:00", "Z")


def test_a_line_has_what_the_processor_chain_gave_it() -> None:
    """Level names as add_log_level spelled them, bound context vars, exc_info."""
    structlog.contextvars.bind_contextvars(request="r1")
    try:
        line = json.loads(json_line(None, "warn", {"a": 1, "event": "e"}))
    finally:
        structlog.contextvars.clear_contextvars()
    assert list(line) == ["a", "event", "request", "level", "timestamp"]
    assert line["level"] == "warning"
    try:
        raise ValueError("boom")
    except ValueError:
        line = json.loads(json_line(None, "exception", {"event": "e", "exc_info": True}))
    assert line["level"] == "error"
    assert line["exception"][0]["exc_type"] == "ValueError"
    assert "exc_info" not in line


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> Any:
    """configure_logging()'s JSON set-up, with the lines its buffer would take kept here."""
    lines: list[str] = []
    saved = structlog.get_config()
    wslog.configure_logging("info")  # makes the process's buffer, once
    assert wslog._buffer is not None
    monkeypatch.setattr(wslog._buffer, "put", lines.append)
    monkeypatch.setattr(wslog, "_clock", _FixedClock())
    try:
        yield lines
    finally:
        structlog.configure(**saved)
        wslog._direct = None


class _FixedClock:
    def stamp(self) -> str:
        return "2026-01-01T00:00:00.000001Z"


def test_info_line_writes_log_infos_bytes(written: list[str]) -> None:
    """The canonical lines' direct way: byte for byte structlog's line, its level filter,
    and structlog's way again under capture_logs()."""
    wslog.configure_logging("info")  # the buffer's put is the fixture's now
    fields = {"conn_id": "ab12", "client": "127.0.0.1", "backend": None, "subject": "é",
              "duration_s": 0.25, "close_code_client": 1000}
    wslog.get_logger().info("connection.closed", **fields)
    wslog.info_line("connection.closed", dict(fields))
    assert len(written) == 2
    assert written[0] == written[1]
    assert list(json.loads(written[1]))[-3:] == ["event", "level", "timestamp"]
    assert wslog.info_enabled()
    with structlog.testing.capture_logs() as logs:
        wslog.info_line("connection.opened", {"conn_id": "x"})
    assert logs == [{"conn_id": "x", "event": "connection.opened", "log_level": "info"}]
    assert len(written) == 2
    wslog.info_line("connection.opened", {"conn_id": "y"})  # the direct way again after
    assert len(written) == 3
    wslog.configure_logging("warning")
    assert not wslog.info_enabled()
    wslog.info_line("connection.opened", {"conn_id": "z"})
    assert len(written) == 3


# The two lines of every connection, rendered by the caller (direct_put, opened_line,
# closed_line): json_line's bytes for the same fields, on generated values.

texts = st.text(max_size=8) | st.sampled_from(["", "127.0.0.1", "é", "\ud800", '"\\\n', "b\x00"])
maybe_text = st.none() | texts
counts = st.integers(min_value=0, max_value=2**70)
codes = st.none() | st.integers(min_value=0, max_value=2**16)


def _reference_line(event: str, fields: dict[str, Any]) -> str:
    return json_line(None, "info", {**fields, "event": event})


@settings(derandomize=True, max_examples=150, deadline=None)
@given(texts, texts, maybe_text, maybe_text)
def test_opened_line_is_json_lines(
    conn_id: str, client: str, backend: str | None, subject: str | None,
) -> None:
    fields = {"conn_id": conn_id, "client": client, "backend": backend, "subject": subject}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wslog, "_clock", _FixedClock())
        line = wslog.opened_line(conn_id, client, backend, subject)
        assert line == _reference_line("connection.opened", fields)


#: summary()'s keys, in its order.
SUMMARY_KEYS = (
    "conn_id", "client", "backend", "subject", "state", "duration_s", "close_code_client",
    "close_code_upstream", "initiator", "reason", "messages_to_backend", "messages_to_client",
    "bytes_to_backend", "bytes_to_client", "undelivered_to_client", "undelivered_to_backend",
)
summaries = st.fixed_dictionaries({
    "conn_id": texts, "client": texts, "backend": maybe_text, "subject": maybe_text,
    "state": texts,
    "duration_s": st.floats(min_value=0, max_value=1e9).map(lambda x: round(x, 3)),
    "close_code_client": codes, "close_code_upstream": codes, "initiator": maybe_text,
    "reason": maybe_text, "messages_to_backend": counts, "messages_to_client": counts,
    "bytes_to_backend": counts, "bytes_to_client": counts, "undelivered_to_client": counts,
    "undelivered_to_backend": counts,
}).map(lambda fields: {key: fields[key] for key in SUMMARY_KEYS})


@settings(derandomize=True, max_examples=150, deadline=None)
@given(summaries)
def test_closed_line_is_json_lines(fields: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wslog, "_clock", _FixedClock())
        assert wslog.closed_line(fields) == _reference_line("connection.closed", fields)


def test_closed_line_takes_a_connections_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fields closed_line writes are summary()'s, in its order, close codes and an
    IntEnum among them."""
    from wsproxy.core.closes import CloseCode
    from wsproxy.core.session import Session
    from wsproxy.io.connection import Connection

    monkeypatch.setattr(wslog, "_clock", _FixedClock())
    session = Session("c1")
    conn = SimpleNamespace(session=session, id="c1", client_ip="10.0.0.1", backend=None,
                           subject="ü", age=lambda: 1.23456)
    fields = Connection.summary(conn)  # type: ignore[arg-type]
    assert tuple(fields) == SUMMARY_KEYS
    assert wslog.closed_line(fields) == _reference_line("connection.closed", fields)
    fields["close_code_client"] = CloseCode.GOING_AWAY
    assert wslog.closed_line(fields) == _reference_line("connection.closed", fields)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(texts, texts, texts, texts, codes, maybe_text,
       st.floats(min_value=0, max_value=1e9).map(lambda x: round(x, 6)), counts, counts,
       maybe_text)
def test_request_line_is_json_lines(
    request_id: str, client: str, method: str, path: str, status: int | None,
    backend: str | None, duration_s: float, bytes_in: int, bytes_out: int, error: str | None,
) -> None:
    fields = {"request_id": request_id, "client": client, "method": method, "path": path,
              "status": status, "backend": backend, "duration_s": duration_s,
              "bytes_in": bytes_in, "bytes_out": bytes_out, "error": error}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wslog, "_clock", _FixedClock())
        line = wslog.request_line(request_id, client, method, path, status, backend,
                                  duration_s, bytes_in, bytes_out, error)
        assert line == _reference_line("http.request", fields)


@settings(derandomize=True, max_examples=2000, deadline=None)
@given(st.one_of(st.floats(min_value=0, max_value=2e9), st.floats(min_value=0, max_value=1e-3),
                 st.floats(), st.integers(0, 10**7).map(lambda us: us / 1e6)))
def test_seconds_are_written_as_rounded_floats_repr(seconds: float) -> None:
    assert wslog.seconds_repr(seconds) == float.__repr__(round(seconds, 6))


def test_direct_put_only_where_json_line_would_write_alone(written: list[str]) -> None:
    """The caller renders only under configure_logging's JSON set-up with INFO on and no
    context variable bound (a worker's pid and index: info_line() merges them)."""
    assert wslog.direct_put() is not None
    structlog.contextvars.bind_contextvars(worker=1)
    try:
        assert wslog.direct_put() is None
    finally:
        structlog.contextvars.clear_contextvars()
    assert wslog.direct_put() is not None  # the variable made, no longer bound
    with structlog.testing.capture_logs():
        assert wslog.direct_put() is None
    wslog.configure_logging("warning")
    assert wslog.direct_put() is None


@settings(derandomize=True, max_examples=400, deadline=None)
@given(st.floats(min_value=0, max_value=2e9) | st.floats(allow_nan=True, allow_infinity=True)
       | st.integers(min_value=0, max_value=10**9).map(lambda n: n / 1000)
       | st.integers(min_value=0, max_value=10**9).map(lambda n: n / 1000 + 0.0005))
def test_millis_repr_is_repr_of_round(seconds: float) -> None:
    """The closed line's duration: repr(round(x, 3)), also of a value rounded already
    (summary()'s), half-way cases among them."""
    expected = float.__repr__(round(seconds, 3))
    assert wslog.millis_repr(seconds) == expected
    if seconds == seconds:  # not NaN
        assert wslog.millis_repr(round(seconds, 3)) == expected


@pytest.mark.parametrize("seconds", [0.0, -0.0, 0.0004, 0.0005, 0.0015, 0.001, 12.0, 0.1 + 0.2,
                                     999_999_999.9996, 1e9, 1e15, 1e17])
def test_millis_repr_edges(seconds: float) -> None:
    assert wslog.millis_repr(seconds) == float.__repr__(round(seconds, 3))


@settings(derandomize=True, max_examples=150, deadline=None)
@given(summaries, st.floats(min_value=0, max_value=1e9))
def test_closed_line_of_an_age_rounds_it(fields: dict[str, Any], age: float) -> None:
    """Connection.closed_line(age) hands the age unrounded: the line is summary()'s, of
    round(age, 3)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wslog, "_clock", _FixedClock())
        rounded = {**fields, "duration_s": round(age, 3)}
        args = [fields[key] for key in SUMMARY_KEYS]
        args[SUMMARY_KEYS.index("duration_s")] = age
        assert wslog.closed_line_of(*args) == _reference_line("connection.closed", rounded)
