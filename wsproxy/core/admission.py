"""Admission control: a token bucket on new upgrades (``admission`` in SPEC.md).

A reconnect wave after a drain or a crash must not flatten the backends that are
left: upgrades beyond the rate get 503 with Retry-After before any backend is asked.
"""

from __future__ import annotations

import math


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
