"""Which compiled twins run, for ``wsproxy --version`` and ``wsproxy_build_info``.

Four C modules have a Python twin each: the frame scanner and relay (core.scan, _scan.c),
the opening handshakes' head reader (core.handshake, _heads.c), the closed line and log
clock (wsproxy.log, wsproxy/_lines.c) and the links, the connections' transports
(io.links, _links.c: without them, the event loop's own transports serve). The install
builds all or, without a compiler, none; WSPROXY_NO_SPEEDUPS=1 turns all off.
"""

from __future__ import annotations

from typing import Final

from wsproxy.core.handshake import HEADS_SPEEDUPS
from wsproxy.core.scan import SPEEDUPS as FRAMES_SPEEDUPS
from wsproxy.io.links import LINKS
from wsproxy.log import LINES_SPEEDUPS

#: "c" or "python" for the links ("python": the event loop's transports).
LINKS_SPEEDUPS: Final = "c" if LINKS else "python"
#: "c" (all compiled), "python" (none), else each named (one failed to build).
SPEEDUPS: Final = (
    FRAMES_SPEEDUPS if FRAMES_SPEEDUPS == HEADS_SPEEDUPS == LINES_SPEEDUPS == LINKS_SPEEDUPS
    else f"frames {FRAMES_SPEEDUPS}, heads {HEADS_SPEEDUPS}, lines {LINES_SPEEDUPS}, "
         f"links {LINKS_SPEEDUPS}"
)
