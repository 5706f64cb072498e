"""uvloop's per-transport bookkeeping, made free (issue 18).

uvloop records every transport it makes in a ``weakref.WeakValueDictionary`` keyed by
file descriptor (``Loop._transports``), for one purpose: ``add_reader()`` and
``add_writer()`` refuse a descriptor that a live transport owns. That dictionary is
pure Python: a KeyedRef made and a Python ``__setitem__`` for each transport, and a
Python callback when it dies; two of each for one upgrade (the client's transport,
the backend's), about 6 % of the event loop's time in the upgrade benchmark (py-spy),
13k instructions an upgrade (callgrind), and ~330 B an open connection.

wsproxy never hands a transport's descriptor to ``add_reader``: the feed's pumps
read duplicates (wsproxy.io.direct), the hub's reader is its own epoll descriptor.
So the loop's dictionary is given a class that records nothing, and the check
finds nothing to refuse. The dictionary is reached through the garbage collector's
view of the loop (it is a C attribute, with no Python name); where it is not found
(another loop, another uvloop), nothing changes.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any


class _Untracked(weakref.WeakValueDictionary[Any, Any]):
    """A WeakValueDictionary that keeps nothing put in it."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def stop_tracking_transports(loop: asyncio.AbstractEventLoop) -> bool:
    """Make *loop*'s record of transports by descriptor free, if it is a uvloop
    loop that has one (whether it had)."""
    if not type(loop).__module__.startswith("uvloop"):
        return False
    for held in gc.get_referents(loop):
        if type(held) is weakref.WeakValueDictionary:
            held.__class__ = _Untracked
            return True
    return False
