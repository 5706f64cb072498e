"""wsproxy.core.paths: the target a backend gets cannot climb out of its path prefix.

Examples first, then properties (hypothesis, derandomized: the same inputs every run):
an accepted target agrees with a literal transcription of RFC 3986 §5.2.4, holds no
dot-segment even as a backend decoding it once would read it, and joined with any
prefix stays under that prefix.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.core.handshake import check_upgrade
from wsproxy.core.paths import UnsafeTarget, backend_target, join
from wsproxy.errors import HandshakeRejected

NORMALISED = [
    (b"/", b"/"),
    (b"/chat?room=1", b"/chat?room=1"),
    (b"/../admin", b"/admin"),
    (b"/../../../admin?x=1", b"/admin?x=1"),
    (b"/a/./b/../c", b"/a/c"),
    (b"/a/b/..", b"/a/"),
    (b"/a/b/.", b"/a/b/"),
    (b"/..", b"/"),
    (b"/.", b"/"),
    (b"/a/..", b"/"),
    (b"/a//../b", b"/a/b"),
    (b"/..?next=/../x/%2e%2e/%2f", b"/?next=/../x/%2e%2e/%2f"),  # the query is untouched
    (b"/static/app.js", b"/static/app.js"),
    (b"/.well-known/acme", b"/.well-known/acme"),
    (b"/a/.../b", b"/a/.../b"),
    (b"/v1%2e2/x", b"/v1%2e2/x"),  # an encoded dot inside a name is a name
    (b"/a%20b/%41", b"/a%20b/%41"),
    (b"/a;v=1/b", b"/a;v=1/b"),
]

REFUSED = [
    (b"/%2e%2e/admin", "encoded dot-segment"),
    (b"/%2E%2E/admin", "encoded dot-segment"),
    (b"/.%2e/admin", "encoded dot-segment"),
    (b"/%2E./admin", "encoded dot-segment"),
    (b"/a/%2e/b", "encoded dot-segment"),
    (b"/a/%2e", "encoded dot-segment"),
    (b"/a%2fb", "encoded slash"),
    (b"/a%2F..%2Fadmin", "encoded slash"),
    (b"/a%5cb", "encoded backslash"),
    (b"/a%5C..", "encoded backslash"),
    (b"/a\\b", "backslash"),
    (b"/..\\admin", "backslash"),
    (b"/a%00.html", "encoded NUL"),
    (b"/..;/admin", "dot-segment with parameters"),
    (b"/.;x/admin", "dot-segment with parameters"),
    (b"/x/..#/../admin", "fragment"),
    (b"http://example.com/admin", "must be a path"),
    (b"*", "must be a path"),
]


@pytest.mark.parametrize(("target", "expected"), NORMALISED)
def test_dot_segments_are_removed(target: bytes, expected: bytes) -> None:
    assert backend_target(target) == expected


@pytest.mark.parametrize(("target", "reason"), REFUSED)
def test_ambiguous_targets_are_refused(target: bytes, reason: str) -> None:
    with pytest.raises(UnsafeTarget, match=reason):
        backend_target(target)


def test_the_prefix_is_joined_once_without_a_double_slash() -> None:
    assert join("/app", backend_target(b"/../admin")) == b"/app/admin"
    assert join("/app/", b"/x?y") == b"/app/x?y"
    assert join("", b"/x") == b"/x"
    assert join("/", b"/x") == b"/x"


def _upgrade(target: str) -> h11.Request:
    return h11.Request(method="GET", target=target, headers=[
        ("Host", "proxy"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
    ])


def test_an_upgrade_carries_the_normalised_target() -> None:
    assert check_upgrade(_upgrade("/a/../../admin?x=..")).target == b"/admin?x=.."


@pytest.mark.parametrize("target", ["/%2e%2e/admin", "/a%2fb", "/a\\b", "/..;/x"])
def test_an_ambiguous_upgrade_is_400(target: str) -> None:
    with pytest.raises(HandshakeRejected) as exc:
        check_upgrade(_upgrade(target))
    assert exc.value.status == 400


# Properties…


def rfc3986_remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 as written there: an input and an output buffer, rules A to E."""
    inp, out = path, b""
    while inp:
        if inp.startswith(b"../"):  # A
            inp = inp[3:]
        elif inp.startswith((b"./", b"/./")):  # A, B
            inp = inp[2:]
        elif inp == b"/.":
            inp = b"/"
        elif inp.startswith(b"/../"):
            inp = inp[3:]
            out = out[: max(out.rfind(b"/"), 0)]
        elif inp == b"/..":
            inp = b"/"
            out = out[: max(out.rfind(b"/"), 0)]
        elif inp in (b".", b".."):
            inp = b""
        else:
            end = inp.find(b"/", 1)
            end = len(inp) if end < 0 else end
            out, inp = out + inp[:end], inp[end:]
    return out


def segments_as_a_backend_reads_them(path: bytes) -> list[bytes]:
    """The segments once decoded once, split on "/" and "\\", parameters dropped."""
    decoded = unquote_to_bytes(path)
    return [s.split(b";", 1)[0] for s in re.split(rb"[/\\]", decoded)]


SEGMENT = st.lists(
    st.sampled_from(
        [b".", b"..", b"a", b"b.c", b"", b"%2e", b"%2E", b".%2e", b"%2e.", b"%2f", b"%5C",
         b"\\", b"%00", b"..;x", b".;", b";", b"%41", b"...", b"#", b"%", b"%2", b"%25"]
    ),
    max_size=4,
).map(b"".join)
TARGET = st.builds(
    lambda segments, query: b"/" + b"/".join(segments) + query,
    st.lists(SEGMENT, max_size=8),
    st.sampled_from([b"", b"?", b"?x=/../y", b"?q=%2e%2e"]),
)
PREFIX = st.sampled_from(["", "/", "/app", "/app/", "/a/b", "/.well-known"])
SETTINGS = settings(max_examples=1000, derandomize=True, deadline=None, database=None)


@SETTINGS
@given(TARGET, PREFIX)
def test_an_accepted_target_never_leaves_the_prefix(target: bytes, prefix: str) -> None:
    try:
        out = backend_target(target)
    except UnsafeTarget:
        return
    path, _, query = out.partition(b"?")
    assert query == target.partition(b"?")[2]
    assert path.startswith(b"/")
    assert path == rfc3986_remove_dot_segments(target.partition(b"?")[0])
    assert backend_target(out) == out  # nothing left to do
    read = segments_as_a_backend_reads_them(path)
    assert b".." not in read, read
    assert b"." not in read, read
    joined = join(prefix, out).partition(b"?")[0]
    base = prefix.rstrip("/").encode()
    assert rfc3986_remove_dot_segments(joined) == joined
    assert joined.startswith(base + b"/")
    assert segments_as_a_backend_reads_them(joined)[: base.count(b"/") + 1] == base.split(b"/")


@SETTINGS
@given(TARGET)
def test_a_refusal_is_for_an_ambiguous_encoding_only(target: bytes) -> None:
    """Whatever is refused holds one of the shapes a backend could read differently."""
    try:
        backend_target(target)
    except UnsafeTarget:
        path = target.partition(b"?")[0].lower()
        names = [s.split(b";", 1)[0] for s in path.split(b"/")]
        disguised = [n for n in names if n.replace(b"%2e", b".") in (b".", b"..") and
                     n not in (b".", b"..")]
        shapes = [b"\\", b"#", b"%2f", b"%5c", b"%00"]
        parametrised = [s for s in path.split(b"/")
                        if b";" in s and s.split(b";", 1)[0] in (b".", b"..")]
        assert any(s in path for s in shapes) or disguised or parametrised, target
