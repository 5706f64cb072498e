"""The request target a backend gets: a path that cannot climb out of its prefix.

A backend URL's path is a prefix (``ws://app:8000/app``): the client's target is
appended to it. Joined as it came, ``/../admin`` would reach ``/app/../admin``, which
the backend (or anything between) resolves to ``/admin``. So, when a request is
checked, before any backend is dialled:

- the dot-segments of the path are removed (RFC 3986 §5.2.4): ``/a/./b/../c`` is
  ``/a/c`` and ``/../admin`` is ``/admin``, never above ``/``; the query is untouched;
- what a backend might decode or split into a dot-segment or a separator that the
  proxy does not see is refused (400), since no one form of it is safe for every
  backend: a percent-encoded dot in a dot-segment (``%2e``, ``.%2E``), an encoded
  slash or backslash (``%2f``, ``%5c``), a raw backslash, ``%00``, a dot-segment
  with path parameters (``..;x``, which servlet containers read as ``..``), and a
  ``#`` in the path (no part of a request target, RFC 9112 §3.2; a backend that cuts
  it off would see a dot-segment in ``/..#``).

Targets that are not origin-form (absolute-form, ``*``) are refused too: they would be
glued onto the prefix. Percent-encoded dots elsewhere (``/v1%2e2``) pass as they are.
"""

from __future__ import annotations

import re
from typing import Final

#: The common case ends at the first character that can need work, or at the query.
_PLAIN_PATH: Final = re.compile(rb"[^.%\\#?]*")
_QUESTION: Final = ord("?")
#: Where a path can need more than a glance: a segment that starts with a dot, and
#: every character or escape refused below.
_SUSPECT: Final = re.compile(rb"/\.|[\\#]|%(?:2[eEfF]|5[cC]|00)")
#: Encodings a backend may decode into something the proxy did not see (compared
#: lower-cased), with the reason a client is told.
_REFUSED_ENCODINGS: Final = (
    (b"%2f", "an encoded slash in the path"),
    (b"%5c", "an encoded backslash in the path"),
    (b"%00", "an encoded NUL in the path"),
)
_DOT_SEGMENTS: Final = frozenset({b".", b".."})


class UnsafeTarget(ValueError):
    """A request target no backend may get (answered 400); the message says why."""


def backend_target(target: bytes) -> bytes:
    """*target* with its path's dot-segments removed, to be appended to a path prefix.

    The result starts with ``/`` and holds no dot-segment, so a prefix joined to it
    (``join()``) stays above everything it reaches.

    Raises:
        UnsafeTarget: not origin-form, or an encoding that cannot be normalised
            unambiguously (see the module docstring).
    """
    if not target.startswith(b"/"):
        raise UnsafeTarget("the request target must be a path")
    match = _PLAIN_PATH.match(target, 1)
    assert match is not None  # it matches the empty string
    stop = match.end()
    if stop == len(target) or target[stop] == _QUESTION:
        return target  # no '.', '%', '\' or '#' in the path: nothing to do
    path, question, query = target.partition(b"?")
    if _SUSPECT.search(path) is None:
        return target  # dots and escapes inside names only, like "/app.js", "/a%20b"
    return _normalised(path) + question + query


def _normalised(path: bytes) -> bytes:
    if b"\\" in path:
        raise UnsafeTarget("a backslash in the path")
    if b"#" in path:
        raise UnsafeTarget("a fragment in the request target")
    lowered = path.lower() if b"%" in path else path
    for encoded, reason in _REFUSED_ENCODINGS:
        if encoded in lowered:
            raise UnsafeTarget(reason)
    segments = path.split(b"/")[1:]  # the path starts with "/"
    kept: list[bytes] = []
    for segment in segments:
        if segment == b"..":
            if kept:
                kept.pop()
        elif segment != b".":
            disguise = _disguised_dot_segment(segment)
            if disguise is not None:
                raise UnsafeTarget(disguise)
            kept.append(segment)
    # §5.2.4: "/a/b/.." is "/a/" (the last segment was a directory), "/.." is "/".
    trailing = b"/" if kept and segments[-1] in _DOT_SEGMENTS else b""
    return b"/" + b"/".join(kept) + trailing


def _disguised_dot_segment(segment: bytes) -> str | None:
    """Why a backend could read *segment* as "." or ".." once it has decoded ``%2e``
    or dropped path parameters (``;...``), or None when it cannot."""
    if b"." not in segment and b"%" not in segment:
        return None
    name = segment.split(b";", 1)[0]
    decoded = name.lower().replace(b"%2e", b".")
    if decoded not in _DOT_SEGMENTS:
        return None
    if decoded != name:
        return "an encoded dot-segment in the path"
    return "a dot-segment with parameters in the path"


def join(path_prefix: str, target: bytes) -> bytes:
    """The target a backend at *path_prefix* gets, for a *target* from backend_target()."""
    return path_prefix.rstrip("/").encode("latin-1") + target
