"""wsproxy.config and wsproxy.units: the YAML schema, its errors and config.example.yaml."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from wsproxy.config import (
    BackendConfig,
    BalanceConfig,
    ProxyConfig,
    load_config,
    parse_config,
    parse_config_text,
)
from wsproxy.errors import ConfigError, ConfigProblem
from wsproxy.units import parse_duration, parse_size

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
BACKENDS = [{"name": "app-1", "url": "ws://127.0.0.1:8001"}]


def parse(**sections: Any) -> ProxyConfig:
    """A config of one backend plus `sections`."""
    return parse_config({"backends": BACKENDS, **sections}, env={})


def problems(raw: object = None, **sections: Any) -> dict[str, str]:
    """{path: message} of the problems of `raw`, or of one backend plus `sections`."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"backends": BACKENDS, **sections} if raw is None else raw, env={})
    return {p.path: p.message for p in caught.value.problems}


def text_problems(text: str, **env: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, env=env)
    return list(caught.value.problems)


# The example file ----------------------------------------------------------------------


def test_example_parses_to_the_defaults():
    config = load_config(EXAMPLE)
    assert dataclasses.replace(config, backends=()) == ProxyConfig()


def test_example_has_two_static_backends():
    config = load_config(EXAMPLE)
    assert [(b.name, b.url, b.host, b.port) for b in config.backends] == [
        ("app-1", "ws://127.0.0.1:8001", "127.0.0.1", 8001),
        ("app-2", "ws://127.0.0.1:8002", "127.0.0.1", 8002),
    ]


def test_defaults_in_code_units():
    config = ProxyConfig()
    assert config.limits.max_message_size == 1024 * 1024
    assert config.limits.max_request_head == 16 * 1024
    assert config.heartbeat.interval == 20.0
    assert config.balance == BalanceConfig(policy="least_connections")
    assert config.auth.token_from == ("header", "subprotocol")
    assert config.admission.reject_with == "status"  # SPEC's 503 + Retry-After
    assert (config.resume.enabled, config.resume.window) == (False, 30.0)
    assert (config.resume.buffer, config.resume.max_total) == (64 << 10, 256 << 20)


def test_a_full_config_is_typed():
    config = parse(
        listen={"host": "::", "port": 0, "tls": {"certfile": "c.pem", "keyfile": "k.pem"}},
        backend_tls={"ca_file": "ca.pem", "verify": False, "server_name": "app.internal"},
        balance="hash:X-User-Id",
        allowed_origins=["HTTPS://App.Example.com"],
        trusted_proxies=["10.0.0.0/8", "fd00::/8", "192.0.2.7"],
        heartbeat={"interval": "500ms", "timeout": 2},
        limits={"max_message_size": "64KiB", "max_connections_per_ip": 50},
        drain={"spread": "1m", "timeout": "2m", "max_close_rate": 12.5, "reconnect_hint": False},
        logging={"level": "debug", "format": "console"},
        compression="off",
    )
    assert config.listen.port == 0
    assert config.listen.tls is not None
    assert config.listen.tls.keyfile == "k.pem"
    assert config.backend_tls.verify is False
    assert config.balance == BalanceConfig(policy="hash", hash_key="X-User-Id")
    assert config.allowed_origins == ("https://app.example.com",)
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    assert (config.heartbeat.interval, config.heartbeat.timeout) == (0.5, 2.0)
    assert config.limits.max_message_size == 65536
    assert (config.drain.spread, config.drain.timeout, config.drain.max_close_rate) == (
        60.0,
        120.0,
        12.5,
    )
    assert config.compression == "off"


def test_yaml_off_is_a_string_not_false():
    # YAML 1.1 reads `off` as false; the loader keeps only true/false as booleans.
    config = parse_config_text("backends: [{name: a, url: 'ws://h:1'}]\ncompression: off\n")
    assert config.compression == "off"
    assert problems(compression=False) == {
        "compression": "expected one of passthrough, off, got false"
    }


# Where problems are reported -----------------------------------------------------------

LINES_CASES = [
    ("listen:\n  hots: x\n", "listen.hots", 2, 'unknown key (did you mean "host"?)'),
    ("heartbeat:\n  interval: soon\n", "heartbeat.interval", 2, 'expected a duration like "20s"'),
    ("limits:\n  max_message_size: big\n", "limits.max_message_size", 2, "expected a size"),
    ("listen: {port: eighty}\n", "listen.port", 1, "expected a whole number"),
    ("admin:\n\n  port: 65536\n", "admin.port", 3, "port 65536 is not a TCP port"),
    ("logging: {level: loud}\n", "logging.level", 1, "expected one of debug, info"),
    ("heartbeat: 5\n", "heartbeat", 1, "expected a mapping, got 5"),
    ("allowed_origins: https://a.example\n", "allowed_origins", 1, "expected a list"),
]


@pytest.mark.parametrize(("snippet", "path", "line", "message"), LINES_CASES)
def test_problem_names_key_path_and_line(snippet, path, line, message):
    text = "backends:\n  - {name: a, url: 'ws://h:1'}\n" + snippet
    (problem,) = text_problems(text)
    assert (problem.path, problem.line) == (path, line + 2)
    assert message in problem.message


def test_missing_key_is_located_at_its_mapping():
    text = "backends:\n  - name: a\n  - name: b\n    url: ws://h:1\n"
    assert text_problems(text) == [ConfigProblem("backends[0].url", "required key is missing", 2)]


def test_spec_example_message():
    text = "backends: [{name: a, url: 'ws://h:1'}]\nheartbeat: {interval: soon}\n"
    (problem,) = text_problems(text)
    assert str(problem) == 'heartbeat.interval: expected a duration like "20s", got "soon" (line 2)'


def test_duplicate_yaml_key():
    text = "backends: [{name: a, url: 'ws://h:1'}]\nlisten:\n  port: 1\n  port: 2\n"
    assert text_problems(text) == [
        ConfigProblem("listen.port", "duplicate key (first on line 3)", 4)
    ]


def test_bad_yaml_has_its_line():
    (problem,) = text_problems("listen:\n  port: 1\n bad: [\n")
    assert problem.path == ""
    assert problem.message.startswith("not valid YAML: ")
    assert problem.line is not None


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text):
    (problem,) = text_problems(text)
    assert problem.message.startswith("the top level must be a mapping")


def test_empty_file_says_what_is_required():
    (problem,) = text_problems("# nothing\n")
    assert problem.path == "backends"
    assert "at least one backend is required" in problem.message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"can't read .*nope\.yaml: No such file"):
        load_config(tmp_path / "nope.yaml")


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="can't read"):
        load_config(tmp_path)  # a directory


def test_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"listen: {host: caf\xe9}\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_config(path)


def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "wsproxy.yaml"
    path.write_text("backends: [{name: a, url: 'ws://h:1'}]\nlisten:\n  port: ${PORT}\n")
    assert load_config(path, env={"PORT": "9999"}).listen.port == 9999


def test_several_problems_at_once_in_file_order():
    text = (
        "listen: {port: -1}\n"
        "backends:\n"
        "  - {name: a, url: 'http://h'}\n"
        "heartbeat: {interval: soon, timeout: true}\n"
        "drain: {shutdown_close_code: 1006}\n"
        "colour: blue\n"
    )
    found = [(p.path, p.line) for p in text_problems(text)]
    assert found == [
        ("listen.port", 1),
        ("backends[0].url", 3),
        ("heartbeat.interval", 4),
        ("heartbeat.timeout", 4),
        ("drain.shutdown_close_code", 5),
        ("colour", 6),
    ]


def test_problems_without_lines():
    assert parse_config_problems_lines({"backends": BACKENDS, "plain_http": "maybe"}) == [None]


def parse_config_problems_lines(raw: object) -> list[int | None]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    return [p.line for p in caught.value.problems]


def test_explicit_lines_are_used():
    with pytest.raises(ConfigError) as caught:
        parse_config({"plain_http": "maybe"}, lines={"plain_http": 7}, env={})
    assert [(p.path, p.line) for p in caught.value.problems] == [
        ("plain_http", 7),
        ("backends", None),
    ]


# Unknown keys ----------------------------------------------------------------------------


def test_unknown_keys_everywhere():
    assert problems(
        lisen={},
        drain={"spreed": "1s"},
        auth={"jwt": {"secret": "s", "issuer": "i", "audiance": "a"}},
        backends=[{"name": "a", "url": "ws://h", "weight": 2}],
    ) == {
        "lisen": 'unknown key (did you mean "listen"?)',
        "drain.spreed": 'unknown key (did you mean "spread"?)',
        "auth.jwt.audiance": 'unknown key (did you mean "audience"?)',
        "backends[0].weight": "unknown key",
    }


# ${NAME} interpolation -------------------------------------------------------------------


def test_env_interpolation():
    env = {"HOST": "10.0.0.1", "PORT": "8001", "PP": "false", "SPREAD": "3s"}
    raw = {
        "backends": [{"name": "a", "url": "ws://${HOST}:${PORT}/ws"}],
        "listen": {"port": "${PORT}", "proxy_protocol": "${PP}"},
        "drain": {"spread": "${SPREAD}"},
    }
    config = parse_config(raw, env=env)
    assert config.backends[0].url == "ws://10.0.0.1:8001/ws"
    assert (config.backends[0].host, config.backends[0].port) == ("10.0.0.1", 8001)
    assert config.listen.port == 8001
    assert config.listen.proxy_protocol is False
    assert config.drain.spread == 3.0


def test_env_unset_names_key_and_variable():
    assert problems(
        backend_tls={"ca_file": "${CA_DIR}/ca.pem"},
        allowed_origins=["https://${SITE}"],
    ) == {
        "backend_tls.ca_file": "environment variable CA_DIR is not set",
        "allowed_origins[0]": "environment variable SITE is not set",
    }


def test_env_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("WSPROXY_TEST_PORT", "7001")
    config = parse_config({"backends": BACKENDS, "listen": {"port": "${WSPROXY_TEST_PORT}"}})
    assert config.listen.port == 7001


def test_resolvers():
    dns = {"name": "app.default.svc.cluster.local", "port": 8000}
    for resolver in ("10.0.0.10", "10.0.0.10:53", "::1", "[::1]:5353"):
        config = parse_config({"backends": BACKENDS,
                               "discovery": {"dns": {**dns, "resolver": resolver}}}, env={})
        assert config.discovery.dns is not None
        assert config.discovery.dns.resolver == resolver


def test_a_lone_dollar_is_left_alone():
    config = parse(backend_tls={"server_name": "app.internal", "ca_file": "$HOME/ca.pem"})
    assert config.backend_tls.ca_file == "$HOME/ca.pem"


# Durations and sizes ---------------------------------------------------------------------

GOOD_DURATIONS = [
    ("500ms", 0.5),
    ("20s", 20.0),
    ("2m", 120.0),
    ("1h", 3600.0),
    ("1.5s", 1.5),
    ("100ms", 0.1),
    (" 3 s ", 3.0),
    ("7", 7.0),
    (0, 0.0),
    (5, 5.0),
    (0.25, 0.25),
]
BAD_DURATIONS = ["soon", "", "-1s", "5 minutes", "1d", "1H", "s", True, False, None, [1], -1, -0.5]


@pytest.mark.parametrize(("value", "seconds"), GOOD_DURATIONS)
def test_good_durations(value, seconds):
    assert parse_duration(value) == seconds
    assert parse(drain={"delay": value}).drain.delay == seconds


@pytest.mark.parametrize("value", [*BAD_DURATIONS, float("inf"), float("nan")])
def test_bad_durations(value):
    with pytest.raises(ValueError, match='expected a duration like "20s"'):
        parse_duration(value)
    assert problems(drain={"delay": value})["drain.delay"].startswith("expected a duration")


GOOD_SIZES = [
    ("512B", 512),
    ("64KiB", 65536),
    ("1MiB", 1048576),
    ("1GiB", 1073741824),
    ("64KB", 64000),
    ("2MB", 2000000),
    ("1.5KiB", 1536),
    ("1mib", 1048576),
    ("4096", 4096),
    (4096, 4096),
    (1024.0, 1024),
]
BAD_SIZES = ["lots", "", "-1KiB", "1.5B", "1TiB", "KiB", True, None, [1], -1, 0.5]


@pytest.mark.parametrize(("value", "size"), GOOD_SIZES)
def test_good_sizes(value, size):
    assert parse_size(value) == size
    assert parse(limits={"max_message_size": value}).limits.max_message_size == size


@pytest.mark.parametrize("value", BAD_SIZES)
def test_bad_sizes(value):
    with pytest.raises(ValueError, match='expected a size like "64KiB"'):
        parse_size(value)
    message = problems(limits={"max_message_size": value})["limits.max_message_size"]
    assert message.startswith("expected a size")


def test_zero_where_a_positive_value_is_needed():
    assert problems(
        heartbeat={"interval": 0}, limits={"max_message_size": 0, "max_connections": 0}
    ) == {
        "heartbeat.interval": 'expected a duration longer than 0s like "20s", got 0',
        "limits.max_message_size": 'expected a size of at least 1 byte like "64KiB", got 0',
        "limits.max_connections": "expected a whole number of 1 or more, got 0",
    }


@pytest.mark.parametrize(
    ("sections", "path"),
    [
        ({"heartbeat": {"interval": True}}, "heartbeat.interval"),
        ({"limits": {"max_message_size": True}}, "limits.max_message_size"),
        ({"limits": {"max_connections": True}}, "limits.max_connections"),
        ({"listen": {"port": False}}, "listen.port"),
        ({"drain": {"max_close_rate": True}}, "drain.max_close_rate"),
        ({"drain": {"shutdown_close_code": True}}, "drain.shutdown_close_code"),
    ],
)
def test_a_bool_is_not_a_number(sections, path):
    assert problems(**sections)[path].rpartition(" got ")[2] in ("true", "false")


@pytest.mark.parametrize(
    ("sections", "path", "message"),
    [
        ({"listen": {"host": 8080}}, "listen.host", "expected a string, got 8080"),
        ({"listen": {"host": ""}}, "listen.host", "expected a string, got an empty one"),
        ({"listen": {"proxy_protocol": "yes"}}, "listen.proxy_protocol", "expected true or"),
        ({"listen": {"port": 80.0}}, "listen.port", "expected a whole number, got 80.0"),
        ({"admission": {"burst": -1}}, "admission.burst", "of 0 or more, got -1"),
        ({"admission": {"reject_with": "503"}}, "admission.reject_with",
         "expected one of status, close, got"),
        ({"resume": {"enabled": "yes"}}, "resume.enabled", "expected true or"),
        ({"resume": {"window": "0s"}}, "resume.window", "longer than 0s"),
        ({"resume": {"buffer": 0}}, "resume.buffer", "got 0"),
        ({"resume": {"max_total": "lots"}}, "resume.max_total", "lots"),
        ({"resume": {"windw": "1s"}}, "resume.windw", ""),
        ({"drain": {"max_close_rate": -2}}, "drain.max_close_rate", "of 0 or more, got -2"),
        ({"trusted_proxies": ["10.0.0.1/8"]}, "trusted_proxies[0]", "has host bits set"),
        ({"allowed_origins": ["https://a.example/"]}, "allowed_origins[0]", "an origin like"),
        ({"balance": "random"}, "balance",
         "expected round_robin, least_connections, cookie or hash:"),
        ({"balance": "hash:"}, "balance", "expected round_robin"),
        ({"health_check": {"path": "healthz"}}, "health_check.path", 'a path like "/healthz"'),
        ({"auth": {"subprotocol_prefix": "bearer token"}}, "auth.subprotocol_prefix", "token"),
        ({"discovery": {"dns": {"name": "-x", "port": 1}}}, "discovery.dns.name", "a DNS name"),
        ({"discovery": {"dns": {"name": "a", "port": 0}}}, "discovery.dns.port", "port 0 is not"),
        (
            {"discovery": {"dns": {"name": "a", "port": 1, "resolver": "dns.local:53"}}},
            "discovery.dns.resolver",
            'like "10.0.0.10:53"',
        ),
        ({"auth": {"forward": {"url": "ftp://x"}}}, "auth.forward.url", "expected a URL like"),
        (
            {"auth": {"forward": {"url": "http://x", "copy_headers": ["a b"]}}},
            "auth.forward.copy_headers[0]",
            "header name",
        ),
        ({"auth": {"jwt": {"algorithms": ["none"]}}}, "auth.jwt.algorithms[0]", "one of HS256"),
        ({"auth": {"jwt": {"algorithms": []}}}, "auth.jwt.algorithms", "at least one algorithm"),
        (
            {"auth": {"jwt": {"secret": "s", "claims_to_headers": {"sub": "X Sub"}}}},
            "auth.jwt.claims_to_headers.sub",
            "header name",
        ),
        (
            {"auth": {"jwt": {"secret": "s", "claims_to_headers": ["sub"]}}},
            "auth.jwt.claims_to_headers",
            "a mapping",
        ),
        ({"auth": {"api_key": {}}}, "auth.api_key.keys_file", "required key is missing"),
    ],
)
def test_wrong_values(sections, path, message):
    assert message in problems(**sections)[path]


# Backends --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("ws://127.0.0.1:8001", ("ws", "127.0.0.1", 8001, "")),
        ("ws://app.internal", ("ws", "app.internal", 80, "")),
        ("wss://app.internal", ("wss", "app.internal", 443, "")),
        ("wss://app.internal:8443/socket", ("wss", "app.internal", 8443, "/socket")),
        ("ws://[::1]:8001/", ("ws", "::1", 8001, "/")),
        ("wss://[2001:db8::7]", ("wss", "2001:db8::7", 443, "")),
        ("WS://App.Internal:81", ("ws", "app.internal", 81, "")),
    ],
)
def test_backend_url_parts(url, parts):
    (backend,) = parse(backends=[{"name": "a", "url": url}]).backends
    assert (backend.scheme, backend.host, backend.port, backend.path) == parts
    assert backend.url == url
    assert backend == BackendConfig.from_url(name="a", url=url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:80", 'expected a URL like "ws://10.0.0.5:8000", got "http://h:80"'),
        ("h:80", "expected a URL like"),
        ("ws://", "expected a URL like"),
        ("ws://[::1", "expected a URL like"),
        ("ws://h:65536", "port 65536 is not a TCP port"),
        ("ws://h:0", "port 0 is not a TCP port to connect to"),
        ("ws://h:http", "port http is not a TCP port"),
        ("ws://h/x?y=1", "takes no user, query or fragment"),
        ("ws://u:p@h/", "takes no user, query or fragment"),
        ("ws://bad_host!/", "is not a host name or an IP address"),
    ],
)
def test_bad_backend_urls(url, message):
    assert message in problems(backends=[{"name": "a", "url": url}])["backends[0].url"]
    with pytest.raises(ValueError, match=r"URL|port|host"):
        BackendConfig.from_url(name="a", url=url)


def test_duplicate_backend_names():
    assert problems(
        backends=[
            {"name": "app-1", "url": "ws://h:1"},
            {"name": "app-2", "url": "ws://h:2"},
            {"name": "app-1", "url": "ws://h:3"},
        ]
    ) == {"backends[2].name": 'duplicate name "app-1" (also backends[0])'}


def test_backend_names_fit_urls_and_labels():
    message = problems(backends=[{"name": "app 1", "url": "ws://h:1"}])["backends[0].name"]
    assert message.startswith("expected a name of letters, digits")


@pytest.mark.parametrize("backends", [[], None])
def test_backends_are_required(backends):
    assert problems({"backends": backends}) == {
        "backends": "at least one backend is required (backends or discovery.dns)"
    }


def test_discovery_alone_is_enough():
    raw = {"discovery": {"dns": {"name": "app.default.svc.cluster.local", "port": 8000}}}
    config = parse_config(raw, env={})
    assert config.backends == ()
    assert config.discovery.dns is not None


# Close codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1012, 1014, 3000, 4999])
def test_close_codes_that_can_be_sent(code):
    assert parse(drain={"backend_close_code": code}).drain.backend_close_code == code


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, -1])
def test_close_codes_that_cannot_be_sent(code):
    message = problems(drain={"backend_close_code": code})["drain.backend_close_code"]
    assert "not a close code that can be sent" in message or "expected a whole number" in message


# Rules across keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        (
            {"admin": {"host": "0.0.0.0"}},
            {"admin.token": "required when host (0.0.0.0) is not a loopback address"},
        ),
        (
            {"drain": {"spread": "30s"}},
            {"drain.spread": "30s is longer than timeout (25s)"},
        ),
        (
            {"health_check": {"timeout": "6s"}},
            {"health_check.timeout": "6s is longer than interval (5s)"},
        ),
        (
            {"backend_tls": {"keyfile": "k.pem"}},
            {"backend_tls.keyfile": "needs certfile too"},
        ),
        (
            {"listen": {"port": 9090}},
            {"admin.port": "9090 is listen.port too"},
        ),
    ],
)
def test_cross_key_rules(sections, expected):
    assert problems(**sections) == expected


def test_cross_key_rules_allow_the_fine_cases():
    config = parse(
        admin={"host": "::1", "port": 0},
        listen={"port": 0},
        drain={"spread": "25s"},
        backend_tls={"certfile": "c.pem"},
    )
    assert config.admin.host == "::1"


def test_a_bad_value_is_reported_once():
    # The spread check would compare against the default timeout: it is skipped instead.
    assert problems(drain={"timeout": "later", "spread": "60s"}) == {
        "drain.timeout": 'expected a duration like "20s", got "later"'
    }


def test_auth_sections_are_checked():
    found = problems(
        auth={
            "type": "jwt",
            "jwt": {"algorithms": ["HS256", "RS256"], "jwks_file": "a", "jwks_url": "https://b"},
        }
    )
    assert found == {
        "auth.jwt.algorithms": "mixes HMAC (HS*) and public-key algorithms",
        "auth.jwt.secret": "required for HS256",
        "auth.jwt.jwks_url": "set jwks_file or jwks_url, not both",
    }


def test_auth_type_needs_a_token_source():
    assert problems(auth={"type": "api_key", "api_key": {"keys_file": "k"}, "token_from": []}) == {
        "auth.token_from": "expected at least one token source for auth.type api_key",
    }


def test_auth_type_needs_its_section():
    assert problems(auth={"type": "forward"}) == {
        "auth.forward": "required when auth.type is forward",
    }


def test_auth_sections_parse():
    config = parse(
        auth={
            "token_from": ["query:access_token", "header:X-Api-Key", "subprotocol"],
            "api_key": {"keys_file": "keys.yaml"},
            "jwt": {
                "algorithms": ["RS256", "ES256"],
                "jwks_url": "https://issuer.example/jwks.json",
                "leeway": "10s",
                "claims_to_headers": {"tenant": "X-Auth-Tenant"},
            },
            "forward": {"url": "http://127.0.0.1:9000/auth", "copy_headers": ["X-User-Id"]},
        }
    )
    auth = config.auth
    assert auth.token_from == ("query:access_token", "header:X-Api-Key", "subprotocol")
    assert auth.jwt is not None
    assert auth.jwt.algorithms == ("RS256", "ES256")
    assert auth.jwt.leeway == 10.0
    assert auth.jwt.claims_to_headers == (("tenant", "X-Auth-Tenant"),)
    assert auth.forward is not None
    assert (auth.forward.timeout, auth.forward.copy_headers) == (2.0, ("X-User-Id",))


def test_public_key_jwt_needs_keys():
    found = problems(auth={"jwt": {"algorithms": ["ES256"], "secret": "s"}})
    assert found == {"auth.jwt.jwks_file": "jwks_file or jwks_url is required for ES256"}


def test_token_sources_are_checked():
    assert problems(auth={"token_from": ["header", "query:", "form:x", "header:Bad Name"]}) == {
        f"auth.token_from[{i}]": (
            f"expected header, subprotocol, query:NAME, cookie:NAME or header:NAME, got {shown}"
        )
        for i, shown in [(1, '"query:"'), (2, '"form:x"'), (3, '"header:Bad Name"')]
    }


def test_cookie_source_needs_allowed_origins():
    text = "backends: [{name: a, url: 'ws://h:1'}]\nauth: {token_from: ['cookie:session']}\n"
    assert text_problems(text) == [
        ConfigProblem("auth.token_from[0]", "a cookie source needs allowed_origins", 2),
    ]




# rebalance (issue 19) --------------------------------------------------------------------


def test_rebalance_defaults_and_values():
    config = parse()
    assert config.rebalance.enabled is False
    assert (config.rebalance.ratio, config.rebalance.max_close_rate) == (1.2, 20.0)
    assert config.rebalance.warmup == 10.0
    config = parse(rebalance={"enabled": True, "ratio": "1.5", "max_close_rate": 100,
                              "warmup": "500ms"})
    assert config.rebalance.enabled is True
    assert (config.rebalance.ratio, config.rebalance.max_close_rate) == (1.5, 100.0)
    assert config.rebalance.warmup == 0.5


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("enabled", "yes", "expected true or false"),
        ("ratio", 1, "expected a number above 1"),
        ("ratio", 0.9, "expected a number above 1"),
        ("ratio", 1000, "at most 100"),
        ("ratio", "lots", "expected a number"),
        ("max_close_rate", 0, "above 0"),
        ("max_close_rate", -5, "expected a number of 0 or more"),
        ("max_close_rate", 1e6, "at most 10000"),
        ("warmup", "soon", "duration"),
        ("warmup", "48h", "at most 24h"),
        ("balance", 1, "unknown key"),
    ],
)
def test_rebalance_errors_name_the_key(key, value, message):
    found = problems(rebalance={key: value})
    assert list(found) == [f"rebalance.{key}"]
    assert message in found[f"rebalance.{key}"]
