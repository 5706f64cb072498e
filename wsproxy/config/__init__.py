"""wsproxy's configuration (being split into modules: see the next commit)."""

from wsproxy.config.schema import (
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
    IPNetwork,
    JwtAuthConfig,
    LimitsConfig,
    ListenConfig,
    ListenTLS,
    LoggingConfig,
    ProxyConfig,
    load_config,
    parse_config,
    parse_config_text,
)

__all__ = [
    "AdminConfig", "AdmissionConfig", "ApiKeyAuthConfig", "AuthConfig", "BackendConfig",
    "BackendTLSConfig", "BalanceConfig", "DNSDiscoveryConfig", "DiscoveryConfig", "DrainConfig",
    "ForwardAuthConfig", "HealthCheckConfig", "HeartbeatConfig", "HttpConfig", "IPNetwork",
    "JwtAuthConfig", "LimitsConfig", "ListenConfig", "ListenTLS", "LoggingConfig", "ProxyConfig",
    "load_config", "parse_config", "parse_config_text",
]
