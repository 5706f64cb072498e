"""The walker: the machinery that reads a mapping by tables of converters.

Theory of operation. Each YAML section is a `Section`: a table from key to converter.
A converter gets `(walker, path, value)` and returns the typed value, or raises
ValueError with a message that the walker records at that path before carrying on, so
one pass reports every problem. A key whose value was refused falls back to its default,
so that the other rules still run. Rules that relate several keys are a section's
checks; a check is skipped while one of the keys it reads has a problem of its own, so
that one mistake is reported once.

Every string is read through the environment first: `${NAME}` is replaced by the
variable's value (an unset one is a problem at that key), so a number or a boolean may
come from a variable too. The tables themselves are in `schema`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from wsproxy.errors import ConfigProblem
from wsproxy.units import describe

Conv = Callable[["Walker", str, object], Any]
FAILED: Final = object()  # what Walker.read returns for a value it refused
_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PARENT: Final = re.compile(r"(\.[^.\[]*|\[[0-9]+\])$")  # the last step of a key path


class Reported(Exception):
    """A converter recorded its problems already; its value is unusable."""


class Walker:
    """Reads values with converters and collects the problems, located by key path."""

    def __init__(self, lines: Mapping[str, int], env: Mapping[str, str]) -> None:
        self.lines = lines
        self.env = env
        self.problems: list[ConfigProblem] = []

    def read(self, conv: Conv, path: str, value: object) -> Any:
        """`conv`'s value for `value` at `path`, or `FAILED` once the problem is recorded."""
        try:
            if isinstance(value, str):
                value = self._interpolate(value)
            return conv(self, path, value)
        except ValueError as exc:
            self.report(path, str(exc))
        except Reported:
            pass
        return FAILED

    def report(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message, self._line(path)))

    def failed(self, path: str) -> bool:
        """Whether a problem was recorded at `path` or under it."""
        return any(
            p.path == path or p.path.startswith((f"{path}.", f"{path}[")) for p in self.problems
        )

    def _line(self, path: str) -> int | None:
        # A key that is missing has no line; its mapping's line is the next best place.
        while path not in self.lines:
            if not _PARENT.search(path):  # a top-level key: no mapping above it has a line
                return None
            path = _PARENT.sub("", path)
        return self.lines[path]

    def _interpolate(self, text: str) -> str:
        unset = [name for name in _ENV_REF.findall(text) if name not in self.env]
        if unset:
            raise ValueError(f"environment variable {', '.join(unset)} is not set")
        return _ENV_REF.sub(lambda match: self.env[match[1]], text)


def join(path: str, key: str) -> str:
    """The key path of `key` in the mapping at `path`."""
    return f"{path}.{key}" if path else key


Check = tuple[tuple[str, ...], Callable[[Any], Iterable[tuple[str, str]]]]


@dataclass(frozen=True, slots=True)
class Section:
    """A mapping read into `cls` by a table of converters, then checked as a whole."""

    cls: type[Any]
    fields: Mapping[str, Conv]
    # (keys read, check): a check yields (key, message) pairs and runs only while the
    # keys it reads are free of problems.
    checks: tuple[Check, ...] = ()
    build: Callable[..., Any] | None = None  # default: cls(**values)

    def __call__(self, w: Walker, path: str, raw: object) -> Any:
        data = as_mapping(raw)
        _reject_unknown(w, path, data, self.fields)
        values = {}
        for key, conv in self.fields.items():
            if key in data and (value := w.read(conv, join(path, key), data[key])) is not FAILED:
                values[key] = value  # else the dataclass default stands in
        missing = [key for key in self._required() if key not in values]
        for key in missing:
            if key not in data:
                w.report(join(path, key), "required key is missing")
        if missing:
            raise Reported
        result = (self.build or self.cls)(**values)
        for keys, check in self.checks:
            if not any(w.failed(join(path, key)) for key in keys):
                for key, message in check(result):
                    w.report(join(path, key), message)
        return result

    def _required(self) -> list[str]:
        return [
            f.name
            for f in dataclasses.fields(self.cls)
            if f.name in self.fields
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]


def as_mapping(raw: object) -> Mapping[object, object]:
    """`raw` as a mapping (nothing is an empty one), or ValueError."""
    if raw is None:  # `listen:` with nothing under it (or all of it commented out)
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a mapping, got {describe(raw)}")
    return raw


def _reject_unknown(
    w: Walker, path: str, data: Mapping[object, object], known: Collection[str]
) -> None:
    for key in data:
        if key not in known:
            guess = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f' (did you mean "{guess[0]}"?)' if guess else ""
            w.report(join(path, str(key)), f"unknown key{hint}")


def list_of(item: Conv, *, unique: str | None = None) -> Conv:
    """A list of `item`s; `unique` names an attribute no two items may share."""

    def read(w: Walker, path: str, raw: object) -> tuple[Any, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ValueError(f"expected a list, got {describe(raw)}")
        before = len(w.problems)
        values = [w.read(item, f"{path}[{i}]", value) for i, value in enumerate(raw)]
        seen: dict[object, int] = {}
        for i, value in enumerate(values):
            if unique and value is not FAILED:
                key = getattr(value, unique)
                if key in seen:
                    message = f"duplicate {unique} {describe(key)} (also {path}[{seen[key]}])"
                    w.report(f"{path}[{i}].{unique}", message)
                seen.setdefault(key, i)
        if len(w.problems) > before:
            raise Reported
        return tuple(values)

    return read


def optional(conv: Conv) -> Conv:
    """`conv`, or None for a key written with no value."""

    def read(w: Walker, path: str, raw: object) -> Any:
        return None if raw is None else conv(w, path, raw)

    return read


def leaf(parse: Callable[[object], Any]) -> Conv:
    """A converter from a function of the value alone."""
    return lambda w, path, value: parse(value)


def in_file_order(problems: Iterable[ConfigProblem]) -> list[ConfigProblem]:
    """*problems* by YAML line; those without one last."""
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))
