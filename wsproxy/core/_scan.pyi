# The compiled twin of wsproxy.core.scan.py_whole_messages and py_whole_read
# (wsproxy/core/_scan.c).
def whole_messages(
    data: bytes, pos: int, mask_bit: int, rsv_allowed: int, max_size: int, /
) -> tuple[int, int]: ...
def whole_read(
    data: bytes, remaining: int, mask_bit: int, rsv_allowed: int, max_size: int, /
) -> tuple[int, int] | None: ...
