"""The sans-I/O core: bytes in, state, bytes out. No event loop, clock or socket here."""

from wsproxy.core.session import Session
from wsproxy.core.states import LegState, SessionState, Side

__all__ = ["LegState", "Session", "SessionState", "Side"]
