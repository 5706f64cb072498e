"""Where a client's token is, and how to take it out before the backend sees it.

Browsers cannot set headers on a WebSocket, so a token may come in five places,
tried in the order of ``auth.token_from``:

    header          Authorization: Bearer <token>
    header:NAME     the raw value of header NAME
    query:NAME      the query parameter NAME (percent-decoded)
    cookie:NAME     the cookie NAME
    subprotocol     the Sec-WebSocket-Protocol offer "<subprotocol_prefix><token>"

Tokens are kept as the text of their bytes (Latin-1), so that ``token.encode("latin-1")``
gives back exactly what the client sent.

A query parameter or an auth subprotocol offer is marked for removal even when an
earlier source won: whatever the client sent there is a credential too, and the
backend must not see it. ``strip_credentials`` then removes those, and the header or
cookie the winning token came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from urllib.parse import unquote_to_bytes

from wsproxy.auth import Credentials
from wsproxy.core.handshake import Header, UpgradeRequest


def find_credentials(
    request: UpgradeRequest, token_from: Sequence[str], subprotocol_prefix: str
) -> Credentials:
    """The first token found in the sources *token_from*, in their order.

    Call this on the checked upgrade request, before the authenticator. A source
    whose value is empty does not count as found.

    Returns:
        Credentials with ``token=None`` when no source holds a token; ``strip_query``
        and ``strip_subprotocol`` are set whenever such a credential is present.
    """
    token: str | None = None
    source: str | None = None
    strip_query: str | None = None
    strip_subprotocol: str | None = None
    for name in token_from:
        kind, _, arg = name.partition(":")
        found: str | None
        if kind == "query":
            found = _query_value(request.target, arg)
            # The winner's parameter, else the first one present.
            if found is not None and (strip_query is None or (token is None and found)):
                strip_query = arg
        elif kind == "subprotocol":
            offer = _auth_offer(request.subprotocols, subprotocol_prefix)
            found = None if offer is None else offer[len(subprotocol_prefix):]
            strip_subprotocol = offer
        else:
            found = _header_token(request, kind, arg)
        if token is None and found:
            token, source = found, name
    return Credentials(
        token=token, source=source, strip_query=strip_query, strip_subprotocol=strip_subprotocol
    )


def strip_credentials(request: UpgradeRequest, credentials: Credentials) -> UpgradeRequest:
    """A copy of *request* without the credentials the backend must not see.

    Removes every ``strip_query`` parameter from the target (the rest of the query
    byte for byte, in order), the ``strip_subprotocol`` offer (from ``subprotocols``
    and from the raw Sec-WebSocket-Protocol headers), and the header or cookie that
    the winning token came from (``source`` "header", "header:NAME", "cookie:NAME").
    """
    target = request.target
    subprotocols = request.subprotocols
    headers = request.headers
    if credentials.strip_query is not None:
        target = _without_query_param(target, credentials.strip_query)
    if credentials.strip_subprotocol is not None:
        offer = credentials.strip_subprotocol
        subprotocols = tuple(p for p in subprotocols if p != offer)
        headers = tuple(_without_offer(headers, offer.encode("latin-1")))
    kind, _, arg = (credentials.source or "").partition(":")
    if kind == "header":
        drop = arg.lower().encode("latin-1") if arg else b"authorization"
        headers = tuple(h for h in headers if h[0] != drop)
    elif kind == "cookie":
        headers = tuple(_without_cookie(headers, arg.encode("latin-1")))
    return dataclasses.replace(request, target=target, subprotocols=subprotocols, headers=headers)


# Finding…


def _header_token(request: UpgradeRequest, kind: str, arg: str) -> str | None:
    if kind == "header" and not arg:
        return _bearer(request.header(b"authorization"))
    if kind == "header":
        value = request.header(arg.lower().encode("latin-1"))
        return None if value is None else value.strip().decode("latin-1")
    if kind == "cookie":
        return _cookie_value(request.headers, arg.encode("latin-1"))
    raise ValueError(f"unknown token source {kind!r}")  # config.py admits no other


def _bearer(value: bytes | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 §2.1), else None."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip().decode("latin-1") or None


def _query_value(target: bytes, name: str) -> str | None:
    """The first value of query parameter *name* ("" if it has none), else None."""
    for key, value in _query_params(target):
        if key == name:
            return unquote_to_bytes(value).decode("latin-1")
    return None


def _query_params(target: bytes) -> Iterator[tuple[str, bytes]]:
    _, _, query = target.partition(b"?")
    for part in query.split(b"&"):
        if part:
            yield _param_name(part), part.partition(b"=")[2]


def _auth_offer(subprotocols: Sequence[str], prefix: str) -> str | None:
    for offer in subprotocols:
        if offer.startswith(prefix) and len(offer) > len(prefix):
            return offer
    return None


def _cookie_value(headers: Sequence[Header], name: bytes) -> str | None:
    for key, value in headers:
        if key != b"cookie":
            continue
        for pair in value.split(b";"):
            cookie, eq, cookie_value = pair.strip().partition(b"=")
            if eq and cookie.strip() == name:
                # RFC 6265 §4.1.1: a cookie value may be wrapped in double quotes.
                text = cookie_value.strip()
                if len(text) >= 2 and text[:1] == text[-1:] == b'"':
                    text = text[1:-1]
                return text.decode("latin-1") or None
    return None


# Stripping…


def _without_query_param(target: bytes, name: str) -> bytes:
    path, question, query = target.partition(b"?")
    if not question:
        return target
    kept = [p for p in query.split(b"&") if not p or _param_name(p) != name]
    rest = b"&".join(kept)
    return path + b"?" + rest if rest else path


def _param_name(part: bytes) -> str:
    return unquote_to_bytes(part.partition(b"=")[0]).decode("latin-1")


def _without_offer(headers: Sequence[Header], offer: bytes) -> Iterator[Header]:
    for key, value in headers:
        if key != b"sec-websocket-protocol":
            yield key, value
            continue
        kept = b",".join(p for p in value.split(b",") if p.strip() != offer).strip()
        if kept:
            yield key, kept


def _without_cookie(headers: Sequence[Header], name: bytes) -> Iterator[Header]:
    for key, value in headers:
        if key != b"cookie":
            yield key, value
            continue
        kept = b"; ".join(
            p.strip() for p in value.split(b";")
            if p.strip() and p.strip().partition(b"=")[0].strip() != name
        )
        if kept:
            yield key, kept
