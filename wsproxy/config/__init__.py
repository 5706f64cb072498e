"""wsproxy's configuration: SPEC.md's YAML schema as frozen, validated dataclasses.

`load_config(path)` reads a YAML file and `parse_config(raw)` turns an already loaded
mapping into a `ProxyConfig`. Both raise one `ConfigError` that lists every problem
found, each located by its key path (`backends[2].url`) and, for files, its YAML line.
Durations are held as float seconds and sizes as int bytes.

What lives here, each module with one job:
    model    the frozen dataclasses and their defaults (the why of each in a comment)
    values   the leaf parsers: one YAML value to its typed form, or the user's message
    walker   reading a mapping by a table of converters: key paths, `${NAME}`, one pass
             that reports every problem (its docstring is the theory of operation)
    schema   the tables (one `Section` a YAML section, a row a key), the checks that
             relate keys, and `parse_config`
    source   YAML text and files: the loader, the line of each key, duplicate keys

This package is a leaf: it imports `wsproxy.errors`, `wsproxy.units` and
`wsproxy.core.closes` (which imports nothing) and nothing else of the proxy.

When a value is read
--------------------
A `ProxyConfig` never changes: a reload (SIGHUP, ``POST /reload``) replaces the
process's config with a new one. Which file a piece of code obeys therefore depends on
when it reads it, and the rule is:

1. What runs for a while takes the config once, when it starts, and keeps that one
   until it ends: the process, each client connection, each drain. It holds a
   reference to that `ProxyConfig` (and to what was built from it) and does not look
   at the process's current one again. A reload changes only what starts after it:
   nothing is changed mid-flight, and a connection never mixes two files.
2. A decision the process takes for one moment (admitting a connection, picking a
   backend, a health-check round, holding a backend down) reads the config in force
   at that moment, or what the last reload built from it: the balancer, the registry's
   limits, the admission bucket, the backend TLS context.

Every key, by who takes it and when:

the process, at startup (a reload that changes them is logged as
``config.restart_needed`` and changes nothing):
    listen.*, admin.host, admin.port, discovery.*, logging.*, workers

each client connection, once, when the proxy accepts it; a connection that carries
plain HTTP keeps it for all its requests, and one that goes back to WebSocket too:
    limits.max_message_size, limits.max_request_head, limits.handshake_timeout,
    limits.backend_timeout, limits.idle_timeout, limits.max_connection_age,
    heartbeat.* (its pings, and the wait for a close handshake or a final write),
    plain_http, compression, allowed_origins, trusted_proxies (whose X-Forwarded-For
    is believed), auth.* with the authenticator built from it and the headers it owns,
    http.* but pool_size, resume.enabled, resume.window and resume.buffer (a held
    session keeps those it was accepted under), and drain.backend_close_code with
    drain.reconnect_hint for the closes a connection makes on its own (its backend
    restarting, its age limit)

each drain, once, when it starts (SIGTERM, ``POST /drain``, a backend drained, failing
or gone):
    drain.delay, drain.spread, drain.timeout, drain.max_close_rate,
    drain.reconnect_hint, and its close code: drain.shutdown_close_code for the
    proxy's, drain.backend_close_code for a backend's

each rebalancing round, once, when it starts (``rebalance.enabled`` and its trigger,
or ``POST /rebalance``):
    rebalance.max_close_rate, and drain.reconnect_hint for its closes' reason

live, at each decision:
    backends, backend_tls, balance.* and sticky_cookie.* (at each pick: a request's
    cookie is read, and its Set-Cookie written, under the config of that moment),
    health_check.* (at each round: its path and timeout, and the wait for the next),
    admission.* (reject_with answers the connection limits' refusals too, and is read
    at each refusal; a connection refused with a close keeps what it was accepted
    under for its close handshake),
    limits.max_connections, limits.max_connections_per_ip (and trusted_proxies where
    they decide whom a new connection counts against), http.pool_size,
    drain.backend_hold_down (at each hold-down), rebalance.enabled, rebalance.ratio and
    rebalance.warmup (at each look for a round to start), resume.max_total (at each
    opted-in session's start), admin.token (at each admin request:
    a reload rotates it), drain.shutdown_close_code when the process stops with
    connections still open

In the code: a connection holds one ``io.ports.ConnectionSettings`` (this config and
what the wiring built from it: the authenticator, the headers it owns, the liveness
rules), taken at accept and handed on between its WebSocket and plain HTTP drivers; a
drain holds its own settings; the live decisions read the wiring's current config.

SPEC.md's reload follows: backends that vanished drain (under the new file's drain
settings, as that drain starts after the reload), new ones join, and the connections
of the others go on untouched, under the file they were accepted with.
"""

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
from wsproxy.config.schema import parse_config
from wsproxy.config.source import load_config, parse_config_text, read_config_text
from wsproxy.config.values import IPNetwork
from wsproxy.errors import ConfigError, ConfigProblem

__all__ = [
    "AdminConfig", "AdmissionConfig", "ApiKeyAuthConfig", "AuthConfig", "BackendConfig",
    "BackendTLSConfig", "BalanceConfig", "ConfigError", "ConfigProblem", "DNSDiscoveryConfig",
    "DiscoveryConfig", "DrainConfig", "ForwardAuthConfig", "HealthCheckConfig",
    "HeartbeatConfig", "HttpConfig", "IPNetwork", "JwtAuthConfig", "LimitsConfig",
    "ListenConfig", "ListenTLS", "LoggingConfig", "ProxyConfig", "RebalanceConfig",
    "ResumeConfig", "StickyCookieConfig",
    "load_config", "parse_config", "parse_config_text", "read_config_text",
]
