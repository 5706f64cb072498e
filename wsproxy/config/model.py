"""The configuration's model: SPEC.md's YAML schema as frozen dataclasses, with defaults.

One class a section, one field a key, each default with the reason it was chosen.
Durations are float seconds, sizes int bytes. `schema` builds these from a YAML mapping
and refuses what does not fit; code that builds them by hand (tests, `wsproxy demo`) is
trusted, as nothing here validates but `BackendConfig.from_url`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsproxy.config.values import IPNetwork, split_ws_url
from wsproxy.core.closes import CloseCode


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
        scheme, host, port, path = split_ws_url(url)
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
    policy: str = "least_connections"  # round_robin | least_connections | hash | cookie
    hash_key: str | None = None  # policy "hash": the header or query parameter hashed


@dataclass(frozen=True, slots=True, kw_only=True)
class StickyCookieConfig:
    """The cookie of ``balance: cookie``: it names a session's backend, opaquely."""

    name: str = "wsproxy_backend"
    path: str = "/"  # the whole site: a framework's polls and its upgrade share one path
    secure: bool | None = None  # None (auto): Secure when the listener is TLS
    # lax: sent on same-site requests and top-level navigations, as a session cookie is.
    samesite: str = "lax"  # lax | strict | none (none requires Secure)


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
    shutdown_close_code: int = CloseCode.GOING_AWAY.value  # 1001, RFC 6455 7.4.1
    # 1012, from the IANA registry: clients reconnect, as to a restarted server.
    backend_close_code: int = CloseCode.SERVICE_RESTART.value
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
    #: How an upgrade refused by the bucket or the connection limits is answered:
    #: "status", SPEC's 503 + Retry-After (what load balancers and non-browser
    #: clients read), or "close", the proxy's own 101 then a 1013 close whose reason
    #: carries retry-after-ms (the only answer a browser's WebSocket API can see).
    reject_with: str = "status"


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalanceConfig:
    """Moving long-lived connections to the backends that joined (core.rebalance)."""

    enabled: bool = False  # closing healthy connections is the operator's choice
    # The trigger: the most loaded backend holds more than this times the mean. 1.2 leaves
    # the imbalance of ordinary churn alone; a round then evens everything out to ±1.
    ratio: float = 1.2
    # 20 closes a second: 1,000 connections moved in under a minute, a reconnect rate
    # any backend handles, and far below admission's usual limits.
    max_close_rate: float = 20.0
    # A backend that just joined (or came back) proves itself first: 10 s is a few
    # health-check intervals, and a crash loop shows before it gets a share.
    warmup: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeConfig:
    """Resumable sessions (README "Resumable sessions"): opt-in per client."""

    enabled: bool = False
    #: How long the backend leg of a client that vanished stays open, waiting for it.
    window: float = 30.0
    #: Bytes of backend->client messages kept per session, for replay; also the most
    #: of a client message held back until it is whole (wsproxy.io.resume).
    buffer: int = 64 << 10
    #: The ceiling of those bytes (both kinds) across all sessions of the process.
    max_total: int = 256 << 20


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
    sticky_cookie: StickyCookieConfig = field(default_factory=StickyCookieConfig)
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    allowed_origins: tuple[str, ...] = ()  # empty: any Origin
    trusted_proxies: tuple[IPNetwork, ...] = ()  # empty: X-Forwarded-For is never believed
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    plain_http: str = "reject"  # reject | proxy; a sidecar for WebSockets only, by default
    http: HttpConfig = field(default_factory=HttpConfig)
    # passthrough: the endpoints negotiate compression and frames are forwarded untouched,
    # which keeps the relay from inflating anything (PERF-NOTES.md).
    compression: str = "passthrough"
    # One process: a second one is asked for (wsproxy.workers); "auto" is resolved at
    # parse time to the CPUs this process may use (values.cpus_available).
    workers: int = 1
    logging: LoggingConfig = field(default_factory=LoggingConfig)
