"""A small HTTP/1.1 GET client for the auth subrequests: h11 over anyio.

Used for a forward auth service and for a JWKS URL. One request per connection
(``Connection: close``), a cap on the body, and a deadline over the whole exchange
that the caller sets with ``anyio.fail_after``. This module is the seam for those
calls: every failure (refused, reset, TLS, garbled answer, body too big) leaves it
as an ``HttpError``.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11

from wsproxy.core.handshake import Header

#: JWKS documents are a few KiB; anything near this is not one.
MAX_BODY: Final = 1 << 20
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class HttpError(Exception):
    """The GET failed: no answer, a garbled one, or none in time."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An answer: status, headers (names lower case) and the body, if it was read."""

    status: int
    headers: tuple[Header, ...]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        """Every value of header *name* (lower case) joined with ", ", or None."""
        values = [v for k, v in self.headers if k == name]
        return b", ".join(values) if values else None


async def http_get(
    url: str,
    headers: Sequence[Header] = (),
    *,
    read_body: bool = True,
    max_body: int = MAX_BODY,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpResponse:
    """GET *url* with *headers* (Host and Connection are set here).

    There is no timeout of its own: callers wrap the call in ``anyio.fail_after``
    (and then catch ``TimeoutError``).

    Args:
        read_body: False to stop at the response head (forward auth needs no body).
        ssl_context: for https URLs; default: the system's trust store.

    Raises:
        HttpError: the connection failed or the answer was not valid HTTP/1.1.
    """
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise HttpError(f"not an http(s) URL: {url}")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = parts.netloc.rpartition("@")[2]
    request = h11.Request(
        method="GET",
        target=target.encode("latin-1"),
        headers=[
            (b"Host", authority.encode("latin-1")),
            (b"Connection", b"close"),
            *headers,
        ],
    )
    try:
        if parts.scheme == "https":
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                parts.hostname, port, ssl_context=ssl_context or _default_context(),
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(parts.hostname, port)
        async with stream:
            return await _exchange(stream, request, read_body, max_body)
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        # OSError covers refused, reset, unreachable and ssl.SSLError.
        raise HttpError(_describe(exc)) from exc
    except h11.ProtocolError as exc:
        # Its message may quote a header of ours (a token): the type is enough.
        raise HttpError(f"invalid HTTP exchange ({type(exc).__name__})") from exc


async def _exchange(
    stream: anyio.abc.ByteStream, request: h11.Request, read_body: bool, max_body: int
) -> HttpResponse:
    conn = h11.Connection(h11.CLIENT)
    await stream.send(conn.send(request) + conn.send(h11.EndOfMessage()))
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                data = b""
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            response = event
            if not read_body:
                break
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise HttpError(f"body over {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
        # InformationalResponse (1xx): wait for the final answer.
    if response is None:
        raise HttpError("connection closed before an answer")
    headers = tuple((bytes(k), bytes(v)) for k, v in response.headers)
    return HttpResponse(status=response.status_code, headers=headers, body=bytes(body))


def _describe(exc: BaseException) -> str:
    # connect_tcp reports "All connection attempts failed" and chains the reasons.
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    if isinstance(cause, OSError):
        exc = cause
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@functools.cache
def _default_context() -> ssl.SSLContext:
    # Loading the trust store takes milliseconds: once per process, not per request.
    return ssl.create_default_context()
