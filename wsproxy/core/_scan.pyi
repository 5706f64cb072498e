# The compiled twin of wsproxy.core.scan.py_whole_messages and py_whole_read
# (wsproxy/core/_scan.c).
import builtins

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
