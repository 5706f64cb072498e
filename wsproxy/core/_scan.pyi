# The compiled twin of wsproxy.core.scan.py_whole_messages (wsproxy/core/_scan.c).
def whole_messages(
    data: bytes, pos: int, mask_bit: int, rsv_allowed: int, max_size: int, /
) -> tuple[int, int]: ...
