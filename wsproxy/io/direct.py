"""An OPEN connection's reads relayed without the driver's Python (issue 18).

Once a Connection's session is OPEN, with no backend being dialled, ``relay_directly``
puts a relay protocol on each transport (``Session.relay_protocol``: the C
``_scan.Relay`` where it was built, wsproxy.core.scan.PyRelay otherwise). A read
of whole data messages then goes from one transport's read callback to the other's
``write`` in one C call, counted by the session as ``Session.relay`` counts it.
Every other read, and every other callback (EOF, loss, pause and resume of
writing), goes to the protocol the transport had before (``get_protocol()``, kept in
the relay as ``original``): the Connection's own path, which stays the one that
decides on control frames, fragments, limits, our pings and closes, and losses.

When the session leaves OPEN, ``restore`` gives each transport its own protocol
back. Until then a relay reads the session's state on every read anyway, so a read
can never skip the driver's path once the session is no longer OPEN.
"""

from __future__ import annotations

import asyncio
from typing import Final, cast

from wsproxy.core.scan import PyRelay, Relay, RelayedProtocol
from wsproxy.core.session import Session
from wsproxy.core.states import SessionState, Side


def relay_directly(
    session: Session, client: asyncio.Transport | None, upstream: asyncio.Transport | None
) -> None:
    """Both transports to relay protocols, if the session is OPEN and both are there
    (once per connection: when it opens)."""
    if session.state is not _OPEN or client is None or upstream is None:
        return
    # The drivers' protocols are asyncio.Protocols: a relay stands in for one, and
    # implements the same callbacks (uvloop and asyncio ask no more of a protocol).
    make = session.relay_protocol
    to_upstream = make(_CLIENT, upstream.write, cast(RelayedProtocol, client.get_protocol()))
    to_client = make(_UPSTREAM, client.write, cast(RelayedProtocol, upstream.get_protocol()))
    client.set_protocol(cast(asyncio.BaseProtocol, to_upstream))
    upstream.set_protocol(cast(asyncio.BaseProtocol, to_client))


def restore(*transports: asyncio.Transport | None) -> None:
    """Give each transport that has a relay the protocol it had before."""
    for transport in transports:
        if transport is not None:
            protocol = transport.get_protocol()
            if isinstance(protocol, _RELAYS):
                transport.set_protocol(cast(asyncio.BaseProtocol, protocol.original))


# As plain globals: an Enum class's attribute costs ~900 instructions on Python 3.11.
_OPEN: Final = SessionState.OPEN
_CLIENT: Final = Side.CLIENT
_UPSTREAM: Final = Side.UPSTREAM
#: The relay classes there are (the C one only where it was built; the same twice if not).
_RELAYS: Final = (PyRelay, Relay)

