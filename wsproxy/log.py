"""structlog set-up and the catalogue of event names.

Event names are stable, dotted and lower-case; values go in keys:
    proxy.listening, proxy.stopping, proxy.stopped,
    connection.opened, connection.rejected, connection.closed,
    upstream.failed, accept.backoff,
    http.request, http.refused, upstream.bad_response (plain HTTP)
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog once: JSON lines on stdout, or a console format for humans."""
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
    structlog.configure(
        processors=shared + renderer,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("wsproxy")
    return logger
