"""wsproxy.auth.sources: where a token is found, and how it is taken out."""

from __future__ import annotations

import h11
import pytest

from wsproxy.auth import Credentials
from wsproxy.auth.sources import find_credentials, strip_credentials
from wsproxy.core.handshake import UpgradeRequest, check_upgrade

HANDSHAKE = [
    ("Host", "proxy.example"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]
ALL = ["header", "header:X-Api-Key", "query:token", "cookie:session", "subprotocol"]
PREFIX = "bearer."


def upgrade(target: str = "/chat", *headers: tuple[str, str]) -> UpgradeRequest:
    """A checked upgrade request with *headers* besides the handshake's own."""
    return check_upgrade(h11.Request(method="GET", target=target, headers=[*HANDSHAKE, *headers]))


def plain(target: str = "/", *headers: tuple[str, str]) -> UpgradeRequest:
    """A plain HTTP request as the HTTP relay sees it: no subprotocol offers parsed."""
    return UpgradeRequest(
        target=target.encode(), host=b"proxy.example", key=b"", subprotocols=(),
        extensions=(), origin=None,
        headers=tuple((k.lower().encode(), v.encode()) for k, v in headers),
    )


def own_headers(request: UpgradeRequest) -> list[tuple[bytes, bytes]]:
    """The headers of *request* besides the handshake's own."""
    handshake = {name.lower().encode() for name, _ in HANDSHAKE}
    return [h for h in request.headers if h[0] not in handshake]


def find(request: UpgradeRequest, token_from: list[str] | None = None) -> Credentials:
    return find_credentials(request, ALL if token_from is None else token_from, PREFIX)


# Finding…


@pytest.mark.parametrize(
    ("request_", "source", "token"),
    [
        (upgrade("/", ("Authorization", "Bearer abc.def")), "header", "abc.def"),
        (upgrade("/", ("Authorization", "bearer   abc")), "header", "abc"),
        (upgrade("/", ("X-Api-Key", "k-123")), "header:X-Api-Key", "k-123"),
        (upgrade("/?a=1&token=t%2B1%3D&b=2"), "query:token", "t+1="),
        (upgrade("/", ("Cookie", "theme=dark; session=s3cr3t; x=y")), "cookie:session", "s3cr3t"),
        (upgrade("/", ("Cookie", 'session="quoted"')), "cookie:session", "quoted"),
        (upgrade("/", ("Sec-WebSocket-Protocol", "chat, bearer.tok.en")), "subprotocol", "tok.en"),
    ],
)
def test_each_source(request_: UpgradeRequest, source: str, token: str) -> None:
    creds = find(request_)
    assert (creds.token, creds.source) == (token, source)


def test_nothing_found_is_no_token() -> None:
    assert find(upgrade("/chat?room=1", ("Cookie", "theme=dark"))) == Credentials(token=None)


@pytest.mark.parametrize(
    "header",
    [
        ("Authorization", "Basic dXNlcjpwYXNz"),
        ("Authorization", "Bearer"),
        ("Authorization", "Token abc"),
        ("X-Api-Key", ""),
        ("Cookie", "session="),
        ("Sec-WebSocket-Protocol", "bearer."),
    ],
)
def test_empty_or_foreign_values_are_not_tokens(header: tuple[str, str]) -> None:
    assert find(upgrade("/?token=", header)).token is None


def test_sources_are_tried_in_the_configured_order() -> None:
    request = upgrade(
        "/?token=from-query",
        ("Authorization", "Bearer from-header"),
        ("Sec-WebSocket-Protocol", "bearer.from-subprotocol"),
    )
    assert find(request, ["header", "query:token"]).token == "from-header"
    assert find(request, ["query:token", "header"]).token == "from-query"
    assert find(request, ["subprotocol", "header"]).token == "from-subprotocol"


def test_an_unconfigured_source_is_ignored() -> None:
    request = upgrade("/?token=q", ("Authorization", "Bearer h"))
    assert find(request, ["subprotocol"]) == Credentials(token=None)


def test_first_of_repeated_query_parameters() -> None:
    assert find(upgrade("/?token=one&token=two"), ["query:token"]).token == "one"


def test_a_percent_encoded_parameter_name_matches() -> None:
    assert find(upgrade("/?to%6Ben=x"), ["query:token"]).token == "x"


def test_a_cookie_in_a_second_cookie_header() -> None:
    creds = find(upgrade("/", ("Cookie", "a=1"), ("Cookie", "session=two")), ["cookie:session"])
    assert creds.token == "two"


def test_every_source_present_is_named_in_token_from_order() -> None:
    creds = find(upgrade("/?token=q", ("Sec-WebSocket-Protocol", "bearer.s, chat")))
    assert creds == Credentials(
        token="q", source="query:token", present=("query:token", "subprotocol"),
        auth_offers=("bearer.s",),
    )
    assert creds.strip_subprotocol == "bearer.s"


def test_credentials_that_lost_are_present_too() -> None:
    request = upgrade(
        "/?token=q", ("Authorization", "Bearer h"), ("X-Api-Key", "k"),
        ("Cookie", "session=c"), ("Sec-WebSocket-Protocol", "bearer.s"),
    )
    creds = find(request)
    assert (creds.token, creds.source) == ("h", "header")
    assert creds.present == tuple(ALL)


@pytest.mark.parametrize(
    ("target", "header"),
    [
        ("/?token=", ("X-Other", "1")),
        ("/?token", ("X-Other", "1")),
        ("/", ("Authorization", "Basic dXNlcjpwYXNz")),
        ("/", ("X-Api-Key", "")),
        ("/", ("Cookie", "session=")),
        ("/", ("Sec-WebSocket-Protocol", "bearer.")),
    ],
)
def test_an_empty_or_foreign_value_is_present_though_no_token(
    target: str, header: tuple[str, str]
) -> None:
    creds = find(upgrade(target, header))
    assert creds.token is None
    assert len(creds.present) == 1


def test_a_plain_request_has_no_subprotocol_to_win_with_but_its_offer_is_present() -> None:
    request = plain("/", ("Sec-WebSocket-Protocol", "bearer.s"))
    creds = find(request, ["subprotocol"])
    assert (creds.token, creds.present, creds.auth_offers) == (
        None, ("subprotocol",), ("bearer.s",)
    )


def test_a_non_ascii_token_keeps_its_bytes() -> None:
    creds = find(upgrade("/?token=%C3%A9"), ["query:token"])
    assert creds.token is not None
    assert creds.token.encode("latin-1") == "é".encode()


# Stripping…


def strip(target: str, *headers: tuple[str, str], token_from: list[str] | None = None):
    request = upgrade(target, *headers)
    return strip_credentials(request, find(request, token_from))


def test_the_query_parameter_is_removed_and_the_rest_kept_byte_for_byte() -> None:
    stripped = strip("/chat?b=2&token=secret&a=%41+1&&c", token_from=["query:token"])
    assert stripped.target == b"/chat?b=2&a=%41+1&&c"


def test_every_copy_of_the_parameter_is_removed() -> None:
    stripped = strip("/x?token=1&y=2&token=3&to%6Ben=4", token_from=["query:token"])
    assert stripped.target == b"/x?y=2"


def test_a_query_of_only_the_token_leaves_no_question_mark() -> None:
    assert strip("/x?token=secret", token_from=["query:token"]).target == b"/x"


def test_a_similar_parameter_name_is_kept() -> None:
    stripped = strip("/x?token2=a&xtoken=b&token=c", token_from=["query:token"])
    assert stripped.target == b"/x?token2=a&xtoken=b"


def test_the_subprotocol_offer_is_removed_everywhere() -> None:
    stripped = strip(
        "/",
        ("Sec-WebSocket-Protocol", "chat, bearer.secret"),
        ("Sec-WebSocket-Protocol", "bearer.secret"),
        token_from=["subprotocol"],
    )
    assert stripped.subprotocols == ("chat",)
    assert [v for k, v in stripped.headers if k == b"sec-websocket-protocol"] == [b"chat"]


def test_the_authorization_header_is_removed() -> None:
    stripped = strip("/", ("Authorization", "Bearer secret"), ("X-Other", "1"))
    assert stripped.header(b"authorization") is None
    assert stripped.header(b"x-other") == b"1"


def test_a_named_header_is_removed() -> None:
    stripped = strip("/", ("X-Api-Key", "secret"), token_from=["header:X-Api-Key"])
    assert stripped.header(b"x-api-key") is None


def test_the_cookie_is_removed_and_the_others_kept() -> None:
    stripped = strip(
        "/", ("Cookie", "a=1; session=secret; b=2"), ("Cookie", "session=x"),
        token_from=["cookie:session"],
    )
    assert [v for k, v in stripped.headers if k == b"cookie"] == [b"a=1; b=2"]


def test_no_token_changes_nothing() -> None:
    request = upgrade("/chat?room=1", ("Sec-WebSocket-Protocol", "chat"))
    assert strip_credentials(request, find(request)) == request


@pytest.mark.parametrize(
    ("target", "headers", "token_from"),
    [
        ("/?token=SeCrEt", [], ["query:token"]),
        ("/", [("Sec-WebSocket-Protocol", "bearer.SeCrEt, chat")], ["subprotocol"]),
        ("/", [("Authorization", "Bearer SeCrEt")], ["header"]),
        ("/", [("X-Key", "SeCrEt")], ["header:X-Key"]),
        ("/", [("Cookie", "session=SeCrEt")], ["cookie:session"]),
    ],
)
def test_the_token_is_nowhere_in_the_stripped_request(
    target: str, headers: list[tuple[str, str]], token_from: list[str]
) -> None:
    stripped = strip(target, *headers, token_from=token_from)
    assert b"SeCrEt" not in repr(stripped).encode()


# Every source present is stripped, not only the one that won (issue 14)…


def carrying(source: str, token: str) -> tuple[str, list[tuple[str, str]]]:
    """The query (without "?") and the headers that put *token* in *source*."""
    return {
        "header": ("", [("Authorization", f"Bearer {token}")]),
        "header:X-Api-Key": ("", [("X-Api-Key", token)]),
        "query:token": (f"token={token}", []),
        "cookie:session": ("", [("Cookie", f"session={token}")]),
        "subprotocol": ("", [("Sec-WebSocket-Protocol", f"bearer.{token}")]),
    }[source]


@pytest.mark.parametrize(
    ("winner", "loser"), [(w, lo) for w in ALL for lo in ALL if w != lo]
)
def test_a_losing_source_is_stripped_whichever_won(winner: str, loser: str) -> None:
    # The winner is tried first; the loser holds a second, stale token.
    win_query, win_headers = carrying(winner, "WiNnEr")
    lose_query, lose_headers = carrying(loser, "StAlE")
    query = "&".join(q for q in ("a=1", win_query, lose_query, "b=2") if q)
    request = upgrade(f"/x?{query}", ("Cookie", "theme=dark"), *win_headers, *lose_headers)
    creds = find(request, [winner, loser])
    assert (creds.token, creds.source) == ("WiNnEr", winner)
    stripped = strip_credentials(request, creds)
    assert b"StAlE" not in repr(stripped).encode()
    assert b"WiNnEr" not in repr(stripped).encode()
    assert stripped.target == b"/x?a=1&b=2"
    assert (b"cookie", b"theme=dark") in stripped.headers


def test_every_occurrence_of_every_source_is_stripped() -> None:
    stripped = strip(
        "/x?token=1&keep=a&to%6Ben=2&token&keep=b",
        ("Authorization", "Bearer h1"), ("Authorization", "Basic aDI="),
        ("X-Api-Key", "k1"), ("X-Api-Key", "k2"),
        ("Cookie", "session=c1; theme=dark; session=c2"), ("Cookie", "session=c3"),
        ("Sec-WebSocket-Protocol", "bearer.s1, chat, bearer.s2"),
        ("Sec-WebSocket-Protocol", "bearer.s3"),
    )
    assert stripped.target == b"/x?keep=a&keep=b"
    assert stripped.subprotocols == ("chat",)
    assert own_headers(stripped) == [
        (b"cookie", b"theme=dark"), (b"sec-websocket-protocol", b"chat"),
    ]


@pytest.mark.parametrize(
    ("cookies", "kept"),
    [
        (["a=1;b=2; session=x;  c=\"q r\""], [b'a=1;b=2;  c="q r"']),
        (["session=x; a=1"], [b"a=1"]),
        (["a=1; session=x"], [b"a=1"]),
        (["session=x", "a=1;;b", "session"], [b"a=1;;b"]),
        (["a=1;; session=x"], [b"a=1"]),
        (["sessionx=1; xsession=2; session =3"], [b"sessionx=1; xsession=2"]),
    ],
)
def test_the_other_cookies_keep_their_bytes_and_order(
    cookies: list[str], kept: list[bytes]
) -> None:
    stripped = strip("/", *(("Cookie", c) for c in cookies), token_from=["cookie:session"])
    assert [v for k, v in stripped.headers if k == b"cookie"] == kept


def test_a_foreign_authorization_scheme_is_stripped_when_header_is_a_source() -> None:
    # Not a bearer token, so not checked; but a credential the backend must not see.
    stripped = strip("/?token=q", ("Authorization", "Basic dXNlcjpwYXNz"))
    assert stripped.header(b"authorization") is None


def test_an_unconfigured_source_is_not_stripped() -> None:
    request = upgrade("/?token=q&other=o", ("Authorization", "Bearer h"), ("Cookie", "session=c"))
    stripped = strip_credentials(request, find(request, ["query:token"]))
    assert stripped.target == b"/?other=o"
    assert stripped.header(b"authorization") == b"Bearer h"
    assert stripped.header(b"cookie") == b"session=c"


def test_a_plain_requests_subprotocol_header_is_stripped() -> None:
    request = plain("/p?q=1", ("Sec-WebSocket-Protocol", "bearer.s, chat"), ("X-Api-Key", "k"))
    stripped = strip_credentials(request, find(request))
    assert stripped.headers == ((b"sec-websocket-protocol", b"chat"),)
    assert stripped.target == b"/p?q=1"
