"""clients/python's connect requests without sockets: where the token goes, bad options."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidURI

from wsproxy_client import Dropped, QueueFull, WsproxyClient


def request(token_in: str, token: str | None = "t0k.en", url: str = "ws://h/p?a=1&x=old",
            **kwargs: object) -> tuple[str, list[tuple[str, str]], list[str]]:
    client = WsproxyClient(url, token_in=token_in, **kwargs)  # type: ignore[arg-type]
    return client._request(token)


def test_the_token_goes_where_token_in_says() -> None:
    assert request("header") == ("ws://h/p?a=1&x=old", [("Authorization", "Bearer t0k.en")], [])
    assert request("header:X-Api-Key")[1] == [("X-Api-Key", "t0k.en")]
    assert request("query:x")[0] == "ws://h/p?a=1&x=t0k.en"  # replaces the one there
    assert request("query:access_token")[0] == "ws://h/p?a=1&x=old&access_token=t0k.en"
    assert request("subprotocol", subprotocols=["chat"])[2] == ["bearer.t0k.en", "chat"]
    assert request("subprotocol:tok-")[2] == ["tok-t0k.en"]


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_connects_without_one(token: str | None) -> None:
    assert request("header", token, headers={"X-App": "1"}) == (
        "ws://h/p?a=1&x=old", [("X-App", "1")], [])


@pytest.mark.parametrize("token_in", ["", "cookie:x", "query", "query:", "header:bad name",
                                      "Header", "subprotocol:"])
def test_an_unknown_token_in_is_refused(token_in: str) -> None:
    with pytest.raises(ValueError, match="token_in"):
        WsproxyClient("ws://h/", token_in=token_in)


def test_bad_urls_and_clashing_connect_kwargs_are_refused_at_once() -> None:
    with pytest.raises(InvalidURI):
        WsproxyClient("http://h/")
    with pytest.raises(ValueError, match="additional_headers"):
        WsproxyClient("ws://h/", connect_kwargs={"additional_headers": {}})
    with pytest.raises(ValueError, match=r"queue\.max_bytes"):
        WsproxyClient("ws://h/", max_queued_bytes=-1)


@pytest.mark.anyio
async def test_send_takes_text_or_bytes_and_queues_before_the_start() -> None:
    dropped: list[object] = []
    client = WsproxyClient("ws://h/", max_queued_messages=2, on_event=dropped.append)
    await client.send("a")
    await client.send(b"bc")
    assert client.queued == (2, 3)
    with pytest.raises(QueueFull):
        await client.send("d")
    assert dropped == [Dropped("d", "queue full")]
    assert client.queued == (2, 3)  # the queued ones stay
    with pytest.raises(TypeError, match="str or bytes"):
        await client.send(123)  # type: ignore[arg-type]
