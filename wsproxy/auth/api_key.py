"""API keys: a file of SHA-256 digests, each mapped to a subject.

The keys file is a YAML list; the proxy never holds a key itself, only its digest::

    - {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, subject: ci}
    - {sha256: "...", subject: billing-worker}

(``printf %s "$KEY" | sha256sum`` gives the digest.) A presented key is hashed and
compared with every digest in constant time, without stopping at a match, so the time
taken does not tell which entry, or whether any, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import yaml

from wsproxy.auth import Credentials, Identity
from wsproxy.auth.common import SUBJECT_HEADER, is_safe_text, missing, rejected
from wsproxy.core.handshake import RequestHead
from wsproxy.log import get_logger

_HEX_DIGEST: Final = re.compile(r"[0-9a-fA-F]{64}")
_ENTRY_KEYS: Final = frozenset({"sha256", "subject"})


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One accepted key, as the digest of its bytes."""

    digest: bytes
    subject: str


def load_keys(path: str) -> tuple[ApiKey, ...]:
    """Read and check the keys file at *path*.

    Raises:
        ValueError: the file cannot be read, is no YAML, or an entry is wrong; the
            message says where (never holding more of the file than a digest).
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path} is not valid YAML{where}") from exc
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a list of {{sha256, subject}}")
    keys = tuple(_entry(path, i, item) for i, item in enumerate(raw))
    digests = [k.digest for k in keys]
    for i, digest in enumerate(digests):
        if digest in digests[:i]:
            raise ValueError(f"{path}: [{i}].sha256 repeats an earlier entry")
    return keys


def _entry(path: str, i: int, item: object) -> ApiKey:
    if not isinstance(item, dict) or set(item) != _ENTRY_KEYS:
        raise ValueError(f"{path}: [{i}]: expected a mapping of exactly sha256 and subject")
    digest, subject = item["sha256"], item["subject"]
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise ValueError(f"{path}: [{i}].sha256: expected 64 hex digits")
    if not isinstance(subject, str) or not subject.strip() or not is_safe_text(subject):
        raise ValueError(f"{path}: [{i}].subject: expected a name without control characters")
    return ApiKey(digest=bytes.fromhex(digest), subject=subject)


def match_key(keys: Sequence[ApiKey], token: str) -> str | None:
    """The subject of the entry *token* hashes to, else None (constant time per entry)."""
    digest = hashlib.sha256(_token_bytes(token)).digest()
    subject: str | None = None
    for key in keys:
        # No early exit: every digest is compared whether or not one matched.
        if hmac.compare_digest(digest, key.digest) and subject is None:
            subject = key.subject
    return subject


def _token_bytes(token: str) -> bytes:
    # The sources keep a token as the Latin-1 text of the bytes the client sent.
    try:
        return token.encode("latin-1")
    except UnicodeEncodeError:
        return token.encode("utf-8")


class ApiKeyAuthenticator:
    """``auth.type: api_key``: a key from ``token_from``, checked against the keys file.

    Answers 401 ``missing`` without a key and 401 ``invalid`` for a key not in the
    file. ``reload()`` (SIGHUP) re-reads the file and keeps the old keys if the new
    file is invalid.
    """

    owned_headers: frozenset[str] = frozenset({SUBJECT_HEADER})

    def __init__(self, keys_file: str, keys: Sequence[ApiKey]) -> None:
        self.keys_file = keys_file
        self.keys = tuple(keys)

    @classmethod
    def from_file(cls, keys_file: str) -> ApiKeyAuthenticator:
        """Load *keys_file*; raises ValueError as ``load_keys`` does."""
        return cls(keys_file, load_keys(keys_file))

    async def authenticate(
        self, request: RequestHead, credentials: Credentials, client_ip: str
    ) -> Identity:
        """The key's subject; raises AuthFailed 401 (``missing``, ``invalid``)."""
        if credentials.token is None:
            raise missing()
        subject = match_key(self.keys, credentials.token)
        if subject is None:
            raise rejected("invalid", "unknown API key")
        return Identity(subject=subject)

    def reload(self) -> None:
        """Re-read the keys file; on any problem keep the current keys and log why."""
        log = get_logger()
        try:
            keys = load_keys(self.keys_file)
        except ValueError as exc:
            log.error("auth.reload_failed", kind="api_key", file=self.keys_file, error=str(exc))
            return
        self.keys = keys
        log.info("auth.reloaded", kind="api_key", file=self.keys_file, keys=len(keys))
