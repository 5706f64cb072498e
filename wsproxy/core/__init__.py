"""The sans-I/O core: bytes in, state, bytes out. No event loop, clock or socket here.

The relay and its handshakes:
    session     one client/backend pair once open: the frame scanner, the close
                handshakes of both legs (the hot path)
    scan        the scanner's inner loop (whole messages skipped), and the relay
                protocol an OPEN session's transports read into, in Python and in C
                (_scan.c, built when a compiler is there; SPEEDUPS says which runs)
    upgrade     both opening handshakes, until the backend's 101 opens the session
    states      the session's and the legs' transition tables (all moves in one file)
    closes      every close code (CloseCode) and every close of the proxy's own
    frames      RFC 6455 frame arithmetic, and the few frames the proxy builds
    handshake   the upgrade request: checks, the backend's request, X-Forwarded-*
    http        plain HTTP requests and answers (``plain_http: proxy``)
    paths       a request target made safe to join to a backend's path prefix
    proxy_protocol  PROXY v1/v2 headers
    nonces      random bytes for ids and keys, sliced off one urandom read for many
The decisions the control plane drives, each a pure object with the clock passed in:
    liveness (heartbeats, idle, age), schedule (a drain's pacing), admission (the
    upgrade rate), balance (the backend set and the pick), registry (live connections
    and the limits), rebalance (which connections a rebalancing round closes)

It imports config, errors and units only (and h11, wsproto's rules): never io/, auth/,
the control plane or the wiring. ``closes`` imports nothing, so that config may use it.
"""

from wsproxy.core.session import Session
from wsproxy.core.states import LegState, SessionState, Side

__all__ = ["LegState", "Session", "SessionState", "Side"]
