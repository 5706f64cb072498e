"""The sans-I/O core: bytes in, state, bytes out. No event loop, clock or socket here."""

from wsproxy.core.session import LegState, Session
from wsproxy.core.states import SessionState, Side

__all__ = ["LegState", "Session", "SessionState", "Side"]
