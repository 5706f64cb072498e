"""Builds the configured authenticator, loading its key files up front."""

from __future__ import annotations

from wsproxy.auth import Authenticator
from wsproxy.auth.api_key import ApiKeyAuthenticator
from wsproxy.auth.forward import ForwardAuthenticator
from wsproxy.auth.jwks import JwksFile, JwksUrl, KeySource
from wsproxy.auth.jwt import JwtAuthenticator, min_secret_length
from wsproxy.config import AuthConfig, JwtAuthConfig
from wsproxy.errors import ConfigError, ConfigProblem


def build_authenticator(config: AuthConfig, *, proto: str = "http") -> Authenticator | None:
    """The authenticator for *config*, or None for ``auth.type: none``.

    *proto* is the X-Forwarded-Proto a forward auth service is told ("https" behind a
    TLS listener).

    Key files are read here, so that a bad one stops the start (or a reload) instead
    of failing every connection. A JWKS URL is not fetched here: the first connection
    fetches it (an identity provider that is down at start does not stop the proxy).

    Raises:
        ConfigError: a keys or JWKS file that cannot be read or holds no valid key
            (path ``auth.api_key.keys_file``, ``auth.jwt.jwks_file``), or an HMAC
            secret shorter than its hash (``auth.jwt.secret``, RFC 7518 §3.2).
    """
    if config.type == "none":
        return None
    if config.type == "api_key" and config.api_key is not None:
        try:
            return ApiKeyAuthenticator.from_file(config.api_key.keys_file)
        except ValueError as exc:
            raise _error("auth.api_key.keys_file", str(exc)) from exc
    if config.type == "jwt" and config.jwt is not None:
        return JwtAuthenticator(config.jwt, _key_source(config.jwt))
    if config.type == "forward" and config.forward is not None:
        return ForwardAuthenticator(config.forward, proto=proto)
    raise _error(f"auth.{config.type}", f"required when auth.type is {config.type}")


def _key_source(jwt: JwtAuthConfig) -> KeySource | None:
    needed = min_secret_length(jwt.algorithms)
    if jwt.secret is not None and len(jwt.secret.encode("utf-8")) < needed:
        raise _error(
            "auth.jwt.secret",
            f"expected at least {needed} bytes for {', '.join(jwt.algorithms)} "
            "(RFC 7518 §3.2)",
        )
    if jwt.jwks_url is not None:
        return JwksUrl(jwt.jwks_url)
    if jwt.jwks_file is not None:
        try:
            return JwksFile(jwt.jwks_file)
        except ValueError as exc:
            raise _error("auth.jwt.jwks_file", str(exc)) from exc
    return None


def _error(path: str, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(path, message)])
