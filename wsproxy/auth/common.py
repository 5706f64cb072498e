"""What the authenticators share: their refusals and header-safe values.

Every refusal is an ``AuthFailed`` whose ``reason`` is a bounded metrics label and
whose ``message`` is a fixed sentence: neither ever holds a token, so the driver may
log both as they are.
"""

from __future__ import annotations

import json
import re
from typing import Final

from wsproxy.auth import AuthFailed

#: RFC 6750 §3: a 401 names the scheme and realm; bad credentials add an error code.
CHALLENGE: Final = ("WWW-Authenticate", 'Bearer realm="wsproxy"')
INVALID_TOKEN_CHALLENGE: Final = (
    "WWW-Authenticate", 'Bearer realm="wsproxy", error="invalid_token"'
)
SUBJECT_HEADER: Final = "X-Auth-Subject"

#: Control characters (other than tab) cannot appear in an HTTP field value
#: (RFC 9110 §5.5): a value holding one would split or break the backend's request.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def missing() -> AuthFailed:
    """No token in any configured source: 401 with a bare challenge."""
    return AuthFailed(401, "missing", "no credentials", (CHALLENGE,))


def rejected(reason: str, message: str) -> AuthFailed:
    """A token that was presented but does not pass: 401, ``error="invalid_token"``."""
    return AuthFailed(401, reason, message, (INVALID_TOKEN_CHALLENGE,))


def unavailable(message: str) -> AuthFailed:
    """The proxy cannot decide (auth service or key server down): 503, never allow."""
    return AuthFailed(503, "auth_unavailable", message)


def is_safe_text(value: str) -> bool:
    """Whether *value* may go into a header value (and a log line) as it is."""
    return not _CONTROL.search(value)


def header_value(value: object) -> str | None:
    """*value* (a JSON claim) as a header value, or None if it has none.

    Strings go as they are, numbers and booleans as JSON writes them, lists joined
    with "," and objects as compact JSON. Characters beyond Latin-1 are sent as their
    UTF-8 bytes: the result is a ``str`` whose ``encode("latin-1")`` is those bytes.
    A value with control characters is dropped rather than sent half.
    """
    text = _claim_text(value)
    if text is None or not is_safe_text(text):
        return None
    return text.encode("utf-8").decode("latin-1")


def _claim_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = (_claim_text(v) for v in value)
        return ",".join(p for p in parts if p is not None)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
