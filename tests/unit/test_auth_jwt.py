"""auth.type jwt: HS* with a secret, RS*/PS*/ES*/EdDSA with a JWKS file.

Tokens are made here with PyJWT and keys are generated here with `cryptography`; none
is committed. Each failure asserts its status and reason, and a last test runs them
all again to check that no token reaches a log line or the output.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning
from structlog.testing import capture_logs

from wsproxy.auth import AuthFailed, Credentials, Identity
from wsproxy.auth.factory import build_authenticator
from wsproxy.auth.jwt import JwtAuthenticator
from wsproxy.config import AuthConfig, JwtAuthConfig
from wsproxy.core.handshake import UpgradeRequest
from wsproxy.errors import ConfigError

pytestmark = pytest.mark.anyio

REQUEST = UpgradeRequest(
    target=b"/", host=b"proxy.example", key=b"k", subprotocols=(), extensions=(),
    origin=None, headers=(),
)
SECRET = "s" * 32 + "-test-secret"
LEEWAY = 30.0


# Keys and tokens…


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(private: Any, kid: str | None, **extra: str) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        data["kid"] = kid
    return {**data, **extra}


def write_jwks(path: Path, *keys: object) -> Path:
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(secret: str = SECRET, alg: str = "HS256", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm=alg)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hs256(secret: bytes, kid: str, payload: dict[str, Any]) -> str:
    """An HS256 token made by hand: PyJWT refuses to use a PEM key as a secret."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def hs_auth(**config: Any) -> JwtAuthenticator:
    config.setdefault("secret", SECRET)
    config.setdefault("leeway", LEEWAY)
    built = build_authenticator(AuthConfig(type="jwt", jwt=JwtAuthConfig(**config)))
    assert isinstance(built, JwtAuthenticator)
    return built


def jwks_auth(path: Path, algorithms: tuple[str, ...] = ("RS256",), **config: Any):
    return hs_auth(algorithms=algorithms, secret=None, jwks_file=str(path), **config)


async def authenticate(auth: JwtAuthenticator, token: str | None) -> Identity:
    return await auth.authenticate(REQUEST, Credentials(token=token, source="header"), "10.0.0.1")


async def refused(auth: JwtAuthenticator, token: str | None) -> tuple[int, str]:
    with pytest.raises(AuthFailed) as caught:
        await authenticate(auth, token)
    failure = caught.value
    assert failure.headers[0][0] == "WWW-Authenticate" or failure.status != 401
    return failure.status, failure.reason


# HS* with a secret…


async def test_a_good_token_is_its_subject_and_expiry():
    token_claims = claims()
    identity = await authenticate(hs_auth(), jwt.encode(token_claims, SECRET, algorithm="HS256"))
    assert identity == Identity(subject="alice", expires_at=token_claims["exp"] + LEEWAY)


async def test_a_token_without_exp_never_expires():
    assert (await authenticate(hs_auth(), hs_token(exp=None))).expires_at is None


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_each_hmac_algorithm(alg: str):
    secret = "k" * 64
    auth = hs_auth(algorithms=(alg,), secret=secret)
    assert (await authenticate(auth, hs_token(secret, alg))).subject == "alice"


async def test_no_token_is_401_missing_with_a_bare_challenge():
    with pytest.raises(AuthFailed) as caught:
        await authenticate(hs_auth(), None)
    assert (caught.value.status, caught.value.reason) == (401, "missing")
    assert caught.value.headers == (("WWW-Authenticate", 'Bearer realm="wsproxy"'),)


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "a.b", "", "eyJhbGciOiJIUzI1NiJ9.e30", "é.é.é"]
)
async def test_malformed(token: str):
    assert await refused(hs_auth(), token) == (401, "malformed")


async def test_a_bad_token_gets_the_invalid_token_challenge():
    with pytest.raises(AuthFailed) as caught:
        await authenticate(hs_auth(), hs_token("another-secret-" + "x" * 32))
    assert caught.value.headers == (
        ("WWW-Authenticate", 'Bearer realm="wsproxy", error="invalid_token"'),
    )


async def test_bad_signature():
    assert await refused(hs_auth(), hs_token("another-secret-" + "x" * 32)) == (
        401, "bad_signature"
    )


async def test_a_tampered_payload_is_a_bad_signature():
    head, _, sig = hs_token().split(".")
    body = b64(json.dumps(claims(sub="admin")).encode())
    assert await refused(hs_auth(), f"{head}.{body}.{sig}") == (401, "bad_signature")


async def test_expired():
    assert await refused(hs_auth(), hs_token(exp=int(time.time()) - 100)) == (401, "expired")


async def test_expiry_within_the_leeway_passes():
    token = hs_token(exp=int(time.time()) - 10)
    assert (await authenticate(hs_auth(), token)).subject == "alice"


async def test_not_yet_valid():
    token = hs_token(nbf=int(time.time()) + 300)
    assert await refused(hs_auth(), token) == (401, "not_yet_valid")


async def test_nbf_within_the_leeway_passes():
    assert (await authenticate(hs_auth(), hs_token(nbf=int(time.time()) + 10))).subject


@pytest.mark.parametrize("iss", ["https://evil.example", None])
async def test_wrong_or_missing_issuer(iss: str | None):
    auth = hs_auth(issuer="https://id.example")
    assert await refused(auth, hs_token(iss=iss)) == (401, "wrong_issuer")


async def test_right_issuer():
    auth = hs_auth(issuer="https://id.example")
    assert (await authenticate(auth, hs_token(iss="https://id.example"))).subject == "alice"


@pytest.mark.parametrize("aud", ["other", ["other", "more"], None])
async def test_wrong_or_missing_audience(aud: object):
    auth = hs_auth(audience="chat")
    assert await refused(auth, hs_token(aud=aud)) == (401, "wrong_audience")


@pytest.mark.parametrize("aud", ["chat", ["other", "chat"]])
async def test_right_audience(aud: object):
    assert (await authenticate(hs_auth(audience="chat"), hs_token(aud=aud))).subject


async def test_audience_is_not_checked_unless_configured():
    assert (await authenticate(hs_auth(), hs_token(aud="anything"))).subject == "alice"


async def test_alg_none_is_refused():
    token = jwt.encode(claims(), "", algorithm="none")
    assert await refused(hs_auth(), token) == (401, "bad_algorithm")


async def test_an_unlisted_hmac_algorithm_is_refused():
    token = hs_token("k" * 64, "HS512")
    assert await refused(hs_auth(secret="k" * 64), token) == (401, "bad_algorithm")


async def test_a_public_key_token_is_refused_by_an_hmac_config(rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert await refused(hs_auth(), token) == (401, "bad_algorithm")


@pytest.mark.parametrize("sub", [None, "", 42, "bad\nsubject"])
async def test_a_missing_or_unusable_subject_is_refused(sub: object):
    assert await refused(hs_auth(), hs_token(sub=sub)) == (401, "bad_subject")


@pytest.mark.parametrize(
    "overrides", [{"iat": "yesterday"}, {"exp": "soon"}, {"jti": 5}], ids=["iat", "exp", "jti"]
)
async def test_claims_of_the_wrong_type_are_malformed(overrides: dict[str, Any]):
    assert await refused(hs_auth(), hs_token(**overrides)) == (401, "malformed")


async def test_reload_without_key_files_does_nothing():
    auth = hs_auth()
    auth.reload()
    assert (await authenticate(auth, hs_token())).subject == "alice"


async def test_claims_to_headers():
    auth = hs_auth(
        claims_to_headers=(
            ("tenant", "X-Auth-Tenant"), ("roles", "X-Auth-Roles"), ("level", "X-Level"),
            ("admin", "X-Admin"), ("absent", "X-Absent"), ("name", "X-Name"),
            ("meta", "X-Meta"), ("evil", "X-Evil"),
        )
    )
    token = hs_token(
        tenant="acme", roles=["reader", "writer"], level=3, admin=False, name="Zoë 日本",
        meta={"a": 1}, evil="x\r\nX-Auth-Subject: root",
    )
    identity = await authenticate(auth, token)
    assert identity.headers == (
        ("X-Auth-Tenant", "acme"),
        ("X-Auth-Roles", "reader,writer"),
        ("X-Level", "3"),
        ("X-Admin", "false"),
        ("X-Name", "Zoë 日本".encode().decode("latin-1")),  # UTF-8 bytes on the wire
        ("X-Meta", '{"a":1}'),
    )
    assert auth.owned_headers == frozenset(
        {"X-Auth-Subject", "X-Auth-Tenant", "X-Auth-Roles", "X-Level", "X-Admin",
         "X-Absent", "X-Name", "X-Meta", "X-Evil"}
    )


def test_a_short_secret_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        hs_auth(secret="short")
    [problem] = caught.value.problems
    assert problem.path == "auth.jwt.secret"
    assert "32 bytes" in problem.message


def test_the_secret_must_fit_the_strongest_algorithm():
    with pytest.raises(ConfigError, match="64 bytes"):
        hs_auth(algorithms=("HS256", "HS512"), secret="k" * 40)


# Public keys from a JWKS file…


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key, ec_key, ed_key) -> Path:
    return write_jwks(
        tmp_path / "jwks.json",
        public_jwk(rsa_key, "rsa-1"),
        public_jwk(ec_key, "ec-1"),
        public_jwk(ed_key, "ed-1"),
    )


@pytest.mark.parametrize(
    ("alg", "key", "kid"),
    [
        ("RS256", "rsa_key", "rsa-1"), ("RS512", "rsa_key", "rsa-1"),
        ("PS256", "rsa_key", "rsa-1"), ("ES256", "ec_key", "ec-1"), ("EdDSA", "ed_key", "ed-1"),
    ],
)
async def test_public_key_algorithms(
    request: pytest.FixtureRequest, jwks_file: Path, alg: str, key: str, kid: str
):
    private = request.getfixturevalue(key)
    token = jwt.encode(claims(), private, algorithm=alg, headers={"kid": kid})
    auth = jwks_auth(jwks_file, (alg,))
    assert (await authenticate(auth, token)).subject == "alice"


async def test_hs_rs_confusion_is_refused(jwks_file: Path, rsa_key):
    # The attack: sign HS256 with the (public) RSA key as the HMAC secret.
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = forged_hs256(pem, "rsa-1", claims())
    assert await refused(jwks_auth(jwks_file), token) == (401, "bad_algorithm")
    # ...and with the JWK's modulus bytes, the other favourite.
    n = public_jwk(rsa_key, None)["n"].encode()
    assert await refused(jwks_auth(jwks_file), forged_hs256(n, "rsa-1", claims())) == (
        401, "bad_algorithm",
    )


async def test_alg_none_is_refused_with_public_keys(jwks_file: Path):
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": "rsa-1"})
    assert await refused(jwks_auth(jwks_file), token) == (401, "bad_algorithm")


async def test_a_bad_signature_with_a_public_key(jwks_file: Path):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await refused(jwks_auth(jwks_file), token) == (401, "bad_signature")


async def test_a_token_for_a_key_of_another_type(jwks_file: Path, rsa_key):
    # kid names the EC key, alg says RS256: the EC key cannot verify it.
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    assert await refused(jwks_auth(jwks_file), token) == (401, "bad_algorithm")


async def test_a_key_pinned_to_another_alg(tmp_path: Path, rsa_key):
    path = write_jwks(tmp_path / "j.json", public_jwk(rsa_key, "rsa-1", alg="RS256"))
    token = jwt.encode(claims(), rsa_key, algorithm="PS256", headers={"kid": "rsa-1"})
    assert await refused(jwks_auth(path, ("RS256", "PS256")), token) == (401, "bad_algorithm")


async def test_unknown_kid(jwks_file: Path, rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-9"})
    assert await refused(jwks_auth(jwks_file), token) == (401, "unknown_key")


async def test_an_unknown_kid_rereads_a_changed_file(jwks_file: Path, rsa_key):
    auth = jwks_auth(jwks_file)
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": "rsa-2"})
    assert await refused(auth, token) == (401, "unknown_key")
    await anyio.to_thread.run_sync(
        write_jwks, jwks_file, public_jwk(rsa_key, "rsa-1"), public_jwk(new_key, "rsa-2")
    )
    assert (await authenticate(auth, token)).subject == "alice"


async def test_reload_rotates_keys_by_kid(jwks_file: Path, rsa_key):
    auth = jwks_auth(jwks_file)
    old = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new = jwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": "rsa-2"})
    await anyio.to_thread.run_sync(write_jwks, jwks_file, public_jwk(new_key, "rsa-2"))
    with capture_logs() as logs:
        auth.reload()
    assert (await authenticate(auth, new)).subject == "alice"
    assert await refused(auth, old) == (401, "unknown_key")  # the retired key is gone
    assert [e["event"] for e in logs] == ["auth.jwks_loaded"]


@pytest.mark.parametrize("text", ["{", '{"keys": []}', '{"keys": [{"kty": "RSA"}]}'])
async def test_reload_keeps_the_old_keys_if_the_new_file_is_bad(
    jwks_file: Path, rsa_key, text: str
):
    auth = jwks_auth(jwks_file)
    await anyio.Path(jwks_file).write_text(text)
    with capture_logs() as logs:
        auth.reload()
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await authenticate(auth, token)).subject == "alice"
    assert [(e["event"], e["log_level"]) for e in logs] == [("auth.reload_failed", "error")]


async def test_a_token_without_kid_uses_the_only_key(tmp_path: Path, rsa_key):
    path = write_jwks(tmp_path / "j.json", public_jwk(rsa_key, None))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await authenticate(jwks_auth(path), token)).subject == "alice"


async def test_a_token_without_kid_among_several_keys_is_refused(jwks_file: Path, rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert await refused(jwks_auth(jwks_file), token) == (401, "unknown_key")


async def test_weak_and_encryption_keys_are_skipped(tmp_path: Path, rsa_key, ec_key):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write_jwks(
        tmp_path / "j.json",
        public_jwk(weak, "weak"), public_jwk(ec_key, "enc", use="enc"),
        public_jwk(rsa_key, "rsa-1"), {"kty": "nope", "kid": "junk"}, "not a key",
    )
    auth = jwks_auth(path, ("RS256", "ES256"))
    with pytest.warns(InsecureKeyLengthWarning):  # PyJWT signs, but warns
        weak_token = jwt.encode(claims(), weak, algorithm="RS256", headers={"kid": "weak"})
    assert await refused(auth, weak_token) == (401, "unknown_key")
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "enc"})
    assert await refused(auth, token) == (401, "unknown_key")
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await authenticate(auth, token)).subject == "alice"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read"),
        ("not json", "not a JSON document"),
        ('{"keys": {}}', '"keys" list'),
        ('{"keys": [{"kty": "RSA", "kid": "x"}]}', "no usable signing key"),
    ],
)
def test_a_bad_jwks_file_is_a_config_error(tmp_path: Path, text: str | None, message: str):
    path = tmp_path / "jwks.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        jwks_auth(path)
    [problem] = caught.value.problems
    assert problem.path == "auth.jwt.jwks_file"
    assert message in problem.message


# No token in the logs…


async def test_no_token_appears_in_logs_errors_or_output(
    jwks_file: Path, rsa_key, capsys: pytest.CaptureFixture[str]
):
    now = int(time.time())
    hs = hs_auth(issuer="https://id.example", audience="chat")
    rs = jwks_auth(jwks_file)
    good = {"iss": "https://id.example", "aud": "chat"}
    cases = [
        (hs, hs_token(**good)),
        (hs, hs_token("another-secret-" + "x" * 32, **good)),
        (hs, hs_token(exp=now - 100, **good)),
        (hs, hs_token(nbf=now + 300, **good)),
        (hs, hs_token(iss="other", aud="chat")),
        (hs, hs_token(iss="https://id.example", aud="other")),
        (hs, hs_token(sub=None, **good)),
        (hs, jwt.encode(claims(), "", algorithm="none")),
        (hs, "garbage-token-value"),
        (rs, jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "nope"})),
        (rs, forged_hs256(b"whatever-secret", "rsa-1", claims())),
    ]
    seen: list[str] = []
    with capture_logs() as logs:
        for auth, token in cases:
            try:
                await authenticate(auth, token)
            except AuthFailed as exc:  # the driver logs these fields
                seen.append(f"{exc} {exc.reason} {exc.message} {exc.headers}")
        rs.reload()
    assert len(seen) == len(cases) - 1
    text = repr(logs) + " ".join(seen) + "".join(capsys.readouterr())
    for _, token in cases:
        for part in token.split("."):
            assert len(part) < 8 or part not in text
