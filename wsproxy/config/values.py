"""The leaf parsers: one YAML value to its typed form, or ValueError with the user's message.

Each takes a value as YAML gave it (strings already interpolated) and knows nothing of
the walker or of key paths: the walker locates the message (`schema` wraps these with
`walker.leaf`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from wsproxy.core.closes import SENDABLE_RANGES, is_sendable
from wsproxy.units import describe, parse_size

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TCHARS: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_DNS_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_BACKEND_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
DEFAULT_PORTS: Final[Mapping[str, int]] = {"ws": 80, "wss": 443}
JWT_ALGORITHMS: Final = (
    *("HS256", "HS384", "HS512", "RS256", "RS384", "RS512"),
    *("PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"),
)


def nonempty_string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")
    if not value.strip():
        raise ValueError("expected a string, got an empty one")
    return value


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):  # from ${NAME}
        return value == "true"
    raise ValueError(f"expected true or false, got {describe(value)}")


def whole_number(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):  # from ${NAME}
        return int(value)
    raise ValueError(f"expected a whole number, got {describe(value)}")


#: The most processes ``workers`` may ask for: far more than the cores of one host.
MAX_WORKERS = 64


def cpus_available(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: its affinity, bounded by a cgroup v2 ``cpu.max``
    quota (rounded up) where one is set."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open(os.path.join(cgroup_root, "cpu.max"), encoding="ascii") as file:
            quota, _, period = file.read().partition(" ")
        if quota.strip() != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 file or an unexpected one: the affinity alone
    return max(1, min(cpus, MAX_WORKERS))


def workers(value: object) -> int:
    """``workers``: a whole number from 1 to MAX_WORKERS, or ``auto``."""
    if value == "auto":
        return cpus_available()
    try:
        number = whole_number(value)
    except ValueError:
        raise ValueError(f'expected a whole number from 1 to {MAX_WORKERS} or "auto", '
                         f"got {describe(value)}") from None
    if not 1 <= number <= MAX_WORKERS:
        raise ValueError(f"expected a whole number from 1 to {MAX_WORKERS}, got {number}")
    return number


def check_port(port: int, minimum: int) -> int:
    if not minimum <= port <= 65535:
        raise ValueError(f"port {port} is not a TCP port" + (" to connect to" if port == 0 else ""))
    return port


def rate(value: object) -> float:
    number = math.nan
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):  # not a number: refused below
            number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"expected a number of 0 or more, got {describe(value)}")
    return number


def nonzero_size(value: object) -> int:
    size = parse_size(value)
    if size == 0:
        raise ValueError(f'expected a size of at least 1 byte like "64KiB", got {describe(value)}')
    return size


def close_code(value: object) -> int:
    # The same test as the relay's (core.closes): a code the proxy may put on the wire.
    code = whole_number(value)
    if is_sendable(code):
        return code
    raise ValueError(f"{code} is not a close code that can be sent ({SENDABLE_RANGES})")


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_dns_name(text: str) -> bool:
    name = text.removesuffix(".")
    return 0 < len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in name.split("."))


def host_or_ip(value: object) -> str:
    text = nonempty_string(value)
    if not (is_ip(text) or is_dns_name(text)):
        raise ValueError(f"expected a host name or an IP address, got {describe(value)}")
    return text


def dns_name(value: object) -> str:
    if not is_dns_name(nonempty_string(value)):
        raise ValueError(
            f'expected a DNS name like "app.default.svc.cluster.local", got {describe(value)}'
        )
    return str(value)


def resolver_address(value: object) -> str:
    text = nonempty_string(value)
    match = re.fullmatch(r"\[(.+)\](?::([0-9]{1,5}))?|([^:]+)(?::([0-9]{1,5}))?", text)
    host, port = (match[1] or match[3], match[2] or match[4]) if match else (text, None)
    if not is_ip(host) or (port is not None and not 1 <= int(port) <= 65535):
        raise ValueError(
            f'expected an IP address and optional port like "10.0.0.10:53", got {describe(value)}'
        )
    return text


def split_ws_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a ws:// or wss:// URL, or ValueError."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced "[" around an IPv6 address
        parts = urlsplit("")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f'expected a URL like "ws://10.0.0.5:8000", got {describe(url)}')
    if not (is_ip(parts.hostname) or is_dns_name(parts.hostname)):
        raise ValueError(f"{describe(parts.hostname)} is not a host name or an IP address")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError("a backend URL takes no user, query or fragment")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        raise ValueError(f"port {parts.netloc.rpartition(':')[2]} is not a TCP port") from None
    port = DEFAULT_PORTS[parts.scheme] if port is None else check_port(port, 1)
    return parts.scheme, parts.hostname, port, parts.path


def ws_url(value: object) -> str:
    text = nonempty_string(value)
    split_ws_url(text)
    return text


def http_url(value: object) -> str:
    text = nonempty_string(value)
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'expected a URL like "http://127.0.0.1:9000/auth", got {describe(value)}')
    return text


def http_path(value: object) -> str:
    if value == "" or (isinstance(value, str) and re.fullmatch(r"/\S*", value)):
        return value
    raise ValueError(f'expected a path like "/healthz" (or "" for none), got {describe(value)}')


def origin(value: object) -> str:
    text = nonempty_string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ValueError(
            f'expected an origin like "https://app.example.com", got {describe(value)}'
        )
    return text.lower()  # browsers send origins in lower case (RFC 6454 6.1)


def network(value: object) -> IPNetwork:
    # strict: "10.0.0.1/8" is a typo for an address or for a network, not a network.
    return ipaddress.ip_network(nonempty_string(value).strip(), strict=True)


def header_name(value: object) -> str:
    if not _TCHARS.fullmatch(nonempty_string(value)):
        raise ValueError(f"expected an HTTP header name, got {describe(value)}")
    return str(value)


def backend_name(value: object) -> str:
    # It appears in admin URLs (/backends/NAME/drain) and metric labels.
    if not _BACKEND_NAME.fullmatch(nonempty_string(value)):
        raise ValueError(
            f'expected a name of letters, digits, ".", "_" and "-", got {describe(value)}'
        )
    return str(value)


def subprotocol_prefix(value: object) -> str:
    if not _TCHARS.fullmatch(nonempty_string(value)):  # a subprotocol is an RFC 9110 token
        raise ValueError(f"expected letters, digits and token characters, got {describe(value)}")
    return str(value)


def token_source(value: object) -> str:
    text = nonempty_string(value)
    kind, _, name = text.partition(":")
    if text in ("header", "subprotocol") or (
        kind in ("query", "cookie", "header")
        and re.fullmatch(r"[^\s;=,]+", name)
        and (kind != "header" or _TCHARS.fullmatch(name))
    ):
        return text
    choices = "header, subprotocol, query:NAME, cookie:NAME or header:NAME"
    raise ValueError(f"expected {choices}, got {describe(value)}")
