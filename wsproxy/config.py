"""wsproxy's configuration: SPEC.md's YAML schema as frozen, validated dataclasses.

`load_config(path)` reads a YAML file and `parse_config(raw)` turns an already loaded
mapping into a `ProxyConfig`. Both raise one `ConfigError` that lists every problem
found, each located by its key path (`backends[2].url`) and, for files, its YAML line.
Durations are held as float seconds and sizes as int bytes.

Theory of operation. Each YAML section is a `_Section`: a table from key to converter.
A converter gets `(walker, path, value)` and returns the typed value, or raises
ValueError with a message that the walker records at that path before carrying on, so
one pass reports every problem. A key whose value was refused falls back to its default,
so that the other rules still run. Rules that relate several keys are a section's
checks; a check is skipped while one of the keys it reads has a problem of its own, so
that one mistake is reported once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from wsproxy.errors import ConfigError, ConfigProblem
from wsproxy.units import describe, parse_duration, parse_size

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The model --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenTLS:
    """Certificate chain and key for TLS on the client listener."""

    certfile: str
    keyfile: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    """Where clients connect."""

    # All interfaces: as a sidecar, clients and kubelet probes reach us on the pod's address.
    host: str = "0.0.0.0"
    port: int = 8080  # above 1024, so that a non-root process may bind it
    tls: ListenTLS | None = None  # usually a load balancer in front terminates TLS
    proxy_protocol: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The admin API: probes, metrics and the calls that drain and close connections."""

    # Loopback, because the admin API can drain the proxy and close connections
    # (websockets docs/deploy/index.rst: health checks on a private port).
    host: str = "127.0.0.1"
    port: int = 9090
    token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """One static backend; scheme, host, port and path are read from `url`."""

    name: str
    url: str
    scheme: str  # "ws" or "wss"
    host: str  # an IPv6 literal without its brackets
    port: int  # 80 or 443 when the URL names none
    path: str  # "" when the URL has none

    @classmethod
    def from_url(cls, *, name: str, url: str) -> BackendConfig:
        """A backend named `name` at a ws:// or wss:// `url`.

        Raises:
            ValueError: `url` is not a usable ws:// or wss:// URL.
        """
        scheme, host, port, path = _split_ws_url(url)
        return cls(name=name, url=url, scheme=scheme, host=host, port=port, path=path)

    @property
    def authority(self) -> str:
        """``host:port`` for a Host header (an IPv6 literal in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendTLSConfig:
    """How the proxy speaks TLS to wss:// backends."""

    ca_file: str | None = None  # None: the system's trust store
    verify: bool = True
    certfile: str | None = None  # a client certificate, for backends that ask for one
    keyfile: str | None = None
    server_name: str | None = None  # None: the host of the backend's URL


@dataclass(frozen=True, slots=True, kw_only=True)
class DNSDiscoveryConfig:
    """Backends from the A/AAAA answers for one name (a headless Kubernetes Service)."""

    name: str
    port: int
    scheme: str = "ws"
    # Close to the 5 s of kube-proxy's endpoint updates; a failed answer keeps the last set.
    interval: float = 5.0
    resolver: str | None = None  # "host[:port]"; None: the system's resolver


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryConfig:
    """Dynamic backends, beside or instead of the static ones."""

    dns: DNSDiscoveryConfig | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceConfig:
    """How a new connection picks its backend."""

    # Least connections: WebSocket connections live long, so after a rollout round robin
    # would leave the old connections where they are and split new ones evenly anyway;
    # least connections steers new ones to the emptier, newer instances.
    policy: str = "least_connections"  # round_robin | least_connections | hash
    hash_key: str | None = None  # policy "hash": the header or query parameter hashed


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckConfig:
    """Active health checks: a plain HTTP GET of `path` on each backend."""

    path: str = ""  # empty: no health checks
    # Every 5 s, out after 2 failures: a dead backend stops getting upgrades within ~10 s.
    interval: float = 5.0
    timeout: float = 1.0  # a backend on the same node or in the same zone answers in ms
    unhealthy_after: int = 2  # one lost probe is noise, two in a row is a pattern


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyAuthConfig:
    """API keys checked against a file of SHA-256 digests."""

    keys_file: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtAuthConfig:
    """JSON Web Tokens, checked with a shared secret (HS*) or public keys (JWKS)."""

    algorithms: tuple[str, ...] = ("HS256",)  # the algorithm a shared `secret` implies
    secret: str | None = None
    jwks_file: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0  # clock skew tolerated on exp/nbf: NTP keeps hosts well within it
    claims_to_headers: tuple[tuple[str, str], ...] = ()  # (claim, header) pairs


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardAuthConfig:
    """Authentication delegated to an HTTP service (a GET per upgrade)."""

    url: str
    timeout: float = 2.0  # the auth service is one hop away; slower than this is an outage
    copy_headers: tuple[str, ...] = ()  # its response headers passed on to the backend


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """Who may open a connection."""

    type: str = "none"  # none | api_key | jwt | forward
    # A browser cannot set Authorization on a WebSocket, so it offers the token as a
    # subprotocol; other clients send the header. Query parameters are not a default
    # source because URLs end up in access logs.
    token_from: tuple[str, ...] = ("header", "subprotocol")
    subprotocol_prefix: str = "bearer."
    api_key: ApiKeyAuthConfig | None = None
    jwt: JwtAuthConfig | None = None
    forward: ForwardAuthConfig | None = None
    close_on_expiry: bool = True  # a token's validity should not outlive its exp


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatConfig:
    """Pings the proxy sends to both legs."""

    # Every 20 s as websockets does (topics/keepalive.rst): well under the 60 s idle
    # timeout of common load balancers and NATs, which would cut a quiet connection.
    interval: float = 20.0
    timeout: float = 10.0  # half the interval, so a dead peer is found before the next ping


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Resource limits; 0 means "no limit" where SPEC.md says so."""

    # A ceiling far below the usual 65536-descriptor limit: each connection holds two sockets.
    max_connections: int = 10000
    max_connections_per_ip: int = 0  # off: many clients share an address behind NAT
    max_message_size: int = 1048576  # 1 MiB, websockets' max_size default
    max_request_head: int = 16384  # 16 KiB, h11's DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
    # A client that has not sent its upgrade request within 5 s is stuck or hostile.
    handshake_timeout: float = 5.0
    # Per backend tried: with the next one tried after it, two tries still fit in the
    # 10 s open_timeout of websockets clients.
    backend_timeout: float = 5.0
    idle_timeout: float = 0.0  # off: heartbeats already find dead peers
    max_connection_age: float = 0.0  # off


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainConfig:
    """How connections are closed when the proxy or a backend goes away."""

    delay: float = 0.0  # no wait unless load balancers need time to see /readyz turn 503
    # Spread and timeout fit Kubernetes' default 30 s terminationGracePeriodSeconds,
    # with 5 s for the last closing handshakes and the exit.
    spread: float = 20.0
    max_close_rate: float = 0.0  # no ceiling: the spread alone paces the closes
    timeout: float = 25.0
    shutdown_close_code: int = 1001  # RFC 6455 7.4.1: "going away"
    backend_close_code: int = 1012  # IANA registry: "service restart"; clients reconnect
    reconnect_hint: bool = True
    # A backend that closes a connection with 1001/1012 is restarting: no new upgrades
    # for it until its health check passes or, without one, for this long. 10 s covers
    # a typical app server's restart; a longer one only shifts load elsewhere.
    backend_hold_down: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionConfig:
    """A token bucket on new upgrades."""

    max_upgrade_rate: float = 0.0  # off
    burst: int = 0  # 0: one second's worth of max_upgrade_rate


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    """Plain HTTP requests (``plain_http: proxy``): their limits and the backend pool."""

    max_body_size: int = 10 << 20  # 10 MiB; 0: no limit
    body_timeout: float = 30.0  # the client silent mid-body this long: 408
    response_timeout: float = 30.0  # the backend silent this long before the response head: 504
    #: Once the head is relayed, the body (server-sent events, long-poll) may pause this long
    #: between two chunks; then the client connection is cut. nginx's proxy_read_timeout.
    stream_idle_timeout: float = 60.0
    keepalive_timeout: float = 60.0  # an idle client connection between requests
    pool_size: int = 32  # idle keep-alive connections kept per backend: above the usual concurrency


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """Log level and renderer."""

    level: str = "info"  # debug | info | warning | error; INFO is one line per connection
    format: str = "json"  # json | console; one JSON object a line suits log collectors


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """The whole configuration. Every key has a default but `backends` (or discovery)."""

    listen: ListenConfig = field(default_factory=ListenConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    backends: tuple[BackendConfig, ...] = ()
    backend_tls: BackendTLSConfig = field(default_factory=BackendTLSConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    allowed_origins: tuple[str, ...] = ()  # empty: any Origin
    trusted_proxies: tuple[IPNetwork, ...] = ()  # empty: X-Forwarded-For is never believed
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    plain_http: str = "reject"  # reject | proxy; a sidecar for WebSockets only, by default
    http: HttpConfig = field(default_factory=HttpConfig)
    # passthrough: the endpoints negotiate compression and frames are forwarded untouched,
    # which keeps the relay from inflating anything (PERF-NOTES.md).
    compression: str = "passthrough"
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# Public functions ---------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> ProxyConfig:
    """Read, parse and validate the YAML file at `path`.

    Args:
        path: the configuration file.
        env: the variables `${NAME}` refers to; by default the process environment.

    Raises:
        ConfigError: the file is missing or unreadable, is not YAML, or is not a valid
            configuration. Problems carry the YAML line where one is known.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigProblem("", f"can't read {os.fspath(path)}: {reason}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"{os.fspath(path)} is not UTF-8 text")]) from exc
    return parse_config_text(text, env=env)


def parse_config_text(text: str, *, env: Mapping[str, str] | None = None) -> ProxyConfig:
    """Parse and validate a configuration written in YAML, as `load_config` does a file.

    Raises:
        ConfigError: the text is not YAML or not a valid configuration.
    """
    raw, lines, duplicates = _load_yaml(text)
    try:
        # An empty document is an empty mapping: the error then says what is required.
        config = parse_config({} if raw is None else raw, lines=lines, env=env)
    except ConfigError as exc:
        raise ConfigError(_in_file_order([*duplicates, *exc.problems])) from None
    if duplicates:
        raise ConfigError(duplicates)
    return config


def parse_config(
    raw: object,
    *,
    lines: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> ProxyConfig:
    """Validate a loaded configuration mapping and build its `ProxyConfig`.

    Numbers and booleans may also be written as strings ("8080", "true") so that
    `${NAME}` can supply them.

    Args:
        raw: what `yaml.safe_load` returned for the file.
        lines: the YAML line of each key path, to locate problems.
        env: the variables `${NAME}` refers to; by default the process environment.

    Raises:
        ConfigError: with every problem found, in file order where lines are known.
    """
    if not isinstance(raw, Mapping):
        message = f"the top level must be a mapping of keys, got {describe(raw)}"
        raise ConfigError([ConfigProblem("", message)])
    walker = _Walker(lines or {}, os.environ if env is None else env)
    config: ProxyConfig = _PROXY(walker, "", raw)
    if walker.problems:
        raise ConfigError(_in_file_order(walker.problems))
    return config


def _in_file_order(problems: Iterable[ConfigProblem]) -> list[ConfigProblem]:
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


# The walker ---------------------------------------------------------------------------

_Conv = Callable[["_Walker", str, object], Any]
_FAILED: Final = object()  # what _Walker.read returns for a value it refused
_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PARENT: Final = re.compile(r"(\.[^.\[]*|\[[0-9]+\])$")  # the last step of a key path


class _Reported(Exception):
    """A converter recorded its problems already; its value is unusable."""


class _Walker:
    """Reads values with converters and collects the problems, located by key path."""

    def __init__(self, lines: Mapping[str, int], env: Mapping[str, str]) -> None:
        self.lines = lines
        self.env = env
        self.problems: list[ConfigProblem] = []

    def read(self, conv: _Conv, path: str, value: object) -> Any:
        """`conv`'s value for `value` at `path`, or `_FAILED` once the problem is recorded."""
        try:
            if isinstance(value, str):
                value = self._interpolate(value)
            return conv(self, path, value)
        except ValueError as exc:
            self.report(path, str(exc))
        except _Reported:
            pass
        return _FAILED

    def report(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message, self._line(path)))

    def failed(self, path: str) -> bool:
        """Whether a problem was recorded at `path` or under it."""
        return any(
            p.path == path or p.path.startswith((f"{path}.", f"{path}[")) for p in self.problems
        )

    def _line(self, path: str) -> int | None:
        # A key that is missing has no line; its mapping's line is the next best place.
        while path not in self.lines:
            if not _PARENT.search(path):  # a top-level key: no mapping above it has a line
                return None
            path = _PARENT.sub("", path)
        return self.lines[path]

    def _interpolate(self, text: str) -> str:
        unset = [name for name in _ENV_REF.findall(text) if name not in self.env]
        if unset:
            raise ValueError(f"environment variable {', '.join(unset)} is not set")
        return _ENV_REF.sub(lambda match: self.env[match[1]], text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_Check = tuple[tuple[str, ...], Callable[[Any], Iterable[tuple[str, str]]]]


@dataclass(frozen=True, slots=True)
class _Section:
    """A mapping read into `cls` by a table of converters, then checked as a whole."""

    cls: type[Any]
    fields: Mapping[str, _Conv]
    # (keys read, check): a check yields (key, message) pairs and runs only while the
    # keys it reads are free of problems.
    checks: tuple[_Check, ...] = ()
    build: Callable[..., Any] | None = None  # default: cls(**values)

    def __call__(self, w: _Walker, path: str, raw: object) -> Any:
        data = _mapping(raw)
        _reject_unknown(w, path, data, self.fields)
        values = {}
        for key, conv in self.fields.items():
            if key in data and (value := w.read(conv, _join(path, key), data[key])) is not _FAILED:
                values[key] = value  # else the dataclass default stands in
        missing = [key for key in self._required() if key not in values]
        for key in missing:
            if key not in data:
                w.report(_join(path, key), "required key is missing")
        if missing:
            raise _Reported
        result = (self.build or self.cls)(**values)
        for keys, check in self.checks:
            if not any(w.failed(_join(path, key)) for key in keys):
                for key, message in check(result):
                    w.report(_join(path, key), message)
        return result

    def _required(self) -> list[str]:
        return [
            f.name
            for f in dataclasses.fields(self.cls)
            if f.name in self.fields
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]


def _mapping(raw: object) -> Mapping[object, object]:
    if raw is None:  # `listen:` with nothing under it (or all of it commented out)
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a mapping, got {describe(raw)}")
    return raw


def _reject_unknown(
    w: _Walker, path: str, data: Mapping[object, object], known: Collection[str]
) -> None:
    for key in data:
        if key not in known:
            guess = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f' (did you mean "{guess[0]}"?)' if guess else ""
            w.report(_join(path, str(key)), f"unknown key{hint}")


def _list(item: _Conv, *, unique: str | None = None) -> _Conv:
    """A list of `item`s; `unique` names an attribute no two items may share."""

    def read(w: _Walker, path: str, raw: object) -> tuple[Any, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ValueError(f"expected a list, got {describe(raw)}")
        before = len(w.problems)
        values = [w.read(item, f"{path}[{i}]", value) for i, value in enumerate(raw)]
        seen: dict[object, int] = {}
        for i, value in enumerate(values):
            if unique and value is not _FAILED:
                key = getattr(value, unique)
                if key in seen:
                    message = f"duplicate {unique} {describe(key)} (also {path}[{seen[key]}])"
                    w.report(f"{path}[{i}].{unique}", message)
                seen.setdefault(key, i)
        if len(w.problems) > before:
            raise _Reported
        return tuple(values)

    return read


def _optional(conv: _Conv) -> _Conv:
    def read(w: _Walker, path: str, raw: object) -> Any:
        return None if raw is None else conv(w, path, raw)

    return read


def _leaf(parse: Callable[[object], Any]) -> _Conv:
    """A converter from a function of the value alone."""
    return lambda w, path, value: parse(value)


# Converters ---------------------------------------------------------------------------
# Each takes a value as YAML gave it (strings already interpolated) and returns its typed
# form, or raises ValueError with the message for the user.

_TCHARS: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_DNS_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_BACKEND_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_DEFAULT_PORTS: Final[Mapping[str, int]] = {"ws": 80, "wss": 443}
_JWT_ALGORITHMS: Final = (
    *("HS256", "HS384", "HS512", "RS256", "RS384", "RS512"),
    *("PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"),
)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")
    if not value.strip():
        raise ValueError("expected a string, got an empty one")
    return value


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):  # from ${NAME}
        return value == "true"
    raise ValueError(f"expected true or false, got {describe(value)}")


def _integer(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):  # from ${NAME}
        return int(value)
    raise ValueError(f"expected a whole number, got {describe(value)}")


def _count(minimum: int) -> _Conv:
    def parse(value: object) -> int:
        number = _integer(value)
        if number < minimum:
            raise ValueError(f"expected a whole number of {minimum} or more, got {number}")
        return number

    return _leaf(parse)


def _check_port(port: int, minimum: int) -> int:
    if not minimum <= port <= 65535:
        raise ValueError(f"port {port} is not a TCP port" + (" to connect to" if port == 0 else ""))
    return port


def _port(minimum: int) -> _Conv:
    """Ports from `minimum` to 65535: 0 is "any free port" to listen on, never to connect to."""
    return _leaf(lambda value: _check_port(_integer(value), minimum))


def _rate(value: object) -> float:
    number = math.nan
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):  # not a number: refused below
            number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"expected a number of 0 or more, got {describe(value)}")
    return number


def _duration(*, positive: bool = False) -> _Conv:
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if positive and seconds == 0:
            raise ValueError(
                f'expected a duration longer than 0s like "20s", got {describe(value)}'
            )
        return seconds

    return _leaf(parse)


def _size(value: object) -> int:
    size = parse_size(value)
    if size == 0:
        raise ValueError(f'expected a size of at least 1 byte like "64KiB", got {describe(value)}')
    return size


def _choice(*names: str) -> _Conv:
    def parse(value: object) -> str:
        if isinstance(value, str) and value in names:
            return value
        raise ValueError(f"expected one of {', '.join(names)}, got {describe(value)}")

    return _leaf(parse)


def _close_code(value: object) -> int:
    # RFC 6455 7.4: 1004 is reserved, 1005, 1006 and 1015 must never be sent; 1016-2999
    # are for future standards and 5000+ do not exist.
    code = _integer(value)
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    raise ValueError(
        f"{code} is not a close code that can be sent (1000-1003, 1007-1014, 3000-4999)"
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_dns_name(text: str) -> bool:
    name = text.removesuffix(".")
    return 0 < len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in name.split("."))


def _host(value: object) -> str:
    text = _text(value)
    if not (_is_ip(text) or _is_dns_name(text)):
        raise ValueError(f"expected a host name or an IP address, got {describe(value)}")
    return text


def _dns_name(value: object) -> str:
    if not _is_dns_name(_text(value)):
        raise ValueError(
            f'expected a DNS name like "app.default.svc.cluster.local", got {describe(value)}'
        )
    return str(value)


def _resolver(value: object) -> str:
    text = _text(value)
    match = re.fullmatch(r"\[(.+)\](?::([0-9]{1,5}))?|([^:]+)(?::([0-9]{1,5}))?", text)
    host, port = (match[1] or match[3], match[2] or match[4]) if match else (text, None)
    if not _is_ip(host) or (port is not None and not 1 <= int(port) <= 65535):
        raise ValueError(
            f'expected an IP address and optional port like "10.0.0.10:53", got {describe(value)}'
        )
    return text


def _split_ws_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a ws:// or wss:// URL, or ValueError."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced "[" around an IPv6 address
        parts = urlsplit("")
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f'expected a URL like "ws://10.0.0.5:8000", got {describe(url)}')
    if not (_is_ip(parts.hostname) or _is_dns_name(parts.hostname)):
        raise ValueError(f"{describe(parts.hostname)} is not a host name or an IP address")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError("a backend URL takes no user, query or fragment")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        raise ValueError(f"port {parts.netloc.rpartition(':')[2]} is not a TCP port") from None
    port = _DEFAULT_PORTS[parts.scheme] if port is None else _check_port(port, 1)
    return parts.scheme, parts.hostname, port, parts.path


def _ws_url(value: object) -> str:
    text = _text(value)
    _split_ws_url(text)
    return text


def _http_url(value: object) -> str:
    text = _text(value)
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'expected a URL like "http://127.0.0.1:9000/auth", got {describe(value)}')
    return text


def _http_path(value: object) -> str:
    if value == "" or (isinstance(value, str) and re.fullmatch(r"/\S*", value)):
        return value
    raise ValueError(f'expected a path like "/healthz" (or "" for none), got {describe(value)}')


def _origin(value: object) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ValueError(
            f'expected an origin like "https://app.example.com", got {describe(value)}'
        )
    return text.lower()  # browsers send origins in lower case (RFC 6454 6.1)


def _network(value: object) -> IPNetwork:
    # strict: "10.0.0.1/8" is a typo for an address or for a network, not a network.
    return ipaddress.ip_network(_text(value).strip(), strict=True)


def _header_name(value: object) -> str:
    if not _TCHARS.fullmatch(_text(value)):
        raise ValueError(f"expected an HTTP header name, got {describe(value)}")
    return str(value)


def _backend_name(value: object) -> str:
    # It appears in admin URLs (/backends/NAME/drain) and metric labels.
    if not _BACKEND_NAME.fullmatch(_text(value)):
        raise ValueError(
            f'expected a name of letters, digits, ".", "_" and "-", got {describe(value)}'
        )
    return str(value)


def _subprotocol_prefix(value: object) -> str:
    if not _TCHARS.fullmatch(_text(value)):  # a subprotocol is an RFC 9110 token
        raise ValueError(f"expected letters, digits and token characters, got {describe(value)}")
    return str(value)


def _token_source(value: object) -> str:
    text = _text(value)
    kind, _, name = text.partition(":")
    if text in ("header", "subprotocol") or (
        kind in ("query", "cookie", "header")
        and re.fullmatch(r"[^\s;=,]+", name)
        and (kind != "header" or _TCHARS.fullmatch(name))
    ):
        return text
    choices = "header, subprotocol, query:NAME, cookie:NAME or header:NAME"
    raise ValueError(f"expected {choices}, got {describe(value)}")


def _balance(w: _Walker, path: str, value: object) -> BalanceConfig:
    if value in ("round_robin", "least_connections"):
        return BalanceConfig(policy=str(value))
    if isinstance(value, str) and re.fullmatch(r"hash:\S+", value):
        return BalanceConfig(policy="hash", hash_key=value.removeprefix("hash:"))
    raise ValueError(
        f"expected round_robin, least_connections or hash:<header or query parameter>, "
        f"got {describe(value)}"
    )


def _claims_to_headers(w: _Walker, path: str, raw: object) -> tuple[tuple[str, str], ...]:
    pairs = [
        (str(claim), w.read(_leaf(_header_name), _join(path, str(claim)), header))
        for claim, header in _mapping(raw).items()
    ]
    if any(header is _FAILED for _, header in pairs):
        raise _Reported
    return tuple(pairs)


# Checks: rules that relate several keys of one section ----------------------------------

_Found = Iterator[tuple[str, str]]


def _check_admin(admin: AdminConfig) -> _Found:
    loopback = admin.host == "localhost" or (
        _is_ip(admin.host) and ipaddress.ip_address(admin.host).is_loopback
    )
    if not loopback and admin.token is None:
        yield "token", f"required when host ({admin.host}) is not a loopback address"


def _check_backend_tls(tls: BackendTLSConfig) -> _Found:
    if tls.keyfile is not None and tls.certfile is None:
        yield "keyfile", "needs certfile too"


def _check_health(health: HealthCheckConfig) -> _Found:
    if health.timeout > health.interval:
        yield "timeout", f"{health.timeout:g}s is longer than interval ({health.interval:g}s)"


def _check_jwt(jwt: JwtAuthConfig) -> _Found:
    hmac = [a for a in jwt.algorithms if a.startswith("HS")]
    public = [a for a in jwt.algorithms if not a.startswith("HS")]
    if not jwt.algorithms:
        yield "algorithms", "expected at least one algorithm"
    if hmac and public:  # else a public key could pass as an HMAC secret (RFC 8725 2.1)
        yield "algorithms", "mixes HMAC (HS*) and public-key algorithms"
    if hmac and jwt.secret is None:
        yield "secret", f"required for {hmac[0]}"
    if public and jwt.jwks_file is None and jwt.jwks_url is None:
        yield "jwks_file", f"jwks_file or jwks_url is required for {public[0]}"
    if jwt.jwks_file is not None and jwt.jwks_url is not None:
        yield "jwks_url", "set jwks_file or jwks_url, not both"


def _check_auth(auth: AuthConfig) -> _Found:
    if auth.type != "none" and getattr(auth, auth.type) is None:
        yield auth.type, f"required when auth.type is {auth.type}"
    if auth.type in ("api_key", "jwt") and not auth.token_from:
        yield "token_from", f"expected at least one token source for auth.type {auth.type}"


def _check_drain(drain: DrainConfig) -> _Found:
    if drain.spread > drain.timeout:
        yield "spread", f"{drain.spread:g}s is longer than timeout ({drain.timeout:g}s)"


def _check_backends(cfg: ProxyConfig) -> _Found:
    if not cfg.backends and cfg.discovery.dns is None:
        yield "backends", "at least one backend is required (backends or discovery.dns)"


def _check_cookie_origins(cfg: ProxyConfig) -> _Found:
    # A cookie rides along with any site's WebSocket to us (cross-site WebSocket hijacking).
    for i, source in enumerate(cfg.auth.token_from):
        if source.startswith("cookie:") and not cfg.allowed_origins:
            yield f"auth.token_from[{i}]", "a cookie source needs allowed_origins"


def _check_ports(cfg: ProxyConfig) -> _Found:
    wildcards = ("0.0.0.0", "::")
    listen, admin = cfg.listen, cfg.admin
    overlap = listen.host == admin.host or listen.host in wildcards or admin.host in wildcards
    if listen.port == admin.port != 0 and overlap:
        yield "admin.port", f"{admin.port} is listen.port too"


# The schema ---------------------------------------------------------------------------

_TEXT: Final = _leaf(_text)
_OPTIONAL_TEXT: Final = _optional(_TEXT)
_BOOL: Final = _leaf(_bool)
_HOST: Final = _leaf(_host)

_LISTEN: Final = _Section(
    ListenConfig,
    {
        "host": _HOST,
        "port": _port(0),
        "tls": _optional(_Section(ListenTLS, {"certfile": _TEXT, "keyfile": _TEXT})),
        "proxy_protocol": _BOOL,
    },
)
_ADMIN: Final = _Section(
    AdminConfig,
    {"host": _HOST, "port": _port(0), "token": _OPTIONAL_TEXT},
    checks=((("host", "token"), _check_admin),),
)
_BACKEND: Final = _Section(
    BackendConfig,
    {"name": _leaf(_backend_name), "url": _leaf(_ws_url)},
    build=BackendConfig.from_url,
)
_BACKEND_TLS: Final = _Section(
    BackendTLSConfig,
    {
        "ca_file": _OPTIONAL_TEXT,
        "verify": _BOOL,
        "certfile": _OPTIONAL_TEXT,
        "keyfile": _OPTIONAL_TEXT,
        "server_name": _optional(_HOST),
    },
    checks=((("certfile", "keyfile"), _check_backend_tls),),
)
_DNS: Final = _Section(
    DNSDiscoveryConfig,
    {
        "name": _leaf(_dns_name),
        "port": _port(1),
        "scheme": _choice(*_DEFAULT_PORTS),
        "interval": _duration(positive=True),
        "resolver": _optional(_leaf(_resolver)),
    },
)
_HEALTH_CHECK: Final = _Section(
    HealthCheckConfig,
    {
        "path": _leaf(_http_path),
        "interval": _duration(positive=True),
        "timeout": _duration(positive=True),
        "unhealthy_after": _count(1),
    },
    checks=((("interval", "timeout"), _check_health),),
)
_JWT: Final = _Section(
    JwtAuthConfig,
    {
        "algorithms": _list(_choice(*_JWT_ALGORITHMS)),
        "secret": _OPTIONAL_TEXT,
        "jwks_file": _OPTIONAL_TEXT,
        "jwks_url": _optional(_leaf(_http_url)),
        "issuer": _OPTIONAL_TEXT,
        "audience": _OPTIONAL_TEXT,
        "leeway": _duration(),
        "claims_to_headers": _claims_to_headers,
    },
    checks=((("algorithms", "secret", "jwks_file", "jwks_url"), _check_jwt),),
)
_FORWARD: Final = _Section(
    ForwardAuthConfig,
    {
        "url": _leaf(_http_url),
        "timeout": _duration(positive=True),
        "copy_headers": _list(_leaf(_header_name)),
    },
)
_AUTH: Final = _Section(
    AuthConfig,
    {
        "type": _choice("none", "api_key", "jwt", "forward"),
        "token_from": _list(_leaf(_token_source)),
        "subprotocol_prefix": _leaf(_subprotocol_prefix),
        "api_key": _optional(_Section(ApiKeyAuthConfig, {"keys_file": _TEXT})),
        "jwt": _optional(_JWT),
        "forward": _optional(_FORWARD),
        "close_on_expiry": _BOOL,
    },
    checks=((("type", "token_from", "api_key", "jwt", "forward"), _check_auth),),
)
_LIMITS: Final = _Section(
    LimitsConfig,
    {
        "max_connections": _count(1),
        "max_connections_per_ip": _count(0),
        "max_message_size": _leaf(_size),
        "max_request_head": _leaf(_size),
        "handshake_timeout": _duration(positive=True),
        "backend_timeout": _duration(positive=True),
        "idle_timeout": _duration(),
        "max_connection_age": _duration(),
    },
)
_DRAIN: Final = _Section(
    DrainConfig,
    {
        "delay": _duration(),
        "spread": _duration(),
        "max_close_rate": _leaf(_rate),
        "timeout": _duration(),
        "shutdown_close_code": _leaf(_close_code),
        "backend_close_code": _leaf(_close_code),
        "reconnect_hint": _BOOL,
        "backend_hold_down": _duration(),
    },
    checks=((("spread", "timeout"), _check_drain),),
)
_PROXY: Final = _Section(
    ProxyConfig,
    {
        "listen": _LISTEN,
        "admin": _ADMIN,
        "backends": _list(_BACKEND, unique="name"),
        "backend_tls": _BACKEND_TLS,
        "discovery": _Section(DiscoveryConfig, {"dns": _optional(_DNS)}),
        "balance": _balance,
        "health_check": _HEALTH_CHECK,
        "auth": _AUTH,
        "allowed_origins": _list(_leaf(_origin)),
        "trusted_proxies": _list(_leaf(_network)),
        "heartbeat": _Section(
            HeartbeatConfig,
            {"interval": _duration(positive=True), "timeout": _duration(positive=True)},
        ),
        "limits": _LIMITS,
        "drain": _DRAIN,
        "admission": _Section(
            AdmissionConfig, {"max_upgrade_rate": _leaf(_rate), "burst": _count(0)}
        ),
        "plain_http": _choice("reject", "proxy"),
        "http": _Section(
            HttpConfig,
            {
                "max_body_size": _leaf(parse_size),
                "body_timeout": _duration(positive=True),
                "response_timeout": _duration(positive=True),
                "stream_idle_timeout": _duration(positive=True),
                "keepalive_timeout": _duration(positive=True),
                "pool_size": _count(0),
            },
        ),
        "compression": _choice("passthrough", "off"),
        "logging": _Section(
            LoggingConfig,
            {
                "level": _choice("debug", "info", "warning", "error"),
                "format": _choice("json", "console"),
            },
        ),
    },
    checks=(
        (("backends", "discovery"), _check_backends),
        (("auth", "allowed_origins"), _check_cookie_origins),
        (("listen", "admin"), _check_ports),
    ),
)


# YAML with line numbers -----------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: `compression: off` stays the string "off"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> tuple[object, dict[str, int], list[ConfigProblem]]:
    """The document in `text`, the line of each key path, and its duplicate keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines: dict[str, int] = {}
        duplicates: list[ConfigProblem] = []
        _index_lines(node, "", lines, duplicates, set())
        return loader.construct_document(node), lines, duplicates
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem("", f"not valid YAML: {reason}", line)]) from exc
    finally:
        loader.dispose()


def _index_lines(
    node: yaml.Node,
    path: str,
    lines: dict[str, int],
    duplicates: list[ConfigProblem],
    seen: set[int],
) -> None:
    if id(node) in seen:  # an alias: indexed where its anchor is, and never twice
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key_path, line = _join(path, str(key_node.value)), key_node.start_mark.line + 1
            if key_path in keys:
                message = f"duplicate key (first on line {lines[key_path]})"
                duplicates.append(ConfigProblem(key_path, message, line))
            keys.add(key_path)
            lines[key_path] = line
            _index_lines(value_node, key_path, lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{path}[{i}]"] = item.start_mark.line + 1
            _index_lines(item, f"{path}[{i}]", lines, duplicates, seen)
