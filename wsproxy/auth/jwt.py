"""JSON Web Tokens (RFC 7519), checked with PyJWT.

The order of the checks is the one RFC 8725 §3.1 asks for: the ``alg`` in the
token's header must be one of ``auth.jwt.algorithms`` before any key is chosen, so
``alg: none`` and a public key passed off as an HMAC secret (HS/RS confusion, §2.1)
are refused up front; wsproxy.config already refuses a list that mixes HS* with public-key
algorithms. Then the key (the secret, or the JWKS entry named by ``kid``), then the
signature, then the claims: ``exp`` and ``nbf`` with ``leeway``, ``iss`` and ``aud``
when configured, and ``sub``, which names the subject and is required.

Every refusal is a 401 with ``WWW-Authenticate: Bearer ... error="invalid_token"``,
reason one of: missing, malformed, bad_algorithm, unknown_key, bad_signature, expired,
not_yet_valid, wrong_issuer, wrong_audience, bad_subject. One exception: when the
keys come from a JWKS URL that cannot be fetched, a token whose key is not already
held is answered 503 ``auth_unavailable`` (the token may be good; never allow on error).
"""

from __future__ import annotations

from typing import Any, Final

import jwt
from jwt.exceptions import InvalidSubjectError
from jwt.types import Options

from wsproxy.auth import AuthFailed, Credentials, Identity
from wsproxy.auth.common import (
    SUBJECT_HEADER,
    header_value,
    is_safe_text,
    missing,
    rejected,
    unavailable,
)
from wsproxy.auth.jwks import KeySource, KeysUnavailable
from wsproxy.config import JwtAuthConfig
from wsproxy.core.handshake import RequestHead

#: PyJWT's refusals, most specific first (subclasses before their bases).
_REASONS: Final[tuple[tuple[type[Exception], str, str], ...]] = (
    (jwt.InvalidSignatureError, "bad_signature", "token signature does not verify"),
    (jwt.ExpiredSignatureError, "expired", "token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "token is not valid yet"),
    (jwt.InvalidIssuerError, "wrong_issuer", "token is from another issuer"),
    (jwt.InvalidAudienceError, "wrong_audience", "token is for another audience"),
    (InvalidSubjectError, "bad_subject", "token subject is not a string"),
    (jwt.InvalidAlgorithmError, "bad_algorithm", "token algorithm is not accepted"),
    (jwt.InvalidKeyError, "bad_algorithm", "token algorithm does not fit the key"),
)
_MISSING_CLAIM: Final = {
    "sub": ("bad_subject", "token has no subject"),
    "iss": ("wrong_issuer", "token names no issuer"),
    "aud": ("wrong_audience", "token names no audience"),
}


def min_secret_length(algorithms: tuple[str, ...]) -> int:
    """RFC 7518 §3.2: an HMAC key at least as long as the hash output, in bytes."""
    sizes = {"HS256": 32, "HS384": 48, "HS512": 64}
    return max((sizes[a] for a in algorithms if a in sizes), default=0)


class JwtAuthenticator:
    """``auth.type: jwt``: a signed token from ``token_from``.

    Args:
        config: the ``auth.jwt`` section.
        keys: the public keys for RS*/PS*/ES*/EdDSA; None when only HS* is allowed.
    """

    def __init__(self, config: JwtAuthConfig, keys: KeySource | None) -> None:
        self.config = config
        self.keys = keys
        self._secret = config.secret.encode("utf-8") if config.secret is not None else None
        self.owned_headers: frozenset[str] = frozenset(
            {SUBJECT_HEADER, *(header for _, header in config.claims_to_headers)}
        )
        self._options: Options = {
            "require": ["sub"],
            # Without a configured audience, "aud" is not checked (PyJWT would
            # otherwise refuse every token that has one).
            "verify_aud": config.audience is not None,
        }

    async def authenticate(
        self, request: RequestHead, credentials: Credentials, client_ip: str
    ) -> Identity:
        """The token's ``sub``, its claims as headers and its expiry.

        Raises:
            AuthFailed: 401 for a missing or bad token; 503 when the JWKS URL is down
                and the token's key is not held.
        """
        token = credentials.token
        if token is None:
            raise missing()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise rejected("malformed", "token is not a JWT") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            raise rejected("bad_algorithm", "token algorithm is not accepted")
        key = await self._key(alg, header.get("kid"))
        return self._identity(self._decode(token, alg, key))

    def reload(self) -> None:
        """Re-read the JWKS file, or fetch the JWKS URL on the next connection."""
        if self.keys is not None:
            self.keys.reload()

    async def _key(self, alg: str, kid: str | None) -> jwt.PyJWK | bytes:
        # PyJWT's get_unverified_header has refused a kid that is not a string.
        if alg.startswith("HS"):
            assert self._secret is not None  # the config schema requires a secret for HS*
            return self._secret
        if self.keys is None:
            raise rejected("unknown_key", "token names no known key")
        try:
            found = await self.keys.find(kid)
        except KeysUnavailable as exc:
            raise unavailable("signing keys cannot be fetched") from exc
        if found is None:
            raise rejected("unknown_key", "token names no known key")
        try:
            return found.for_algorithm(alg)
        except ValueError as exc:
            raise rejected("bad_algorithm", "token algorithm does not fit the key") from exc

    def _decode(self, token: str, alg: str, key: jwt.PyJWK | bytes) -> dict[str, Any]:
        try:
            return jwt.decode(
                token, key, algorithms=[alg], options=self._options,
                issuer=self.config.issuer, audience=self.config.audience,
                leeway=self.config.leeway,
            )
        except jwt.MissingRequiredClaimError as exc:
            raise rejected(*_MISSING_CLAIM.get(exc.claim, _MALFORMED)) from exc
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from exc

    def _identity(self, claims: dict[str, Any]) -> Identity:
        subject = claims["sub"]
        if not subject or not is_safe_text(subject):
            raise rejected("bad_subject", "token subject is empty or not printable")
        headers = tuple(
            (name, value)
            for claim, name in self.config.claims_to_headers
            if (value := header_value(claims.get(claim))) is not None
        )
        exp = claims.get("exp")
        expires_at = float(exp) + self.config.leeway if exp is not None else None
        return Identity(subject=subject, headers=headers, expires_at=expires_at)


_MALFORMED: Final = ("malformed", "token claims are not valid")


def _refusal(exc: jwt.PyJWTError) -> AuthFailed:
    for kind, reason, message in _REASONS:
        if isinstance(exc, kind):
            return rejected(reason, message)
    return rejected(*_MALFORMED)
