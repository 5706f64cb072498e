"""Admission control: a token bucket on new upgrades (``admission`` in SPEC.md).

A reconnect wave after a drain or a crash must not flatten the backends that are
left: upgrades beyond the rate get 503 with Retry-After before any backend is asked,
or, with ``admission.reject_with: close``, a 101 and a 1013 close whose reason says
``retry-after-ms=N`` (a browser sees no status). N is ``retry_after_ms()`` for the
bucket, ``limit_retry_ms()`` for the connection limits.
"""

from __future__ import annotations

import math
import random
from typing import Final

#: The hint of an upgrade refused by the connection limits is a random wait in
#: [LIMIT_RETRY_MIN_MS, LIMIT_RETRY_MAX_MS]: a slot frees when some connection ends,
#: which nothing predicts, so the hint only spreads the retries out, over up to the
#: 5 s of the 503's Retry-After.
LIMIT_RETRY_MIN_MS: Final = 1000
LIMIT_RETRY_MAX_MS: Final = 5000


def limit_retry_ms(rng: random.Random | None = None) -> int:
    """The reconnect hint, in ms, of an upgrade refused by the connection limits."""
    return (rng or random).randint(LIMIT_RETRY_MIN_MS, LIMIT_RETRY_MAX_MS)


class TokenBucket:
    """*rate* tokens a second, at most *burst* saved up. Pure: the caller passes *now*."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst if burst > 0 else max(rate, 1.0)
        self._tokens = self.burst
        self._updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until a token is back (for the Retry-After header)."""
        return max(1, math.ceil((1.0 - self._tokens) / self.rate))

    def retry_after_ms(self) -> int:
        """Milliseconds until a token is back, at least 1 (for a close's reconnect
        hint): as of the last ``take()``."""
        return max(1, math.ceil((1.0 - self._tokens) / self.rate * 1000.0))
