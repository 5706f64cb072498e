"""Which compiled twins run, for ``wsproxy --version`` and ``wsproxy_build_info``.

Two C modules have a Python twin each: the frame scanner and relay (scan, _scan.c)
and the opening handshakes' head reader (handshake, _heads.c). The install builds
both or, without a compiler, neither; WSPROXY_NO_SPEEDUPS=1 turns both off.
"""

from __future__ import annotations

from typing import Final

from wsproxy.core.handshake import HEADS_SPEEDUPS
from wsproxy.core.scan import SPEEDUPS as FRAMES_SPEEDUPS

#: "c" (both compiled), "python" (neither), else each named (one failed to build).
SPEEDUPS: Final = (FRAMES_SPEEDUPS if FRAMES_SPEEDUPS == HEADS_SPEEDUPS
                   else f"frames {FRAMES_SPEEDUPS}, heads {HEADS_SPEEDUPS}")
