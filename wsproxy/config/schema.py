"""The schema: SPEC.md's YAML keys as tables of converters, and `parse_config`.

One `walker.Section` a section (the theory of operation is in `walker`): a new key is
a row here and a field in `model`. Converters of one value come from `values`; the
ones below also know the walker (a list of pairs, a choice that builds a section).
Rules that relate several keys are the checks, each run on the built section.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from typing import Final

from wsproxy.config.model import (
    AdminConfig,
    AdmissionConfig,
    ApiKeyAuthConfig,
    AuthConfig,
    BackendConfig,
    BackendTLSConfig,
    BalanceConfig,
    DiscoveryConfig,
    DNSDiscoveryConfig,
    DrainConfig,
    ForwardAuthConfig,
    HealthCheckConfig,
    HeartbeatConfig,
    HttpConfig,
    JwtAuthConfig,
    LimitsConfig,
    ListenConfig,
    ListenTLS,
    LoggingConfig,
    ProxyConfig,
    RebalanceConfig,
    ResumeConfig,
    StickyCookieConfig,
)
from wsproxy.config.values import (
    DEFAULT_PORTS,
    JWT_ALGORITHMS,
    backend_name,
    boolean,
    check_port,
    close_code,
    dns_name,
    header_name,
    host_or_ip,
    http_path,
    http_url,
    is_ip,
    network,
    nonempty_string,
    nonzero_size,
    origin,
    rate,
    resolver_address,
    subprotocol_prefix,
    token_source,
    whole_number,
    workers,
    ws_url,
)
from wsproxy.config.walker import (
    FAILED,
    Conv,
    Reported,
    Section,
    Walker,
    as_mapping,
    in_file_order,
    join,
    leaf,
    list_of,
    optional,
)
from wsproxy.errors import ConfigError, ConfigProblem
from wsproxy.units import describe, parse_duration, parse_size

# Converters that build on the leaf parsers ----------------------------------------------


def _count(minimum: int) -> Conv:
    def parse(value: object) -> int:
        number = whole_number(value)
        if number < minimum:
            raise ValueError(f"expected a whole number of {minimum} or more, got {number}")
        return number

    return leaf(parse)


def _port(minimum: int) -> Conv:
    """Ports from `minimum` to 65535: 0 is "any free port" to listen on, never to connect to."""
    return leaf(lambda value: check_port(whole_number(value), minimum))


def _duration(*, positive: bool = False) -> Conv:
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if positive and seconds == 0:
            raise ValueError(
                f'expected a duration longer than 0s like "20s", got {describe(value)}'
            )
        return seconds

    return leaf(parse)


def _choice(*names: str) -> Conv:
    def parse(value: object) -> str:
        if isinstance(value, str) and value in names:
            return value
        raise ValueError(f"expected one of {', '.join(names)}, got {describe(value)}")

    return leaf(parse)


#: rebalance.max_close_rate at most: a bound, not a goal (a round's closes are paced).
MAX_REBALANCE_RATE: Final = 10000.0
#: rebalance.ratio at most: past it, no imbalance a backend could survive would trigger.
MAX_REBALANCE_RATIO: Final = 100.0
#: rebalance.warmup at most.
MAX_WARMUP: Final = 24 * 3600.0


def _rebalance_ratio(value: object) -> float:
    number = rate(value)
    if not 1.0 < number <= MAX_REBALANCE_RATIO:
        raise ValueError(f"expected a number above 1 and at most {MAX_REBALANCE_RATIO:g} "
                         f"(the most loaded backend over the mean), got {describe(value)}")
    return number


def _close_rate(value: object) -> float:
    number = rate(value)
    if not 0.0 < number <= MAX_REBALANCE_RATE:
        raise ValueError(f"expected closes per second above 0 and at most "
                         f"{MAX_REBALANCE_RATE:g}, got {describe(value)}")
    return number


def _warmup(value: object) -> float:
    seconds = parse_duration(value)
    if seconds > MAX_WARMUP:
        raise ValueError(f"expected a duration of at most 24h, got {describe(value)}")
    return seconds


def _balance(w: Walker, path: str, value: object) -> BalanceConfig:
    if value in ("round_robin", "least_connections", "cookie"):
        return BalanceConfig(policy=str(value))
    if isinstance(value, str) and re.fullmatch(r"hash:\S+", value):
        return BalanceConfig(policy="hash", hash_key=value.removeprefix("hash:"))
    raise ValueError(
        f"expected round_robin, least_connections, cookie or "
        f"hash:<header or query parameter>, got {describe(value)}"
    )


def _cookie_secure(value: object) -> bool | None:
    if value == "auto":
        return None
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected auto, true or false, got {describe(value)}")


def _cookie_name(value: object) -> str:
    # RFC 6265 §4.1.1: a cookie-name is an RFC 9110 token.
    if isinstance(value, str) and re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value):
        return value
    raise ValueError(f"expected a cookie name (letters, digits, token characters), "
                     f"got {describe(value)}")


def _cookie_path(value: object) -> str:
    # RFC 6265 §4.1.1 path-value: no ";" and no control characters.
    if isinstance(value, str) and re.fullmatch(r"/[\x20-\x3a\x3c-\x7e]*", value):
        return value
    raise ValueError(f'expected a path starting with "/" without ";", got {describe(value)}')


def _claims_to_headers(w: Walker, path: str, raw: object) -> tuple[tuple[str, str], ...]:
    pairs = [
        (str(claim), w.read(leaf(header_name), join(path, str(claim)), header))
        for claim, header in as_mapping(raw).items()
    ]
    if any(header is FAILED for _, header in pairs):
        raise Reported
    return tuple(pairs)


# Checks: rules that relate several keys of one section ----------------------------------

_Found = Iterator[tuple[str, str]]


def _check_admin(admin: AdminConfig) -> _Found:
    loopback = admin.host == "localhost" or (
        is_ip(admin.host) and ipaddress.ip_address(admin.host).is_loopback
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


def _check_sticky_cookie(cookie: StickyCookieConfig) -> _Found:
    # Browsers drop a SameSite=None cookie without Secure.
    if cookie.samesite == "none" and cookie.secure is False:
        yield "samesite", "none needs secure: true or auto (browsers drop it otherwise)"


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


# The tables ---------------------------------------------------------------------------

_TEXT: Final = leaf(nonempty_string)
_OPTIONAL_TEXT: Final = optional(_TEXT)
_BOOL: Final = leaf(boolean)
_HOST: Final = leaf(host_or_ip)

_LISTEN: Final = Section(
    ListenConfig,
    {
        "host": _HOST,
        "port": _port(0),
        "tls": optional(Section(ListenTLS, {"certfile": _TEXT, "keyfile": _TEXT})),
        "proxy_protocol": _BOOL,
    },
)
_ADMIN: Final = Section(
    AdminConfig,
    {"host": _HOST, "port": _port(0), "token": _OPTIONAL_TEXT},
    checks=((("host", "token"), _check_admin),),
)
_BACKEND: Final = Section(
    BackendConfig,
    {"name": leaf(backend_name), "url": leaf(ws_url)},
    build=BackendConfig.from_url,
)
_BACKEND_TLS: Final = Section(
    BackendTLSConfig,
    {
        "ca_file": _OPTIONAL_TEXT,
        "verify": _BOOL,
        "certfile": _OPTIONAL_TEXT,
        "keyfile": _OPTIONAL_TEXT,
        "server_name": optional(_HOST),
    },
    checks=((("certfile", "keyfile"), _check_backend_tls),),
)
_DNS: Final = Section(
    DNSDiscoveryConfig,
    {
        "name": leaf(dns_name),
        "port": _port(1),
        "scheme": _choice(*DEFAULT_PORTS),
        "interval": _duration(positive=True),
        "resolver": optional(leaf(resolver_address)),
    },
)
_HEALTH_CHECK: Final = Section(
    HealthCheckConfig,
    {
        "path": leaf(http_path),
        "interval": _duration(positive=True),
        "timeout": _duration(positive=True),
        "unhealthy_after": _count(1),
    },
    checks=((("interval", "timeout"), _check_health),),
)
_JWT: Final = Section(
    JwtAuthConfig,
    {
        "algorithms": list_of(_choice(*JWT_ALGORITHMS)),
        "secret": _OPTIONAL_TEXT,
        "jwks_file": _OPTIONAL_TEXT,
        "jwks_url": optional(leaf(http_url)),
        "issuer": _OPTIONAL_TEXT,
        "audience": _OPTIONAL_TEXT,
        "leeway": _duration(),
        "claims_to_headers": _claims_to_headers,
    },
    checks=((("algorithms", "secret", "jwks_file", "jwks_url"), _check_jwt),),
)
_FORWARD: Final = Section(
    ForwardAuthConfig,
    {
        "url": leaf(http_url),
        "timeout": _duration(positive=True),
        "copy_headers": list_of(leaf(header_name)),
    },
)
_AUTH: Final = Section(
    AuthConfig,
    {
        "type": _choice("none", "api_key", "jwt", "forward"),
        "token_from": list_of(leaf(token_source)),
        "subprotocol_prefix": leaf(subprotocol_prefix),
        "api_key": optional(Section(ApiKeyAuthConfig, {"keys_file": _TEXT})),
        "jwt": optional(_JWT),
        "forward": optional(_FORWARD),
        "close_on_expiry": _BOOL,
    },
    checks=((("type", "token_from", "api_key", "jwt", "forward"), _check_auth),),
)
_LIMITS: Final = Section(
    LimitsConfig,
    {
        "max_connections": _count(1),
        "max_connections_per_ip": _count(0),
        "max_message_size": leaf(nonzero_size),
        "max_request_head": leaf(nonzero_size),
        "handshake_timeout": _duration(positive=True),
        "backend_timeout": _duration(positive=True),
        "idle_timeout": _duration(),
        "max_connection_age": _duration(),
    },
)
_DRAIN: Final = Section(
    DrainConfig,
    {
        "delay": _duration(),
        "spread": _duration(),
        "max_close_rate": leaf(rate),
        "timeout": _duration(),
        "shutdown_close_code": leaf(close_code),
        "backend_close_code": leaf(close_code),
        "reconnect_hint": _BOOL,
        "backend_hold_down": _duration(),
    },
    checks=((("spread", "timeout"), _check_drain),),
)
_PROXY: Final = Section(
    ProxyConfig,
    {
        "listen": _LISTEN,
        "admin": _ADMIN,
        "backends": list_of(_BACKEND, unique="name"),
        "backend_tls": _BACKEND_TLS,
        "discovery": Section(DiscoveryConfig, {"dns": optional(_DNS)}),
        "balance": _balance,
        "sticky_cookie": Section(
            StickyCookieConfig,
            {
                "name": leaf(_cookie_name),
                "path": leaf(_cookie_path),
                "secure": leaf(_cookie_secure),
                "samesite": _choice("lax", "strict", "none"),
            },
            checks=((("samesite", "secure"), _check_sticky_cookie),),
        ),
        "health_check": _HEALTH_CHECK,
        "auth": _AUTH,
        "allowed_origins": list_of(leaf(origin)),
        "trusted_proxies": list_of(leaf(network)),
        "heartbeat": Section(
            HeartbeatConfig,
            {"interval": _duration(positive=True), "timeout": _duration(positive=True)},
        ),
        "limits": _LIMITS,
        "drain": _DRAIN,
        "admission": Section(
            AdmissionConfig,
            {
                "max_upgrade_rate": leaf(rate),
                "burst": _count(0),
                "reject_with": _choice("status", "close"),
            },
        ),
        "rebalance": Section(
            RebalanceConfig,
            {
                "enabled": _BOOL,
                "ratio": leaf(_rebalance_ratio),
                "max_close_rate": leaf(_close_rate),
                "warmup": leaf(_warmup),
            },
        ),
        "resume": Section(
            ResumeConfig,
            {
                "enabled": _BOOL,
                "window": _duration(positive=True),
                "buffer": leaf(nonzero_size),
                "max_total": leaf(nonzero_size),
            },
        ),
        "plain_http": _choice("reject", "proxy"),
        "http": Section(
            HttpConfig,
            {
                "max_body_size": leaf(parse_size),
                "body_timeout": _duration(positive=True),
                "response_timeout": _duration(positive=True),
                "stream_idle_timeout": _duration(positive=True),
                "keepalive_timeout": _duration(positive=True),
                "pool_size": _count(0),
            },
        ),
        "compression": _choice("passthrough", "off"),
        "workers": leaf(workers),
        "logging": Section(
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


# Parsing --------------------------------------------------------------------------------


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
    walker = Walker(lines or {}, os.environ if env is None else env)
    config: ProxyConfig = _PROXY(walker, "", raw)
    if walker.problems:
        raise ConfigError(in_file_order(walker.problems))
    return config
