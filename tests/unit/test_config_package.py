"""wsproxy.config as a package: the names other modules import from it stay where they were."""

from __future__ import annotations

import importlib

import pytest

import wsproxy.config
from wsproxy.config import DrainConfig
from wsproxy.core.closes import CloseCode

#: What ``from wsproxy.config import X`` gave when it was one module.
PUBLIC = (
    "AdminConfig", "AdmissionConfig", "ApiKeyAuthConfig", "AuthConfig", "BackendConfig",
    "BackendTLSConfig", "BalanceConfig", "DNSDiscoveryConfig", "DiscoveryConfig", "DrainConfig",
    "ForwardAuthConfig", "HealthCheckConfig", "HeartbeatConfig", "HttpConfig", "IPNetwork",
    "JwtAuthConfig", "LimitsConfig", "ListenConfig", "ListenTLS", "LoggingConfig", "ProxyConfig",
    "load_config", "parse_config", "parse_config_text", "ConfigError", "ConfigProblem",
)


@pytest.mark.parametrize("name", PUBLIC)
def test_a_public_name_is_importable_from_the_package(name: str) -> None:
    assert getattr(importlib.import_module("wsproxy.config"), name) is not None
    assert name in wsproxy.config.__all__


def test_the_drain_codes_default_to_the_rfc_codes_as_plain_ints() -> None:
    drain = DrainConfig()
    assert (drain.shutdown_close_code, drain.backend_close_code) == (
        CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART
    )
    assert type(drain.shutdown_close_code) is int
    assert type(drain.backend_close_code) is int
