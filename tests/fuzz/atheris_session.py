"""Coverage-guided fuzzing of the sans-I/O Session with atheris (libFuzzer).

The fuzzer's bytes are the client's: cut into reads of fuzzer-chosen sizes and fed to
a Session. Whatever they are, the session must end in an HTTP error of its own
(400/426/431/501, a response h11 parses), or wait for more (then EOF ends it), or take
the upgrade; an accepted upgrade is taken through a fake backend's 101 and the rest
of the input is fed as the client's frames, with some of it as the backend's. No
exception may escape, and nothing may be written to a transport the session gave up.

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/atheris_session.py -max_total_time=60 [-workers=N] [CORPUS_DIR]

Not part of the test suite (pytest does not collect it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import h11

    from wsproxy.core import frames, handshake, session
    from wsproxy.core.session import Session
    from wsproxy.core.states import SessionState, Side

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
STATUSES = frozenset({400, 426, 431, 501})
MARK = b"|UP|"
REQUEST = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: proxy.example\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)
SEEDS = [
    b"\x00\x10\x00" + REQUEST + b"\r\n\x81\x85abcd\x09\x07\x0f\x08\x0e"
    + MARK + b"\x81\x02hi\x88\x02\x03\xe8" + MARK + b"\x88\x82abcdbR",
    b"\x07\x00\x40" + REQUEST + b"Content-Length: 5\r\n\r\nhello\x89\x80abcd",
    b"\x01\x00\x00" + REQUEST.replace(b"\r\n", b"\n") + b"X-A: b\n c\n\n",
    b"\x00\x00\x00GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
]
DICTIONARY = [
    b"GET ", b" HTTP/1.1", b"\r\n", b"\r\n\r\n", b"Host: ", b"Upgrade: websocket",
    b"Connection: Upgrade", b"Sec-WebSocket-Key: ", b"dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Protocol: ", b"Sec-WebSocket-Extensions: ",
    b"permessage-deflate", b"Content-Length: ", b"Transfer-Encoding: chunked", b"Origin: ",
    MARK, b"\x88\x82", b"\x81\x80", b"\x89\x80", b"\x82\xff", b"\x82\x7f",
]


def dict_entry(token: bytes) -> str:
    """A libFuzzer dictionary line: printable ASCII as is, the rest as \\xNN."""
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in token
    )


_ = (frames, handshake, session)  # instrumented modules


def check_error(answer: bytes, status: int | None) -> None:
    assert status in STATUSES, status
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(answer)
    response = conn.next_event()
    assert isinstance(response, h11.Response), response
    assert response.status_code == status, response


def open_upstream(s: Session) -> None:
    s.accept()
    s.connect_upstream(
        target="t", authority="backend:80", path_prefix="/app",
        forwarding=handshake.Forwarding("127.0.0.1", "127.0.0.1", "http", "id"),
        pass_extensions=True,
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"".join(s.data_to_send(UPSTREAM)))
    request = server.next_event()
    assert isinstance(request, h11.Request), request
    key = {bytes(k): bytes(v) for k, v in request.headers}[b"sec-websocket-key"]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    s.receive_data(
        UPSTREAM,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n",
    )
    assert s.accepted is not None, s


def split(data: bytes) -> tuple[int, int, int, list[tuple[Side, bytes]]]:
    """(max_request_head, max_message_size, read size, reads) from the fuzzer's bytes.

    Byte 0: bit 0 picks a small head limit, the rest a read size (0: one read).
    Bytes 1-2: max_message_size. Then the client's stream; a ``|UP|`` marker switches
    to the backend's bytes and the next one back, so that seeds stay readable.
    """
    if len(data) < 3:
        return 16 << 10, 1 << 20, 0, [(CLIENT, data)]
    flags, size = data[0], int.from_bytes(data[1:3], "big")
    parts = data[3:].split(MARK)
    reads = [(CLIENT if i % 2 == 0 else UPSTREAM, part) for i, part in enumerate(parts)]
    return 512 if flags & 1 else 16 << 10, size, flags >> 1, reads


def test_one_input(data: bytes) -> None:
    max_head, max_size, chunk, reads = split(data)
    s = Session("fuzz", max_request_head=max_head, max_message_size=max_size)
    done: set[Side] = set()  # transports the session said to close, after their last bytes
    opened = False
    for side, part in reads:
        for i in range(0, max(len(part), 1), chunk or max(len(part), 1)):
            piece = part[i : i + chunk] if chunk else part
            if not piece or side in done:
                continue
            if s.state is SessionState.AWAIT_REQUEST and s.probe is None:
                if side is CLIENT:
                    s.receive_data(CLIENT, piece)
                continue
            if s.state is SessionState.REJECTED or s.probe is not None:
                break
            if not opened:
                open_upstream(s)
                opened = True
            if s.state is SessionState.OPEN:  # as the driver feeds an open session
                through = s.relay(side, piece)
                assert through is None or side.other not in done, (side, through)
            else:
                s.receive_data(side, piece)
            for leg in (CLIENT, UPSTREAM):
                out = s.data_to_send(leg)
                assert not (out and leg in done), (leg, out)
                if s.should_close(leg):
                    done.add(leg)
    if s.state is SessionState.REJECTED:
        check_error(b"".join(s.data_to_send(CLIENT)), s.rejected_status)
        assert s.should_close(CLIENT)
        return
    if s.probe is not None:
        s.reject(200, "ok")
        return
    if s.request is None and not opened:
        s.receive_eof(CLIENT)
        assert s.state is SessionState.FAILED
        assert s.should_close(CLIENT)
        assert not s.data_to_send(CLIENT)
        return
    if not opened:
        open_upstream(s)
    for leg in (CLIENT, UPSTREAM):
        s.receive_eof(leg)
    assert s.state in (SessionState.FAILED, SessionState.CLOSED), s


def main() -> None:
    args = list(sys.argv)
    corpus = [a for a in args[1:] if not a.startswith("-")]
    if corpus and os.path.isdir(corpus[0]) and not os.listdir(corpus[0]):
        for i, seed in enumerate(SEEDS):
            with open(os.path.join(corpus[0], f"seed-{i}"), "wb") as f:
                f.write(seed)
    if not any(a.startswith("-dict=") for a in args):
        fd, path = tempfile.mkstemp(suffix=".dict")
        with os.fdopen(fd, "w") as f:
            f.writelines(f'"{dict_entry(token)}"\n' for token in DICTIONARY)
        args.append(f"-dict={path}")
    atheris.Setup(args, test_one_input)
    for seed in SEEDS:
        test_one_input(seed)  # the seeds must pass before the search starts
    atheris.Fuzz()


if __name__ == "__main__":
    main()
