"""structlog set-up and the catalogue of event names.

Event names are stable, dotted and lower-case; values go in keys:
    proxy.listening, proxy.stopping, proxy.stopped,
    connection.opened, connection.rejected, connection.closed,
    upstream.failed, accept.backoff,
    http.request, http.refused, upstream.bad_response (plain HTTP)

A JSON line is made by one processor, ``json_line`` (what ``merge_contextvars``,
``add_log_level``, ``TimeStamper(fmt="iso", utc=True)``, ``dict_tracebacks`` and
``JSONRenderer()`` did as five), with the same bytes: ``json.dumps(default=...)``
builds a JSONEncoder per call, so the line is rendered by one JSONEncoder made once
with the same settings (public API only; errors raise as json.dumps's do). The
timestamp is TimeStamper's string, with the date and time of the current second
formatted once a second (the datetime way cost ~16k a line).
Measured with callgrind, the two canonical lines of every connection cost ~220k
instructions of an upgrade's ~1.39M before, ~120k after.

The canonical lines (``connection.opened``, ``connection.closed``, ``http.request``) go
through ``info_line()``: the same event dict and the same processor, without
structlog's per-call machinery (the lazy proxy, the bound logger's copy of its
context, the chain's loop: ~20k instructions a line), while structlog's configuration
is the one ``configure_logging`` made; under any other (a test's ``capture_logs``, the
console format) they go through structlog as every other line does.

The two lines of every WebSocket connection are cheaper still: ``direct_put()`` tells
when the caller may render them itself, with ``opened_line()`` and ``closed_line()``,
which write json_line's bytes for those fields with one f-string (the JSON encoder took
~1.5k instructions a field, ~45k for ``connection.closed``; tests/unit/test_log_render.py
compares the two on generated values).

Lines go to stdout through a bounded buffer and a writer thread (wsproxy.log_buffer):
a stdout that is not read fast enough costs dropped lines, counted in
``wsproxy_log_lines_dropped_total``, never a stalled event loop.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from json.encoder import encode_basestring_ascii
from typing import Any, Final, Protocol, cast

import structlog
from structlog.contextvars import merge_contextvars
from structlog.processors import dict_tracebacks

from wsproxy.log_buffer import LineBuffer, stdout_writer

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

#: The process's buffer in front of stdout, once configure_logging() has made it.
_buffer: LineBuffer | None = None


def _fallback(obj: Any) -> Any:
    """A value JSON has no form for: what structlog's JSONRenderer writes for it (the
    object's ``__structlog__()``, else its repr)."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


#: One encoder for every line: json.dumps(default=...) would build one per call.
_ENCODER: Final = json.JSONEncoder(default=_fallback)


def render_json(event_dict: MutableMapping[str, Any]) -> str:
    """What structlog's ``JSONRenderer()`` writes, byte for byte (module doc)."""
    return _ENCODER.encode(event_dict)


class _Clock:
    """``datetime.now(tz=utc).isoformat()`` with "Z" for "+00:00", as TimeStamper(fmt="iso",
    utc=True) writes it, from the same clock (time.time_ns, microseconds floored), with
    the date and time of the current second formatted once a second: the datetime way
    cost ~16k instructions a line."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self) -> str:
        return self.stamp_at(time.time_ns())

    def stamp_at(self, ns: int) -> str:
        """The timestamp of *ns* nanoseconds since the epoch."""
        second, ns = divmod(ns, 1_000_000_000)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._prefix = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        micro = ns // 1000
        # isoformat() leaves the fraction out when it is zero.
        return f"{self._prefix}.{micro:06d}Z" if micro else self._prefix + "Z"




def json_line(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """The processors of a JSON line, as one (module doc)."""
    event_dict = merge_contextvars(logger, method_name, event_dict)
    # add_log_level: "warn" and "exception" are spelled as their levels.
    event_dict["level"] = _LEVEL_OF.get(method_name, method_name)
    event_dict["timestamp"] = _clock.stamp()
    if "exc_info" in event_dict:
        event_dict = dict_tracebacks(logger, method_name, event_dict)
    return render_json(event_dict)


_LEVEL_OF: Final = {"warn": "warning", "exception": "error"}


class BufferedLogger:
    """structlog's final logger: the rendered line goes to the buffer, whatever its level."""

    __slots__ = ("_put",)

    def __init__(self, buffer: LineBuffer) -> None:
        self._put = buffer.put

    def msg(self, message: str) -> None:
        self._put(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _Direct:
    """What ``info_line`` needs to write a line itself: the buffer's put, the lowest level
    written, and the wrapper class that tells structlog's configuration is still ours."""

    __slots__ = ("level", "put", "wrapper")

    def __init__(self, put: Callable[[str], None], level: int, wrapper: object) -> None:
        self.put = put
        self.level = level
        self.wrapper = wrapper


#: Set by configure_logging() for the JSON format.
_direct: _Direct | None = None


def _ours() -> _Direct | None:
    """The direct way, if structlog is still configured as configure_logging() left it."""
    direct = _direct
    if direct is None:
        return None
    config = _STRUCTLOG_CONFIG
    if config is None:  # (structlog moved it: its public copy, a dict made per call)
        got = structlog.get_config()
        wrapper, procs = got["wrapper_class"], got["processors"]
    else:  # read in place: get_config()'s dict cost ~3.5k instructions, twice an upgrade
        wrapper, procs = config.default_wrapper_class, config.default_processors
    if wrapper is not direct.wrapper:
        return None
    if len(procs) != 1 or procs[0] is not json_line:  # capture_logs() edits it in place
        return None
    return direct


#: structlog's configuration object, whose attributes get_config() copies (private:
#: None if it moves, and _ours() asks get_config()).
_STRUCTLOG_CONFIG: Final[Any] = (
    getattr(structlog._config, "_CONFIG", None)
    if all(hasattr(getattr(structlog._config, "_CONFIG", None), name)
           for name in ("default_wrapper_class", "default_processors"))
    else None
)


def info_line(event: str, fields: dict[str, Any]) -> None:
    """``log.info(event, **fields)``, the same line, written without structlog's per-call
    machinery (module doc). *fields* is the caller's to give: it becomes the line."""
    direct = _ours()
    if direct is None:
        get_logger().info(event, **fields)
        return
    if direct.level <= logging.INFO:
        fields["event"] = event
        direct.put(json_line(None, "info", fields))


def direct_put() -> Callable[[str], None] | None:
    """Where a canonical INFO line rendered by ``opened_line()``/``closed_line()`` goes:
    the buffer's put, when configure_logging()'s JSON set-up is in force with INFO on and
    no context variable is bound (a worker's are: its lines take ``info_line()``, which
    merges them in); else None."""
    direct = _ours()
    if direct is None or direct.level > logging.INFO:
        return None
    # No structlog context variable made yet (bind_contextvars() registers each in
    # _CONTEXT_VARS): none can be bound, and the look-up through a copy of the
    # context (~2k instructions a line) is skipped.
    if (_STRUCTLOG_VARS is None or _STRUCTLOG_VARS) and merge_contextvars(None, "info", {}):
        return None
    return direct.put


#: structlog's registry of its context variables (private: None if it moves).
_STRUCTLOG_VARS: Final[dict[str, Any] | None] = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)


#: The C function json writes a str with (ensure_ascii).
_str: Final = encode_basestring_ascii


def _tail(event: str) -> str:
    """The end of a line, as json_line writes it: event, level and timestamp."""
    return f', "event": "{event}", "level": "info", "timestamp": "{_clock.stamp()}"}}'


def opened_line(conn_id: str, client: str, backend: str | None, subject: str | None) -> str:
    """``connection.opened`` as json_line renders it."""
    return (
        f'{{"conn_id": {_str(conn_id)}, "client": {_str(client)}, '
        f'"backend": {"null" if backend is None else _str(backend)}, '
        f'"subject": {"null" if subject is None else _str(subject)}'
    ) + _tail("connection.opened")


def closed_line(f: Mapping[str, Any]) -> str:
    """``connection.closed`` of the fields of wsproxy.io.connection's ``summary()`` (in
    its order), as json_line renders them: strs or None, ints (the close codes: or None)
    and the float duration."""
    return closed_line_of(
        f["conn_id"], f["client"], f["backend"], f["subject"], f["state"], f["duration_s"],
        f["close_code_client"], f["close_code_upstream"], f["initiator"], f["reason"],
        f["messages_to_backend"], f["messages_to_client"], f["bytes_to_backend"],
        f["bytes_to_client"], f["undelivered_to_client"], f["undelivered_to_backend"],
    )


def closed_line_of(
    conn_id: str, client: str, backend: str | None, subject: str | None, state: str,
    duration_s: float, close_code_client: int | None, close_code_upstream: int | None,
    initiator: str | None, reason: str | None, messages_to_backend: int,
    messages_to_client: int, bytes_to_backend: int, bytes_to_client: int,
    undelivered_to_client: int, undelivered_to_backend: int,
) -> str:
    """closed_line() of its fields as arguments (no dict built and read back). The
    counters are plain ints (an f-string writes int.__repr__'s digits for those); the close
    codes may be IntEnums, which JSON writes as ints. *duration_s* is written rounded to
    milliseconds (millis_repr(): summary()'s value, which is rounded already, or the age
    itself, rounded here the cheaper way). Rendered by ``render_closed``: the compiled
    twin where it was built (~2k instructions against the f-string's ~26k)."""
    return render_closed(
        _clock.stamp(), conn_id, client, backend, subject, state, duration_s,
        close_code_client, close_code_upstream, initiator, reason, messages_to_backend,
        messages_to_client, bytes_to_backend, bytes_to_client, undelivered_to_client,
        undelivered_to_backend,
    )


def py_render_closed(
    stamp: str, conn_id: str, client: str, backend: str | None, subject: str | None,
    state: str, duration_s: float, close_code_client: int | None,
    close_code_upstream: int | None, initiator: str | None, reason: str | None,
    messages_to_backend: int, messages_to_client: int, bytes_to_backend: int,
    bytes_to_client: int, undelivered_to_client: int, undelivered_to_backend: int,
) -> str:
    """``connection.closed`` with the timestamp *stamp*, as json_line renders it: one
    f-string (the reference of ``_lines.render_closed``, its compiled twin)."""
    return (
        f'{{"conn_id": {_str(conn_id)}, "client": {_str(client)}, '
        f'"backend": {"null" if backend is None else _str(backend)}, '
        f'"subject": {"null" if subject is None else _str(subject)}, '
        f'"state": {_str(state)}, "duration_s": {millis_repr(duration_s)}, '
        f'"close_code_client": '
        f'{"null" if close_code_client is None else int.__repr__(close_code_client)}, '
        f'"close_code_upstream": '
        f'{"null" if close_code_upstream is None else int.__repr__(close_code_upstream)}, '
        f'"initiator": {"null" if initiator is None else _str(initiator)}, '
        f'"reason": {"null" if reason is None else _str(reason)}, '
        f'"messages_to_backend": {messages_to_backend}, '
        f'"messages_to_client": {messages_to_client}, '
        f'"bytes_to_backend": {bytes_to_backend}, '
        f'"bytes_to_client": {bytes_to_client}, '
        f'"undelivered_to_client": {undelivered_to_client}, '
        f'"undelivered_to_backend": {undelivered_to_backend}, '
        f'"event": "connection.closed", "level": "info", "timestamp": "{stamp}"}}'
    )


def millis_repr(seconds: float) -> str:
    """``float.__repr__(round(seconds, 3))``, from one C format in the usual case (round()
    and repr() run dtoa twice, ~6k instructions a line). The digits of ``.3f`` are
    round()'s (both round the exact binary value half-even), and below 1e9 a decimal of
    at most 12 digits is what repr() writes back for the float nearest to it, without
    an exponent (it takes one below 1e-4, which only 0.0 of these is). Idempotent:
    millis_repr(round(x, 3)) == millis_repr(x)."""
    if 0 <= seconds < 1e9:
        text = f"{seconds:.3f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    return float.__repr__(round(seconds, 3))


def seconds_repr(seconds: float) -> str:
    """``float.__repr__(round(seconds, 6))``, from one C format in the usual case (the
    two calls cost ~7k instructions a line): the digits of ``.6f`` are round()'s, and
    below 1e9 no shorter decimal has the same float, so repr() writes them too, but
    for its exponent form below 1e-4 (left to repr())."""
    if 0 <= seconds < 1e9:
        text = f"{seconds:.6f}".rstrip("0")
        if not text.startswith("0.0000"):
            return text + "0" if text.endswith(".") else text
    return float.__repr__(round(seconds, 6))


def request_line(request_id: str, client: str, method: str, path: str, status: int | None,
                 backend: str | None, duration_s: float, bytes_in: int, bytes_out: int,
                 error: str | None) -> str:
    """``http.request`` as json_line renders it (the fields of the HTTP relay's line),
    *duration_s* rounded to 6 digits (seconds_repr()); the byte counts plain ints."""
    return request_line_of(request_id, request_fields(client, method, path, status, backend),
                           duration_s, bytes_in, bytes_out, error)


def request_fields(client: str, method: str, path: str, status: int | None,
                   backend: str | None) -> str:
    """The fields of request_line() from ``client`` to ``backend`` (and the comma after
    them): what the lines of a keep-alive connection mostly repeat, which its relay
    renders once (request_line_of())."""
    return (
        f'"client": {_str(client)}, "method": {_str(method)}, "path": {_str(path)}, '
        f'"status": {"null" if status is None else int.__repr__(status)}, '
        f'"backend": {"null" if backend is None else _str(backend)}, '
    )


def request_line_of(request_id: str, fields: str, duration_s: float, bytes_in: int,
                    bytes_out: int, error: str | None) -> str:
    """request_line() with its middle rendered by request_fields() (*fields*)."""
    return (
        f'{{"request_id": {_str(request_id)}, {fields}'
        f'"duration_s": {seconds_repr(duration_s)}, '
        f'"bytes_in": {bytes_in}, "bytes_out": {bytes_out}, '  # (plain ints: their repr)
        f'"error": {"null" if error is None else _str(error)}'
    ) + _tail("http.request")


def info_enabled() -> bool:
    """Whether an INFO line would be written (the cheap way when configure_logging's)."""
    direct = _ours()
    if direct is None:
        return get_logger().is_enabled_for(logging.INFO)
    return direct.level <= logging.INFO


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog once: JSON lines on stdout, or a console format for humans."""
    global _buffer, _direct
    processors: list[structlog.typing.Processor]
    if fmt == "console":
        processors = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()),
        ]
    else:
        processors = [json_line]
    if _buffer is None:  # one per process: loggers cached on first use keep theirs
        _buffer = LineBuffer(stdout_writer())
        atexit.register(_buffer.close)  # write what is queued (proxy.stopped), bounded
    logger = BufferedLogger(_buffer)
    wrapper = structlog.make_filtering_bound_logger(LEVELS[level])
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper,
        logger_factory=lambda *_: logger,
        cache_logger_on_first_use=True,
    )
    _direct = _Direct(_buffer.put, LEVELS[level], wrapper) if fmt != "console" else None


def dropped_lines() -> int:
    """Log lines dropped so far because stdout was not read fast enough (or closed)."""
    return 0 if _buffer is None else _buffer.dropped


def get_logger() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("wsproxy")
    return logger


class _Rendered(Protocol):
    def __call__(self, stamp: str, *fields: Any) -> str: ...


def _pick_lines() -> tuple[_Rendered, _Clock, str]:
    """The closed line's renderer and the clock: the compiled twins (wsproxy/_lines.c)
    where they were built and WSPROXY_NO_SPEEDUPS is not set, else the references."""
    python = (cast(_Rendered, py_render_closed), _Clock(), "python")
    if os.environ.get("WSPROXY_NO_SPEEDUPS", "") not in ("", "0"):
        return python
    try:
        import wsproxy._lines as _lines
    except ImportError:
        return python
    _lines.set_fallback(millis_repr)
    return _lines.render_closed, cast(_Clock, _lines.Clock()), "c"


render_closed: _Rendered
#: The lines' clock (its stamp() is every line's timestamp).
_clock: _Clock
#: "c" when the closed line and the clock are the compiled twins, "python" if not.
LINES_SPEEDUPS: str
render_closed, _clock, LINES_SPEEDUPS = _pick_lines()
