"""JSON Web Key Sets (RFC 7517 §5): public keys by ``kid``, from a file or a URL.

A key set is parsed once per load and kept; a connection only looks a key up. The
file is re-read when a token names an unknown ``kid`` and the file has changed since
(a stat, not a parse, per such token), and on ``reload()``. The URL is fetched on the
first connection, again when the set is older than ``max_age``, on ``reload()``, and
when a token names an unknown ``kid`` — each at most once per ``min_interval``,
whatever the traffic, so that neither a key rotation nor a flood of forged ``kid``
values turns into a fetch per connection. A failed fetch keeps the keys already held.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import anyio
from jwt import PyJWK, PyJWTError

from wsproxy.auth.http import HttpError, HttpResponse, http_get
from wsproxy.log import get_logger

#: A rotated-in key is found within this long, however often unknown kids arrive.
MIN_REFRESH_INTERVAL: Final = 30.0
#: Keys withdrawn at the issuer stop being trusted within this long.
MAX_AGE: Final = 600.0
#: The key server is an identity provider's endpoint: it answers in well under this.
FETCH_TIMEOUT: Final = 5.0

Fetch = Callable[..., Awaitable[HttpResponse]]


class KeysUnavailable(Exception):
    """No key set could be loaded yet (the JWKS URL is down or serves garbage)."""


@dataclass(frozen=True, slots=True)
class Jwk:
    """One key of a set; ``for_algorithm`` binds it to a token's ``alg``."""

    data: Mapping[str, Any]
    _bound: dict[str, PyJWK] = field(default_factory=dict, compare=False)

    def for_algorithm(self, alg: str) -> PyJWK:
        """This key for *alg*.

        Raises:
            ValueError: the key is not for *alg* (its ``alg`` member says another,
                or its type or curve does not fit).
        """
        if alg not in self._bound:
            declared = self.data.get("alg")
            if declared is not None and declared != alg:
                raise ValueError(f"key is for {declared}, token says {alg}")
            try:
                self._bound[alg] = PyJWK(dict(self.data), algorithm=alg)
            except PyJWTError as exc:
                raise ValueError(f"key does not fit {alg}") from exc
        return self._bound[alg]


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable signing keys of a JWKS document, by ``kid``."""

    keys: Mapping[str | None, Jwk]
    skipped: int = 0

    @classmethod
    def parse(cls, text: str | bytes) -> KeySet:
        """Parse a JWKS document; keys that are unusable, weak or not for signing
        are skipped (and counted).

        Raises:
            ValueError: not JSON, no ``keys`` list, or no usable key at all.
        """
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ValueError("not a JSON document") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
            raise ValueError('expected a JSON object with a "keys" list')
        keys: dict[str | None, Jwk] = {}
        for item in raw["keys"]:
            kid = item.get("kid") if isinstance(item, dict) else None
            if _usable(item) and isinstance(kid, str | None) and kid not in keys:
                keys[kid] = Jwk(item)
        if not keys:
            raise ValueError("no usable signing key")
        return cls(keys=keys, skipped=len(raw["keys"]) - len(keys))

    def find(self, kid: str | None) -> Jwk | None:
        """The key named *kid*; a token without ``kid`` gets the only key, if one."""
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return self.keys.get(kid)


def _usable(item: object) -> bool:
    if not isinstance(item, dict) or item.get("use", "sig") != "sig":
        return False
    try:
        key = PyJWK(item)
    except PyJWTError:
        return False
    # An RSA key under 2048 bits would pass with a warning on every token.
    return key.Algorithm.check_key_length(key.key) is None


class KeySource(Protocol):
    """Where a JWT authenticator's public keys come from."""

    async def find(self, kid: str | None) -> Jwk | None:
        """The key for *kid*, refreshing the set if it is unknown (rate-limited).

        Raises:
            KeysUnavailable: there is no key set to look in.
        """
        ...

    def reload(self) -> None:
        """Load the keys again (SIGHUP); keep the current ones on failure."""
        ...


def _log_loaded(kind: str, where: str, keys: KeySet) -> None:
    get_logger().info(
        "auth.jwks_loaded", kind=kind, source=where, keys=len(keys.keys), skipped=keys.skipped
    )


class JwksFile:
    """A key set in a file (``auth.jwt.jwks_file``)."""

    def __init__(self, path: str) -> None:
        """Load *path*; raises ValueError if it cannot be read or holds no usable key."""
        self.path = path
        self._stamp = self._stat()
        self.keys = self._read()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _read(self) -> KeySet:
        try:
            with open(self.path, "rb") as f:
                return KeySet.parse(f.read())
        except OSError as exc:
            raise ValueError(f"cannot read {self.path}: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from exc

    async def find(self, kid: str | None) -> Jwk | None:
        key = self.keys.find(kid)
        if key is None and self._stat() != self._stamp:
            self.reload()
            key = self.keys.find(kid)
        return key

    def reload(self) -> None:
        self._stamp = self._stat()
        try:
            self.keys = self._read()
        except ValueError as exc:
            get_logger().error("auth.reload_failed", kind="jwks_file", error=str(exc))
            return
        _log_loaded("jwks_file", self.path, self.keys)


class JwksUrl:
    """A key set served over HTTP (``auth.jwt.jwks_url``), cached and rate-limited."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = FETCH_TIMEOUT,
        min_interval: float = MIN_REFRESH_INTERVAL,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
        fetch: Fetch = http_get,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.min_interval = min_interval
        self.max_age = max_age
        self.keys: KeySet | None = None
        self.fetches = 0  # attempts, for tests and logs
        self._clock = clock
        self._fetch = fetch
        self._lock = anyio.Lock()
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._forced = False
        self._failed = False

    async def find(self, kid: str | None) -> Jwk | None:
        if self.keys is None or self._forced or self._clock() - self._fetched_at >= self.max_age:
            await self._refresh()
        key = self.keys.find(kid) if self.keys is not None else None
        if key is None:
            await self._refresh()
            key = self.keys.find(kid) if self.keys is not None else None
        if key is None and (self.keys is None or self._failed):
            # We cannot tell that this kid does not exist: never answer 401 (or allow).
            raise KeysUnavailable(self.url)
        return key

    def reload(self) -> None:
        self._forced = True  # the next connection fetches, whatever the interval

    async def _refresh(self) -> None:
        async with self._lock:  # concurrent connections share one fetch
            now = self._clock()
            due = self._attempted_at is None or now - self._attempted_at >= self.min_interval
            if not (due or self._forced):
                return
            self._attempted_at, self._forced = now, False
            self.fetches += 1
            try:
                with anyio.fail_after(self.timeout):
                    keys = await self._get()
            except (HttpError, ValueError, TimeoutError) as exc:
                self._failed = True
                error = str(exc) or type(exc).__name__
                get_logger().warning("auth.jwks_fetch_failed", url=self.url, error=error)
                return
            self.keys, self._fetched_at, self._failed = keys, now, False
            _log_loaded("jwks_url", self.url, keys)

    async def _get(self) -> KeySet:
        answer = await self._fetch(self.url, [(b"Accept", b"application/json")])
        if answer.status != 200:
            raise ValueError(f"answered {answer.status}")
        return KeySet.parse(answer.body)
