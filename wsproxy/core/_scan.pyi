# The compiled twin of wsproxy.core.scan.py_whole_messages and py_whole_read
# (wsproxy/core/_scan.c).
import builtins
from typing import Any

def whole_messages(
    data: bytes, pos: int, mask_bit: int, rsv_allowed: int, max_size: int, /
) -> tuple[int, int]: ...
def whole_read(
    data: bytes, remaining: int, mask_bit: int, rsv_allowed: int, max_size: int, /
) -> tuple[int, int] | None: ...

class FlowState:
    # The twin of wsproxy.core.scan.PyFlowState (its doc); a base class.
    remaining: int
    messages: int
    bytes: int
    max_size: int
    mask_bit: int
    rsv_allowed: int
    in_message: bool
    partial: builtins.bytes
    pending: tuple[builtins.bytes, ...]
    pending_close: tuple[builtins.bytes, int | None, str] | None
    def take(self, data: builtins.bytes, /) -> bool: ...

class Relay:
    # The twin of wsproxy.core.scan.PyRelay (its doc): a transport's protocol while OPEN.
    original: Any
    flow: FlowState
    leg: Any
    session: Any
    open: object
    write: Any
    feeder: Any
    transport: Any
    mate: Any
    wake: Any
    countdown: int
    def __init__(
        self, flow: FlowState, leg: Any, session: Any, open: object, write: Any, original: Any
    ) -> None: ...
    def data_received(self, data: builtins.bytes, /) -> None: ...
    def connection_made(self, transport: object, /) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None, /) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...

class Pump:
    # The twin of wsproxy.io.pump.PyPump (its doc): an OPEN connection's socket read.
    relay: Relay
    fd_in: int
    fd_out: int
    def __init__(self, relay: Relay, fd_in: int, fd_out: int, sink: Any, end: Any) -> None: ...
    def readable(self) -> None: ...
    def detach(self) -> None: ...
