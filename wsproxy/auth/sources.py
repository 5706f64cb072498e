"""Where a client's token is, and how to take every credential out before the backend
sees it.

Browsers cannot set headers on a WebSocket, so a token may come in five places,
tried in the order of ``auth.token_from``:

    header          Authorization: Bearer <token>
    header:NAME     the raw value of header NAME
    query:NAME      the query parameter NAME (percent-decoded)
    cookie:NAME     the cookie NAME
    subprotocol     the Sec-WebSocket-Protocol offer "<subprotocol_prefix><token>"

Tokens are kept as the text of their bytes (Latin-1), so that ``token.encode("latin-1")``
gives back exactly what the client sent.

Only the first token found is checked, but a client may send several: a stale cookie
next to a fresh header, an old link's query token. Each is a credential all the same,
so ``strip_credentials`` removes every configured source that is present, the one
that won or not, valid or not, empty or not, every occurrence of it:

    header          every Authorization header, whatever its scheme
    header:NAME     every header NAME
    query:NAME      every parameter NAME (however its name is percent-encoded)
    cookie:NAME     every cookie NAME, in every Cookie header
    subprotocol     every offer that starts with the prefix, from the offers and
                    from the raw Sec-WebSocket-Protocol headers

The client's other query parameters and cookies go on byte for byte, in their order.
A plain HTTP request has no subprotocol offers, so that source never wins there, but
a Sec-WebSocket-Protocol header it carries is stripped all the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TypeVar
from urllib.parse import unquote_to_bytes

from wsproxy.auth import Credentials
from wsproxy.core.handshake import Header, RequestHead

#: An upgrade request or a plain one: stripping keeps its type.
Request = TypeVar("Request", bound=RequestHead)


def find_credentials(
    request: RequestHead, token_from: Sequence[str], subprotocol_prefix: str
) -> Credentials:
    """The first token found in the sources *token_from*, in their order, and every
    source present.

    Call this on the checked request, before the authenticator. A source whose value
    is empty does not count as found, but as present.

    Returns:
        Credentials with ``token=None`` when no source holds a token; ``present`` and
        ``auth_offers`` name what ``strip_credentials`` must remove.
    """
    offers: tuple[str, ...] = ()
    if "subprotocol" in token_from:
        offers = tuple(_auth_offers(request.headers, subprotocol_prefix))
    token: str | None = None
    source: str | None = None
    present: list[str] = []
    for name in token_from:
        kind, _, arg = name.partition(":")
        if name in present or not _is_present(request, kind, arg, offers):
            continue
        present.append(name)
        if token is None:
            found = _token(request, kind, arg, subprotocol_prefix)
            if found:
                token, source = found, name
    return Credentials(token=token, source=source, present=tuple(present), auth_offers=offers)


def strip_credentials(request: Request, credentials: Credentials) -> Request:
    """A copy of *request* without any of the credentials the backend must not see.

    Removes every occurrence of every source in ``credentials.present`` (see the
    module's table) and the ``auth_offers``; the rest of the target and of the
    headers stays as it was, byte for byte and in order.
    """
    params: set[str] = set()
    header_names: set[bytes] = set()
    cookies: set[bytes] = set()
    for name in credentials.present:
        kind, _, arg = name.partition(":")
        if kind == "query":
            params.add(arg)
        elif kind == "header":
            header_names.add(arg.lower().encode("latin-1") if arg else b"authorization")
        elif kind == "cookie":
            cookies.add(arg.encode("latin-1"))
    offers = frozenset(credentials.auth_offers)
    target = _without_query_params(request.target, params) if params else request.target
    headers: Sequence[Header] = request.headers
    if header_names:
        headers = [h for h in headers if h[0] not in header_names]
    if cookies:
        headers = list(_without_cookies(headers, cookies))
    subprotocols = request.subprotocols
    if offers:
        headers = list(_without_offers(headers, {o.encode("latin-1") for o in offers}))
        subprotocols = tuple(p for p in subprotocols if p not in offers)
    return dataclasses.replace(
        request, target=target, subprotocols=subprotocols, headers=tuple(headers)
    )


# Finding…


def _is_present(request: RequestHead, kind: str, arg: str, offers: Sequence[str]) -> bool:
    """Whether the request holds source *kind*:*arg* at all, whatever its value."""
    if kind == "header":
        name = arg.lower().encode("latin-1") if arg else b"authorization"
        return request.header(name) is not None
    if kind == "query":
        return any(key == arg for key, _ in _query_params(request.target))
    if kind == "cookie":
        return any(cookie == arg.encode("latin-1") for cookie in _cookie_names(request.headers))
    if kind == "subprotocol":
        return bool(offers)
    raise ValueError(f"unknown token source {kind!r}")  # the config schema admits no other


def _token(request: RequestHead, kind: str, arg: str, prefix: str) -> str | None:
    if kind == "header" and not arg:
        return _bearer(request.header(b"authorization"))
    if kind == "header":
        value = request.header(arg.lower().encode("latin-1"))
        return None if value is None else value.strip().decode("latin-1")
    if kind == "query":
        return _query_value(request.target, arg)
    if kind == "cookie":
        return _cookie_value(request.headers, arg.encode("latin-1"))
    # The offers an upgrade negotiates: a plain request has none to win with.
    offer = next((p for p in request.subprotocols if p.startswith(prefix)), None)
    return None if offer is None else offer[len(prefix):]


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


def _auth_offers(headers: Sequence[Header], prefix: str) -> Iterator[str]:
    """Every Sec-WebSocket-Protocol offer that starts with *prefix*, in order."""
    raw = prefix.encode("latin-1")
    for key, value in headers:
        if key == b"sec-websocket-protocol":
            for offer in value.split(b","):
                if offer.strip().startswith(raw):
                    yield offer.strip().decode("latin-1")


def _cookie_names(headers: Sequence[Header]) -> Iterator[bytes]:
    for key, value in headers:
        if key == b"cookie":
            for pair in value.split(b";"):
                yield pair.partition(b"=")[0].strip()


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


def _without_query_params(target: bytes, names: set[str]) -> bytes:
    path, question, query = target.partition(b"?")
    if not question:
        return target
    kept = [p for p in query.split(b"&") if not p or _param_name(p) not in names]
    rest = b"&".join(kept)
    return path + b"?" + rest if rest else path


def _param_name(part: bytes) -> str:
    return unquote_to_bytes(part.partition(b"=")[0]).decode("latin-1")


def _without_offers(headers: Sequence[Header], offers: set[bytes]) -> Iterator[Header]:
    for key, value in headers:
        if key != b"sec-websocket-protocol":
            yield key, value
            continue
        kept = b",".join(p for p in value.split(b",") if p.strip() not in offers).strip()
        if kept:
            yield key, kept


def _without_cookies(headers: Sequence[Header], names: set[bytes]) -> Iterator[Header]:
    """*headers* less the cookies *names*; each other cookie keeps its bytes."""
    for key, value in headers:
        pairs = value.split(b";") if key == b"cookie" else ()
        if not any(p.partition(b"=")[0].strip() in names for p in pairs):
            yield key, value
            continue
        kept = b";".join(
            p for p in pairs if p.strip() and p.partition(b"=")[0].strip() not in names
        ).strip()
        if kept:
            yield key, kept
