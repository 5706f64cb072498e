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


def test_the_subprotocol_offer_and_query_parameter_are_marked_for_stripping() -> None:
    creds = find(upgrade("/?token=q", ("Sec-WebSocket-Protocol", "bearer.s, chat")))
    assert creds == Credentials(
        token="q", source="query:token", strip_query="token", strip_subprotocol="bearer.s"
    )


def test_credentials_that_lost_are_stripped_too() -> None:
    # The header wins, but the query token and the subprotocol token are credentials
    # the backend must not see either.
    request = upgrade(
        "/?token=q", ("Authorization", "Bearer h"), ("Sec-WebSocket-Protocol", "bearer.s")
    )
    creds = find(request)
    assert (creds.token, creds.source) == ("h", "header")
    assert (creds.strip_query, creds.strip_subprotocol) == ("token", "bearer.s")


def test_the_winning_query_parameter_is_the_one_stripped() -> None:
    creds = find(upgrade("/?a=&b=tok"), ["query:a", "query:b"])
    assert (creds.token, creds.strip_query) == ("tok", "b")


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
