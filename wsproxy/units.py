"""Durations and sizes as people write them: "500ms", "20s", "64KiB", or plain numbers.

The configuration uses these, and so do the ops calls that take a spread or a wait
(`wsproxy drain --spread 10s`, `GET /drain?wait=30s`). Both parsers raise ValueError
with a message fit to show a user, like `expected a duration like "20s", got "soon"`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Final

_DURATION: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?")
_SECONDS_PER_UNIT: Final[Mapping[str, Decimal]] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}

_SIZE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmg]i?b|b)?", re.IGNORECASE)
# KB, MB and GB are decimal and KiB, MiB and GiB binary, as IEC 80000-13 has it; sizes
# are bytes whatever the case, because nobody configures a buffer in bits.
_BYTES_PER_UNIT: Final[Mapping[str, int]] = {
    "b": 1,
    "kb": 10**3,
    "kib": 2**10,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
}


def describe(value: object) -> str:
    """Show a configuration value in an error message the way it was written in YAML."""
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _is_number(value: object) -> bool:
    # bool is a subclass of int, but `interval: true` is a mistake, not one second.
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_duration(value: object) -> float:
    """Seconds from "500ms", "20s", "2m", "1h" or a number of seconds.

    Raises:
        ValueError: the value is not a duration, or is negative or infinite.
    """
    if _is_number(value):
        seconds = float(value)  # type: ignore[arg-type]  # _is_number checked it
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(Decimal(match[1]) * _SECONDS_PER_UNIT[match[2] or "s"])
    else:
        raise ValueError(f'expected a duration like "20s", got {describe(value)}')
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f'expected a duration like "20s" (0 or more), got {describe(value)}')
    return seconds


def parse_size(value: object) -> int:
    """Bytes from "512B", "64KiB", "1MiB", "1GiB", "64KB" or a number of bytes.

    Raises:
        ValueError: the value is not a size, is negative, or is not a whole number of bytes.
    """
    if _is_number(value):
        amount = Decimal(value)  # type: ignore[arg-type]  # _is_number checked it
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        amount = Decimal(match[1]) * _BYTES_PER_UNIT[(match[2] or "b").lower()]
    else:
        raise ValueError(f'expected a size like "64KiB", got {describe(value)}')
    if not amount.is_finite() or amount < 0 or amount != amount.to_integral_value():
        raise ValueError(
            f'expected a size like "64KiB" (whole bytes, 0 or more), got {describe(value)}'
        )
    return int(amount)
