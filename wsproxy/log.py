"""structlog set-up and the catalogue of event names.

Event names are stable, dotted and lower-case; values go in keys:
    proxy.listening, proxy.stopping, proxy.stopped,
    connection.opened, connection.rejected, connection.closed,
    upstream.failed, accept.backoff,
    http.request, http.refused, upstream.bad_response (plain HTTP)

Lines go to stdout through a bounded buffer and a writer thread (wsproxy.log_buffer):
a stdout that is not read fast enough costs dropped lines, counted in
``wsproxy_log_lines_dropped_total``, never a stalled event loop.
"""

from __future__ import annotations

import atexit
import logging
import sys

import structlog

from wsproxy.log_buffer import LineBuffer, stdout_writer

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

#: The process's buffer in front of stdout, once configure_logging() has made it.
_buffer: LineBuffer | None = None


class BufferedLogger:
    """structlog's final logger: the rendered line goes to the buffer, whatever its level."""

    __slots__ = ("_put",)

    def __init__(self, buffer: LineBuffer) -> None:
        self._put = buffer.put

    def msg(self, message: str) -> None:
        self._put(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog once: JSON lines on stdout, or a console format for humans."""
    global _buffer
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "console":
        renderer: list[structlog.typing.Processor] = [
            structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        ]
    else:
        renderer = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    if _buffer is None:  # one per process: loggers cached on first use keep theirs
        _buffer = LineBuffer(stdout_writer())
        atexit.register(_buffer.close)  # write what is queued (proxy.stopped), bounded
    logger = BufferedLogger(_buffer)
    structlog.configure(
        processors=shared + renderer,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *_: logger,
        cache_logger_on_first_use=True,
    )


def dropped_lines() -> int:
    """Log lines dropped so far because stdout was not read fast enough (or closed)."""
    return 0 if _buffer is None else _buffer.dropped


def get_logger() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("wsproxy")
    return logger
