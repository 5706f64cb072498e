"""auth.type api_key: the keys file, the constant-time check, reload, the factory."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from wsproxy.auth import AuthFailed, Credentials, Identity
from wsproxy.auth import api_key as api_key_module
from wsproxy.auth.api_key import ApiKeyAuthenticator, load_keys, match_key
from wsproxy.auth.factory import build_authenticator
from wsproxy.config import ApiKeyAuthConfig, AuthConfig
from wsproxy.core.handshake import UpgradeRequest
from wsproxy.errors import ConfigError

REQUEST = UpgradeRequest(
    target=b"/", host=b"proxy.example", key=b"k", subprotocols=(), extensions=(),
    origin=None, headers=(),
)
pytestmark = pytest.mark.anyio

KEYS = {"key-for-ci-0123456789": "ci", "key-for-billing-abcdef": "billing"}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_keys(path: Path, keys: dict[str, str]) -> Path:
    lines = [f"- {{sha256: {digest(k)}, subject: {s}}}" for k, s in keys.items()]
    path.write_text("\n".join(lines) + "\n" if lines else "[]\n")
    return path


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return write_keys(tmp_path / "keys.yaml", KEYS)


@pytest.fixture
def auth(keys_file: Path) -> ApiKeyAuthenticator:
    built = build_authenticator(
        AuthConfig(type="api_key", api_key=ApiKeyAuthConfig(keys_file=str(keys_file)))
    )
    assert isinstance(built, ApiKeyAuthenticator)
    return built


async def authenticate(auth: ApiKeyAuthenticator, token: str | None) -> Identity:
    return await auth.authenticate(REQUEST, Credentials(token=token, source="header"), "127.0.0.1")


# Authenticating…


@pytest.mark.parametrize(("key", "subject"), list(KEYS.items()))
async def test_a_known_key_is_its_subject(auth: ApiKeyAuthenticator, key: str, subject: str):
    assert await authenticate(auth, key) == Identity(subject=subject)


async def test_no_key_is_401_missing_with_a_challenge(auth: ApiKeyAuthenticator):
    with pytest.raises(AuthFailed) as caught:
        await authenticate(auth, None)
    assert (caught.value.status, caught.value.reason) == (401, "missing")
    assert caught.value.headers == (("WWW-Authenticate", 'Bearer realm="wsproxy"'),)


@pytest.mark.parametrize("key", ["wrong", "key-for-ci-012345678", "KEY-FOR-CI-0123456789", ""])
async def test_a_wrong_key_is_401_invalid(auth: ApiKeyAuthenticator, key: str):
    with pytest.raises(AuthFailed) as caught:
        await authenticate(auth, key)
    assert (caught.value.status, caught.value.reason) == (401, "invalid")
    assert caught.value.headers[0][0] == "WWW-Authenticate"
    assert key == "" or key not in str(caught.value)


def test_owned_headers(auth: ApiKeyAuthenticator):
    assert auth.owned_headers == frozenset({"X-Auth-Subject"})


def test_every_digest_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch):
    keys = load_keys_from({f"key-{i}": f"s{i}" for i in range(5)})
    calls: list[bytes] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # the module api_key calls
    assert match_key(keys, "key-0") == "s0"  # the first entry matches...
    assert len(calls) == 5  # ...and the other four are compared all the same
    calls.clear()
    assert match_key(keys, "nope") is None
    assert len(calls) == 5


def load_keys_from(keys: dict[str, str]) -> tuple[api_key_module.ApiKey, ...]:
    return tuple(
        api_key_module.ApiKey(digest=hashlib.sha256(k.encode()).digest(), subject=s)
        for k, s in keys.items()
    )


def test_a_non_ascii_key_is_hashed_as_its_utf8_bytes():
    keys = load_keys_from({"clé": "fr"})
    # The sources hand over the Latin-1 text of the bytes the client sent.
    assert match_key(keys, "clé".encode().decode("latin-1")) == "fr"


def test_a_token_beyond_latin1_is_hashed_as_utf8():
    # No source produces one (they keep bytes as Latin-1 text), but it must not raise.
    assert match_key(load_keys_from({"☃": "snow"}), "☃") == "snow"


# The keys file…


def test_upper_case_digests_are_accepted(tmp_path: Path):
    path = tmp_path / "k.yaml"
    path.write_text(f"- sha256: {digest('x').upper()}\n  subject: a\n")
    assert match_key(load_keys(str(path)), "x") == "a"


def test_an_empty_list_is_valid_and_admits_nobody(tmp_path: Path):
    assert load_keys(str(write_keys(tmp_path / "k.yaml", {}))) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a list"),
        ("{a: 1}", "expected a list"),
        ("- [1, 2]", "[0]: expected a mapping"),
        (f"- {{sha256: {digest('a')}}}", "[0]: expected a mapping of exactly"),
        (f"- {{sha256: {digest('a')}, subject: a, role: admin}}", "exactly sha256 and subject"),
        ("- {sha256: abc, subject: a}", "[0].sha256: expected 64 hex digits"),
        (f"- {{sha256: {digest('a')}, subject: ''}}", "[0].subject"),
        (f"- {{sha256: {digest('a')}, subject: 12}}", "[0].subject"),
        (
            f"- {{sha256: {digest('a')}, subject: a}}\n- {{sha256: {digest('a')}, subject: b}}",
            "[1].sha256 repeats",
        ),
        ("- {sha256: [", "not valid YAML (line 1)"),
    ],
)
def test_invalid_files_are_refused(tmp_path: Path, text: str, message: str):
    path = tmp_path / "k.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_keys(str(path))


def test_factory_names_the_key_path_for_a_missing_file(tmp_path: Path):
    config = AuthConfig(
        type="api_key", api_key=ApiKeyAuthConfig(keys_file=str(tmp_path / "nope.yaml"))
    )
    with pytest.raises(ConfigError) as caught:
        build_authenticator(config)
    [problem] = caught.value.problems
    assert problem.path == "auth.api_key.keys_file"
    assert "cannot read" in problem.message


def test_factory_refuses_an_invalid_file(tmp_path: Path):
    path = tmp_path / "k.yaml"
    path.write_text("- {sha256: zz, subject: a}")
    config = AuthConfig(type="api_key", api_key=ApiKeyAuthConfig(keys_file=str(path)))
    with pytest.raises(ConfigError, match=r"auth\.api_key\.keys_file: .*64 hex digits"):
        build_authenticator(config)


def test_factory_builds_nothing_for_type_none():
    assert build_authenticator(AuthConfig()) is None


def test_factory_refuses_a_type_without_its_section():
    with pytest.raises(ConfigError, match=r"auth\.api_key: required"):
        build_authenticator(AuthConfig(type="api_key"))


# Reloading…


async def test_reload_reads_new_keys(auth: ApiKeyAuthenticator, keys_file: Path):
    write_keys(keys_file, {"rotated-key-000000000": "ci"})
    with capture_logs() as logs:
        auth.reload()
    assert await authenticate(auth, "rotated-key-000000000") == Identity(subject="ci")
    with pytest.raises(AuthFailed):
        await authenticate(auth, "key-for-ci-0123456789")
    assert [e["event"] for e in logs] == ["auth.reloaded"]
    assert logs[0]["keys"] == 1


@pytest.mark.parametrize("text", ["- {sha256: zz, subject: a}", "not: [valid"])
async def test_reload_keeps_the_old_keys_if_the_new_file_is_bad(
    auth: ApiKeyAuthenticator, keys_file: Path, text: str
):
    await anyio.Path(keys_file).write_text(text)
    with capture_logs() as logs:
        auth.reload()
    assert await authenticate(auth, "key-for-ci-0123456789") == Identity(subject="ci")
    assert [(e["event"], e["log_level"]) for e in logs] == [("auth.reload_failed", "error")]


async def test_reload_keeps_the_old_keys_if_the_file_is_gone(
    auth: ApiKeyAuthenticator, keys_file: Path
):
    await anyio.Path(keys_file).unlink()
    with capture_logs() as logs:
        auth.reload()
    assert await authenticate(auth, "key-for-billing-abcdef") == Identity(subject="billing")
    assert "cannot read" in logs[0]["error"]


async def test_no_key_appears_in_logs_or_output(
    auth: ApiKeyAuthenticator, keys_file: Path, capsys: pytest.CaptureFixture[str]
):
    with capture_logs() as logs:
        await authenticate(auth, "key-for-ci-0123456789")
        with pytest.raises(AuthFailed) as caught:
            await authenticate(auth, "wrong-key-zzzzzzzz")
        auth.reload()
        await anyio.Path(keys_file).write_text("garbage: [")
        auth.reload()
    failure = caught.value
    text = f"{logs!r} {failure} {failure.message} {failure.headers}"
    text += "".join(capsys.readouterr())
    assert "key-for-ci" not in text
    assert "wrong-key" not in text
