"""The exceptions wsproxy raises, in one tree.

    WsproxyError
    ├── ConfigError(problems)          one or more ConfigProblem(path, message, line)
    ├── ProtocolError
    │   └── LocalProtocolError         we misused a state machine: a bug
    │       └── InvalidTransition(state, trigger)
    ├── HandshakeRejected(status, reason, headers)   an HTTP answer instead of 101
    └── UpstreamError
        ├── UpstreamUnavailable(target)              unreachable or garbled: next backend, then 502
        └── UpstreamHandshakeFailed(status)          the backend said no -> its status

A peer's misbehaviour on an open WebSocket is not an exception: the sans-I/O core turns
it into a close frame and a state (see wsproxy.core.session).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class WsproxyError(Exception):
    """Base class of every error wsproxy raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration, located by its key path."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.path}: {self.message}{where}" if self.path else f"{self.message}{where}"


class ConfigError(WsproxyError):
    """A configuration was refused; ``problems`` lists every reason at once."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: Sequence[ConfigProblem] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class ProtocolError(WsproxyError):
    """Abstract: somebody broke the rules of a protocol."""


class LocalProtocolError(ProtocolError):
    """We broke the rules: a bug in wsproxy, never a peer's fault."""


class InvalidTransition(LocalProtocolError):
    """A trigger fired in a state that has no transition for it."""

    def __init__(self, state: object, trigger: object) -> None:
        self.state = state
        self.trigger = trigger
        super().__init__(f"can't handle {trigger} in state {state}")


class HandshakeRejected(WsproxyError):
    """The upgrade is answered with an HTTP error instead of 101."""

    def __init__(
        self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)
        super().__init__(f"{status} {reason}")


class UpstreamError(WsproxyError):
    """Opening the backend leg failed."""


class UpstreamUnavailable(UpstreamError):
    """The backend could not be reached or answered garbage: try the next one."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"{target}: {reason}")


class UpstreamHandshakeFailed(UpstreamError):
    """The backend answered the upgrade with an HTTP error status."""

    def __init__(self, target: str, status: int) -> None:
        self.target = target
        self.status = status
        super().__init__(f"{target} answered {status}")
