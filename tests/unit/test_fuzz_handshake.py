"""Hostile handshakes, fuzzed through the Session (no sockets; issue 9).

Requests are built from a good upgrade by a random stack of mutations taken from a
catalog, each labelled with what it must lead to:

- ``ok``: still a valid upgrade (header floods under the limit, bare LF line endings,
  obs-fold continuation lines, duplicated but agreeing headers, non-ASCII values…):
  the upgrade must be accepted;
- ``reject``: a broken request (bad request line, missing/duplicated/invalid
  ``Sec-WebSocket-Key``, conflicting versions, smuggling shapes that h11 refuses, NUL
  bytes…): it must end in an HTTP error, never in an accepted upgrade;
- ``pending``: a head that never ends: no answer, and EOF then ends it cleanly;
- ``any``: blind byte flips and the like: any clean end will do.

Every input is fed whole and again cut at random places. Whatever it is, it must end
in a clean HTTP status (400/426/431, or h11's 501 for a transfer coding it does not
know) that h11 parses as a client, or in a pending need for more data; never an
exception. The two feeds must end alike (for a head over ``max_request_head``, alike
in kind: its status is 431 if the limit is hit before the head ends, else whatever else
is wrong with it). An accepted upgrade is taken all the way
through a fake backend: the backend's request and the client's 101 must both parse,
and bytes the client sent after its head must reach the backend untouched.

Bugs this found are fixed and kept as regression tests below: an upgrade request
with a body, request targets that are not in origin form, non-token subprotocols.

About 3,000 inputs per run (printed at the end of the module); set
``WSPROXY_FUZZ_SCALE=25`` (and ``--timeout=0``) for a longer hunt of 75,000.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers import FORWARDING, build_raw
from wsproxy.core import Session, SessionState, Side

CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: What the session may answer a handshake with by itself.
STATUSES = frozenset({400, 426, 431, 501})
#: Inputs fuzzed, by test (reported at the end of the module).
INPUTS: Counter[str] = Counter()
#: WSPROXY_FUZZ_SCALE=20 runs twenty times the examples (a longer hunt, not for CI).
SCALE = max(1, int(os.environ.get("WSPROXY_FUZZ_SCALE", "1")))

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.fixture(scope="module", autouse=True)
def _report_inputs(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and INPUTS:
        runs = {name: n for name, n in INPUTS.items() if not name.startswith("known")}
        detail = ", ".join(f"{name}: {n}" for name, n in INPUTS.items())
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nhandshake fuzz: {sum(runs.values())} inputs ({detail})")


# The request model…


@dataclass
class Req:
    """A request under construction; ``lines`` are header lines without their EOL."""

    method: bytes = b"GET"
    target: bytes = b"/chat?room=1"
    version: bytes = b"HTTP/1.1"
    request_line: bytes | None = None
    lines: list[bytes] = field(
        default_factory=lambda: [
            b"Host: proxy.example",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: " + KEY,
            b"Sec-WebSocket-Version: 13",
        ]
    )
    eol: bytes = b"\r\n"
    #: Each line's own EOL where it differs (mixed line endings).
    eols: dict[int, bytes] = field(default_factory=dict)
    terminated: bool = True
    #: A line right after the request line, whatever is inserted later.
    first_line: bytes | None = None
    #: Every line ending turned into a bare CR: no line ever ends.
    cr_only: bool = False
    #: What the client sends right after its head: frames for the backend.
    tail: bytes = b""
    labels: list[str] = field(default_factory=list)
    #: Byte-level edits applied to the finished head: (position, delete count, insert).
    edits: list[tuple[int, int, bytes]] = field(default_factory=list)
    cut: int | None = None

    def head(self) -> bytes:
        line = self.request_line
        if line is None:
            line = b" ".join((self.method, self.target, self.version))
        out = [line + self.eol]
        if self.first_line is not None:
            out.append(self.first_line + self.eol)
        out += [text + self.eols.get(i, self.eol) for i, text in enumerate(self.lines)]
        data = b"".join(out) + (self.eol if self.terminated else b"")
        if self.cr_only:
            data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        for pos, delete, insert in self.edits:
            pos %= len(data) + 1
            data = data[:pos] + insert + data[pos + delete :]
        if self.cut is not None:
            data = data[: self.cut % max(len(data) - 1, 1)]
        return data

    def drop(self, name: bytes) -> None:
        self.lines = [line for line in self.lines if not _named(line, name)]

    def replace(self, name: bytes, value: bytes) -> None:
        self.drop(name)
        self.lines.append(name + b": " + value)


def _named(line: bytes, name: bytes) -> bool:
    return line.split(b":", 1)[0].strip().lower() == name.lower()


# The mutation catalog: each returns its label…

Mutation = Callable[[st.DrawFn, Req], str]
TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~",
    min_size=1, max_size=20,
).map(str.encode)
#: Header values h11 accepts: visible ASCII, obs-text, inner spaces and tabs.
#: (h11 takes any byte but NUL and Python's \s, which includes \x0b and \x0c.)
VALUE = st.binary(max_size=60).map(
    lambda b: bytes(c if c > 0x20 and c != 0x7F else 0x61 for c in b)
) | st.text(max_size=20).map(lambda s: s.encode("utf-8", "replace").translate(
    bytes.maketrans(b"\x00\n\x0b\x0c\r", b"0nvfr")).strip(b" \t"))
RESERVED_NAMES = {
    b"host", b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version",
    b"content-length", b"transfer-encoding", b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}


def m_extra_headers(draw: st.DrawFn, r: Req) -> str:
    for _ in range(draw(st.integers(1, 8))):
        name = draw(TOKEN)
        if name.lower() in RESERVED_NAMES:
            name = b"X-" + name
        r.lines.insert(draw(st.integers(0, len(r.lines))), name + b": " + draw(VALUE).strip())
    return "ok"


def m_header_flood(draw: st.DrawFn, r: Req) -> str:
    """Many headers: label decided by size later (the limit is the session's)."""
    count = draw(st.sampled_from([50, 200, 1000, 2000]))
    value = b"v" * draw(st.integers(0, 8))
    r.lines += [b"X-Flood-%d: %s" % (i, value) for i in range(count)]
    return "ok"


def m_long_value(draw: st.DrawFn, r: Req) -> str:
    size = draw(st.sampled_from([100, 1000, 8000, 16000, 16500, 40000]))
    r.lines.append(b"X-Long: " + b"a" * size)
    return "ok"


def m_name_case(draw: st.DrawFn, r: Req) -> str:
    lines = []
    for line in r.lines:
        name, sep, rest = line.partition(b":")
        how = draw(st.sampled_from([bytes.lower, bytes.upper, bytes.title, bytes]))
        lines.append(how(name) + sep + rest)  # type: ignore[operator]
    r.lines = lines
    return "ok"


def m_shuffle(draw: st.DrawFn, r: Req) -> str:
    r.lines = list(draw(st.permutations(r.lines)))
    return "ok"


def m_bare_lf(draw: st.DrawFn, r: Req) -> str:
    if draw(st.booleans()):
        r.eol = b"\n"
    else:  # mixed
        for i in range(len(r.lines)):
            if draw(st.booleans()):
                r.eols[i] = b"\n"
    return "ok"


def m_obs_fold(draw: st.DrawFn, r: Req) -> str:
    """A continuation line: h11 unfolds it into the previous header (RFC 9112 §5.2)."""
    ws = draw(st.sampled_from([b" ", b"\t", b"   "]))
    r.lines.insert(draw(st.integers(0, len(r.lines))), b"X-Folded: one" + r.eol + ws + b"two")
    return "ok"


def m_upgrade(draw: st.DrawFn, r: Req) -> str:
    good = [b"WebSocket", b"websocket, h2c", b"h2c, websocket", b"  websocket  ", b"WEBSOCKET"]
    bad = [b"h2c", b"websocketx", b"web socket", b"", b"websocket/13x", b"\xffwebsocket"]
    kind = draw(st.sampled_from(["good", "dup", "bad", "drop"]))
    if kind == "good":
        r.replace(b"Upgrade", draw(st.sampled_from(good)))
        return "ok"
    if kind == "dup":  # a second Upgrade line: the two are one list (RFC 9110 §5.3)
        r.lines.append(b"Upgrade: " + draw(st.sampled_from([b"h2c", b"websocket", b"foo/1"])))
        return "ok"
    if kind == "bad":
        r.replace(b"Upgrade", draw(st.sampled_from(bad)))
    else:
        r.drop(b"Upgrade")
    return "reject"


def m_connection(draw: st.DrawFn, r: Req) -> str:
    kind = draw(st.sampled_from(["good", "dup", "bad", "drop"]))
    if kind == "good":
        r.replace(b"Connection", draw(st.sampled_from(
            [b"keep-alive, Upgrade", b"UPGRADE", b"Upgrade, close", b"upgrade,foo",
             b"keep-alive,\r\n Upgrade", b"keep-alive,\n\tUpgrade"])))  # obs-fold
        return "ok"
    if kind == "dup":
        r.lines.append(b"Connection: " + draw(st.sampled_from([b"keep-alive", b"close", b"TE"])))
        return "ok"
    if kind == "bad":
        r.replace(b"Connection", draw(st.sampled_from([b"keep-alive", b"close", b"upgradex", b""])))
    else:
        r.drop(b"Connection")
    return "reject"


def _b64(n: int) -> bytes:
    return base64.b64encode(bytes(range(n)))


BAD_KEYS = [
    b"", _b64(15), _b64(17), _b64(32), KEY.rstrip(b"="), KEY + b"=", b"!" + KEY[1:],
    KEY[:8] + b" " + KEY[8:], base64.urlsafe_b64encode(b"\xfb\xff" * 8), b"x" * 1000,
    KEY + b"," + KEY, "dGhlIHNhbXBsZSBub25jZQ\u00e9=".encode(),
    KEY[:10] + b"\r\n " + KEY[10:],  # obs-fold: a space inside the key once unfolded
]


def m_key(draw: st.DrawFn, r: Req) -> str:
    kind = draw(st.sampled_from(["bad", "drop", "dup-same", "dup-other", "random"]))
    if kind == "bad":
        r.replace(b"Sec-WebSocket-Key", draw(st.sampled_from(BAD_KEYS)))
    elif kind == "drop":
        r.drop(b"Sec-WebSocket-Key")
    elif kind == "dup-same":
        r.lines.append(b"Sec-WebSocket-Key: " + KEY)
    elif kind == "dup-other":
        other = draw(st.binary(min_size=16, max_size=16))  # drawn: the run replays
        r.lines.append(b"Sec-WebSocket-Key: " + base64.b64encode(other))
    else:
        raw = draw(st.binary(max_size=24))
        r.replace(b"Sec-WebSocket-Key", base64.b64encode(raw))
        return "ok" if len(raw) == 16 else "reject"
    return "reject"


def m_version(draw: st.DrawFn, r: Req) -> str:
    kind = draw(st.sampled_from(["bad", "drop", "dup", "list", "padded"]))
    if kind == "padded":
        r.replace(b"Sec-WebSocket-Version", b"  13 ")  # OWS is not part of the value
        return "ok"
    if kind == "bad":
        r.replace(b"Sec-WebSocket-Version", draw(st.sampled_from(
            [b"8", b"12", b"14", b"013", b"13.0", b"", b"thirteen", b"1\x003"])))
    elif kind == "drop":
        r.drop(b"Sec-WebSocket-Version")
    elif kind == "dup":
        r.lines.append(b"Sec-WebSocket-Version: " + draw(st.sampled_from([b"13", b"8"])))
    else:
        r.replace(b"Sec-WebSocket-Version", draw(st.sampled_from([b"13, 8", b"8, 13", b"13,13"])))
    return "reject"


def m_host(draw: st.DrawFn, r: Req) -> str:
    if draw(st.booleans()):
        r.drop(b"Host")
    else:
        r.lines.append(b"Host: " + draw(st.sampled_from([b"proxy.example", b"evil.example"])))
    return "reject"


def m_method(draw: st.DrawFn, r: Req) -> str:
    r.method = draw(st.sampled_from(
        [b"POST", b"HEAD", b"PUT", b"get", b"Get", b"OPTIONS", b"CONNECT", b"GET\x00",
         "G\u00c9T".encode(), b"", b"GET GET"]))
    return "reject"


def m_version_line(draw: st.DrawFn, r: Req) -> str:
    r.version = draw(st.sampled_from(
        [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"http/1.1", b"HTTP/1",
         b"HTTP/11", b"HTTP/1.1x", b"HTTP/1.1 ", b"HTTP/1.1\x00", b"HTTP/\xff.1", b""]))
    return "reject"


def m_request_line(draw: st.DrawFn, r: Req) -> str:
    r.request_line = draw(st.sampled_from(
        [b"GET  /chat HTTP/1.1", b" GET /chat HTTP/1.1", b"GET\t/chat\tHTTP/1.1",
         b"GET /chat  HTTP/1.1", b"GET /chat", b"GET", b"", b"/chat HTTP/1.1",
         b"GET /a b HTTP/1.1", b"GET /\x00 HTTP/1.1", "GET /caf\u00e9 HTTP/1.1".encode(),
         b"GET /chat HTTP/1.1\rX", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]))
    return "reject"


def m_random_request_line(draw: st.DrawFn, r: Req) -> str:
    r.request_line = draw(st.binary(max_size=80)).replace(b"\n", b"")
    return "any"


def m_target(draw: st.DrawFn, r: Req) -> str:
    """Origin-form targets (the others are a known bug, see below)."""
    r.target = draw(st.sampled_from(
        [b"/", b"/a/b%20c?x=1&y=%2F", b"/chat?" + b"q" * 500, b"/~user/x;p=1?a#f", b"/?"]))
    return "ok"


def m_header_syntax(draw: st.DrawFn, r: Req) -> str:
    """Header lines h11 refuses."""
    line = draw(st.sampled_from(
        [b"X-A: a\x00b", b"X\x00A: b", b"X-A: a\rb", b"Garbage", b"X-A : b", b": empty-name",
         "X-\u00e9: a".encode(), b"X A: b", b"X-A:\x00", b"(X-A): b", b"X-A\t: b"]))
    where = draw(st.integers(0, len(r.lines)))
    r.lines.insert(where, line)
    return "reject"


def m_leading_ws_line(draw: st.DrawFn, r: Req) -> str:
    """A continuation line right after the request line: nothing to fold into."""
    r.first_line = b" X-Folded: oops"
    return "reject"


def m_non_ascii_value(draw: st.DrawFn, r: Req) -> str:
    r.lines.append(b"X-Name: " + draw(st.sampled_from(
        ["Jos\u00e9 \u2713 \U0001f642".encode(), b"\xff\xfe\x80", b"caf\xe9", b"a\x01b\x7fc"])))
    return "ok"


def m_smuggling(draw: st.DrawFn, r: Req) -> str:
    """Body-framing shapes h11 refuses (the ones it takes are the known bug below)."""
    shapes = [
        [b"Content-Length: 5", b"Content-Length: 6"],
        [b"Content-Length: 5, 6"],
        [b"Content-Length: -1"],
        [b"Content-Length: 0x10"],
        [b"Content-Length: 1e3"],
        [b"Content-Length: +5"],
        [b"Transfer-Encoding: gzip"],
        [b"Transfer-Encoding: gzip, chunked"],
        [b"Transfer-Encoding: chunked, gzip"],
        [b"Transfer-Encoding: identity"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: xchunked", b"Content-Length: 3"],
        [b"Content-Length: 3", b"Transfer-Encoding: gzip"],
    ]
    for line in draw(st.sampled_from(shapes)):
        r.lines.insert(draw(st.integers(0, len(r.lines))), line)
    return "reject"


def m_harmless_framing(draw: st.DrawFn, r: Req) -> str:
    line = draw(st.sampled_from(
        [b"Content-Length: 0", b"Content-Length: 00", b"Expect: 100-continue"]))
    r.lines.append(line)
    if line.startswith(b"Content-Length") and draw(st.booleans()):
        r.lines.append(line)  # the same value twice is one value (h11 compares text)
    return "ok"


def m_extras(draw: st.DrawFn, r: Req) -> str:
    r.lines += [
        b"Origin: https://app.example",
        b"Sec-WebSocket-Protocol: chat, " + draw(TOKEN),
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        b"User-Agent: fuzz/1.0",
    ]
    return "ok"


def m_tail(draw: st.DrawFn, r: Req) -> str:
    """Frames the client sends without waiting for the 101."""
    frames = [
        build_raw(0x1, p.encode(), mask=True) for p in draw(st.lists(st.text(max_size=30),
                                                                   max_size=3))
    ]
    r.tail = b"".join(frames) or build_raw(0x2, b"early", mask=True)
    return "ok"


def m_unterminated(draw: st.DrawFn, r: Req) -> str:
    if draw(st.booleans()):
        r.terminated = False
    elif draw(st.booleans()):
        r.cr_only = True  # no line ever ends
    else:
        r.cut = draw(st.integers(0, 1 << 16))
    return "pending"


def m_byte_edit(draw: st.DrawFn, r: Req) -> str:
    """Blind edits anywhere in the head: insert, delete or replace bytes."""
    for _ in range(draw(st.integers(1, 4))):
        r.edits.append((
            draw(st.integers(0, 1 << 16)),
            draw(st.integers(0, 3)),
            draw(st.binary(max_size=4) | st.sampled_from([b"\x00", b"\r", b"\n", b"\r\n", b":"])),
        ))
    return "any"


MUTATIONS: dict[str, Mutation] = {
    f.__name__[2:]: f  # type: ignore[misc]
    for f in (
        m_extra_headers, m_header_flood, m_long_value, m_name_case, m_shuffle, m_bare_lf,
        m_obs_fold, m_upgrade, m_connection, m_key, m_version, m_host, m_method,
        m_version_line, m_request_line, m_random_request_line, m_target, m_header_syntax,
        m_leading_ws_line, m_non_ascii_value, m_smuggling, m_harmless_framing, m_extras,
        m_tail, m_unterminated, m_byte_edit,
    )
}


@st.composite
def requests(draw: st.DrawFn) -> Req:
    r = Req()
    # Each mutation at most once: two edits of the same header would blur the label.
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=4, unique=True)):
        r.labels.append(f"{name}:{MUTATIONS[name](draw, r)}")
    return r


# Running one input…


@dataclass
class Outcome:
    kind: str  # "rejected", "accepted", "pending" or "probe"
    status: int | None
    answer: bytes
    request: object


def feed(data: bytes, cuts: list[int], max_head: int) -> tuple[Session, Outcome]:
    """Feed *data* to a new Session, cut at *cuts*; stop at the first verdict."""
    session = Session("fuzz", max_request_head=max_head)
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(bounds):
        session.receive_data(CLIENT, data[start:end])
        if session.probe is not None or session.state is not SessionState.AWAIT_REQUEST:
            break  # the driver answers the probe at once; a rejection ends the reading
    answer = b"".join(session.data_to_send(CLIENT))
    if session.state is SessionState.REJECTED:
        kind = "rejected"
    elif session.request is not None:
        kind = "accepted"
    elif session.probe is not None:
        kind = "probe"
    else:
        assert session.state is SessionState.AWAIT_REQUEST, session
        kind = "pending"
    return session, Outcome(kind, session.rejected_status, answer, session.request)


def parse_error_answer(answer: bytes) -> h11.Response:
    """The session's HTTP error, read the way a client reads it; it must end there."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(answer)
    conn.receive_data(b"")  # then the proxy closes
    response = conn.next_event()
    assert isinstance(response, h11.Response), response
    while isinstance(next_event := conn.next_event(), h11.Data):
        pass
    assert isinstance(next_event, h11.EndOfMessage), next_event
    assert isinstance(conn.next_event(), h11.ConnectionClosed)
    assert (b"connection", b"close") in [(k, v.lower()) for k, v in response.headers]
    return response


def check_rejected(session: Session, outcome: Outcome) -> None:
    assert outcome.status in STATUSES, outcome
    response = parse_error_answer(outcome.answer)
    assert response.status_code == outcome.status
    if outcome.status == 426:
        assert (b"sec-websocket-version", b"13") in response.headers
    assert session.should_close(CLIENT)
    assert session.data_to_send(UPSTREAM) == []
    session.receive_data(CLIENT, b"GET / HTTP/1.1\r\n\r\n")  # nothing more is read
    assert session.data_to_send(CLIENT) == []


def check_pending(session: Session) -> None:
    assert not session.should_close(CLIENT)
    session.receive_eof(CLIENT)
    assert session.state is SessionState.FAILED
    assert session.should_close(CLIENT)
    assert session.data_to_send(CLIENT) == []


def check_probe(session: Session) -> None:
    session.reject(200, "ok")  # what the driver does
    response = parse_error_answer(b"".join(session.data_to_send(CLIENT)))
    assert response.status_code == 200


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def check_accepted(session: Session, tail: bytes | None, path_prefix: str) -> None:
    """Take an accepted upgrade through a fake backend and back to the client.

    *tail*: what the backend must then receive from the client (None: not known, for
    blindly edited inputs whose early bytes may well be no frames at all).
    """
    request = session.request
    assert request is not None
    if not request.target.startswith(b"/"):
        # Only blind edits get here: the known bug of test_target_not_in_origin_form...
        INPUTS["known bug hit: target not in origin form"] += 1
        return
    session.accept()
    session.connect_upstream(
        target="t", authority="backend:80", path_prefix=path_prefix, forwarding=FORWARDING,
        pass_extensions=False,
    )
    # The backend reads a valid upgrade of the proxy's own.
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"".join(session.data_to_send(UPSTREAM)))
    upstream = server.next_event()
    assert isinstance(upstream, h11.Request), upstream
    assert upstream.method == b"GET"
    assert upstream.http_version == b"1.1"
    assert upstream.target == path_prefix.encode() + request.target
    headers: dict[bytes, list[bytes]] = {}
    for name, value in upstream.headers:
        headers.setdefault(bytes(name), []).append(bytes(value))
    assert headers[b"host"] == [b"backend:80"]
    assert headers[b"upgrade"] == [b"websocket"]
    assert headers[b"sec-websocket-version"] == [b"13"]
    [key] = headers[b"sec-websocket-key"]
    assert len(base64.b64decode(key, validate=True)) == 16
    assert b"content-length" not in headers
    assert b"transfer-encoding" not in headers
    assert isinstance(server.next_event(), h11.EndOfMessage)
    # Its 101 opens the session; the client reads a valid 101 for its own key.
    session.receive_data(
        UPSTREAM,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n",
    )
    assert session.state is not SessionState.CONNECTING_UPSTREAM, session
    assert session.accepted is not None
    assert tail is None or session.state is SessionState.OPEN, session
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[
        ("Host", "x"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]))
    client.send(h11.EndOfMessage())
    client.receive_data(b"".join(session.data_to_send(CLIENT)))
    answer = client.next_event()
    assert isinstance(answer, h11.InformationalResponse), answer
    assert answer.status_code == 101
    assert (b"sec-websocket-accept", accept_key(request.key)) in answer.headers
    # What the client sent after its head reaches the backend as it came.
    if tail is not None:
        assert client.trailing_data == (b"", False)
        assert b"".join(session.data_to_send(UPSTREAM)) == tail


def expectation(r: Req, size: int, max_head: int) -> set[str]:
    """The outcomes allowed for *r*."""
    kinds = {label.rsplit(":", 1)[1] for label in r.labels}
    if "any" in kinds:
        return {"rejected", "accepted", "pending", "probe"}
    if "pending" in kinds:
        return {"pending", "rejected"}  # rejected: over the size limit, while incomplete
    if size > max_head:
        return {"rejected"}
    if "reject" in kinds:
        return {"rejected"}
    return {"accepted"}


def run_one(r: Req, cuts: list[int], max_head: int, path_prefix: str) -> None:
    head = r.head()
    data = head + r.tail
    whole_session, whole = feed(data, [], max_head)
    cut_session, cut = feed(data, cuts, max_head)
    INPUTS["mutated requests"] += 1
    event(f"outcome: {whole.kind} {whole.status or ''}".rstrip())  # --hypothesis-show-statistics
    allowed = expectation(r, len(head), max_head)
    assert whole.kind in allowed, (r.labels, whole, data[:300])
    # However the bytes were cut, the verdict is the same. Over the size limit, only
    # its kind: an oversized head that is also malformed gets 431 when the limit is
    # hit before its end, else the status of what is wrong with it (400/426/501).
    if len(head) > max_head:
        assert cut.kind == whole.kind, (r.labels, whole, cut)
    else:
        assert (cut.kind, cut.status, cut.answer, cut.request) == (
            whole.kind, whole.status, whole.answer, whole.request), (r.labels, data[:300])
    for session, outcome in ((whole_session, whole), (cut_session, cut)):
        check(session, outcome, r, path_prefix)


def check(session: Session, outcome: Outcome, r: Req, path_prefix: str) -> None:
    if outcome.kind == "rejected":
        check_rejected(session, outcome)
    elif outcome.kind == "pending":
        check_pending(session)
    elif outcome.kind == "probe":
        check_probe(session)
    else:
        strict = not any(label.endswith(":any") for label in r.labels)
        check_accepted(session, r.tail if strict else None, path_prefix)


# The tests…


@pytest.mark.timeout(120)  # ~4 s; its examples are a count, not a time: slower when loaded
@settings(SETTINGS, max_examples=2000 * SCALE)
@given(
    r=requests(),
    cuts=st.lists(st.integers(0, 1 << 17), max_size=10),
    max_head=st.sampled_from([16 << 10, 16 << 10, 4096, 512]),
    path_prefix=st.sampled_from(["", "/app"]),
)
def test_mutated_requests_end_cleanly(
    r: Req, cuts: list[int], max_head: int, path_prefix: str
) -> None:
    run_one(r, cuts, max_head, path_prefix)


@settings(SETTINGS, max_examples=300 * SCALE)
@given(r=requests(), max_head=st.sampled_from([16 << 10, 512]))
def test_byte_by_byte_feeding_ends_alike(r: Req, max_head: int) -> None:
    """The worst chunking there is, on heads small enough to feed a byte at a time."""
    head = r.head()[:3000]
    data = head + r.tail
    whole_session, whole = feed(data, [], max_head)
    cut_session, cut = feed(data, list(range(len(data))), max_head)
    INPUTS["byte by byte"] += 1
    if len(head) > max_head:
        assert cut.kind == whole.kind, (r.labels, whole, cut)
    else:
        assert (cut.kind, cut.status, cut.answer, cut.request) == (
            whole.kind, whole.status, whole.answer, whole.request), (r.labels, data[:300])
    if head != r.head():
        return  # the head was shortened: the tail is no longer where it was meant to be
    check(whole_session, whole, r, "")
    check(cut_session, cut, r, "/app")


@settings(SETTINGS, max_examples=700 * SCALE)
@given(
    prefix=st.sampled_from([b"", b"GET ", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n"]),
    garbage=st.binary(max_size=300),
    terminate=st.booleans(),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_random_bytes_end_cleanly(
    prefix: bytes, garbage: bytes, terminate: bool, cuts: list[int]
) -> None:
    data = prefix + garbage + (b"\r\n\r\n" if terminate else b"")
    INPUTS["random bytes"] += 1
    for session, outcome in (feed(data, [], 16 << 10), feed(data, cuts, 16 << 10)):
        assert outcome.kind != "accepted", data  # no key, no version: never an upgrade
        if outcome.kind == "rejected":
            check_rejected(session, outcome)
        elif outcome.kind == "probe":
            check_probe(session)
        else:
            check_pending(session)


# Smuggling shapes, one by one (the fuzz mixes them with the rest)…

BASE = (
    b"GET /chat HTTP/1.1\r\nHost: proxy.example\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
)

SHAPES = {
    "bare-lf": (BASE.replace(b"\r\n", b"\n") + b"\n", "accepted", None),
    "obs-fold-in-connection": (
        BASE.replace(b"Connection: Upgrade", b"Connection: keep-alive,\r\n Upgrade") + b"\r\n",
        "accepted", None,
    ),
    "obs-fold-splitting-the-key": (
        BASE.replace(KEY, KEY[:10] + b"\r\n " + KEY[10:]) + b"\r\n", "rejected", 400,
    ),
    "two-content-lengths": (BASE + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
                            "rejected", 400),
    "transfer-encoding-gzip": (BASE + b"Transfer-Encoding: gzip\r\n\r\n", "rejected", 501),
    "te-gzip-with-content-length": (
        BASE + b"Content-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nabc", "rejected", 501,
    ),
    "nul-in-a-value": (BASE + b"X-A: a\x00b\r\n\r\n", "rejected", 400),
    "cr-alone-in-a-value": (BASE + b"X-A: a\rb\r\n\r\n", "rejected", 400),
    "header-name-with-space": (BASE + b"X-A : b\r\n\r\n", "rejected", 400),
    "non-ascii-header-name": (BASE + "X-\u00e9: a\r\n\r\n".encode(), "rejected", 400),
    "non-ascii-header-value": (BASE + "X-A: \u00e9\r\n\r\n".encode(), "accepted", None),
    "two-keys": (BASE + b"Sec-WebSocket-Key: " + KEY + b"\r\n\r\n", "rejected", 400),
    "two-versions": (BASE + b"Sec-WebSocket-Version: 8\r\n\r\n", "rejected", 426),
    "two-hosts": (BASE + b"Host: evil.example\r\n\r\n", "rejected", 400),
    "http-1.0": (BASE.replace(b"HTTP/1.1", b"HTTP/1.0") + b"\r\n", "rejected", 400),
    "head-over-the-limit": (BASE + b"X-Long: " + b"a" * (16 << 10) + b"\r\n\r\n",
                            "rejected", 431),
    "endless-head": (BASE + b"X-Long: " + b"a" * (17 << 10), "rejected", 431),
    "cr-line-endings": (BASE.replace(b"\r\n", b"\r") + b"\r", "pending", None),
}


@pytest.mark.parametrize("chunk", [0, 1, 7], ids=["whole", "bytewise", "by-7"])
@pytest.mark.parametrize(("data", "kind", "status"), SHAPES.values(), ids=SHAPES.keys())
def test_smuggling_and_syntax_shapes(
    data: bytes, kind: str, status: int | None, chunk: int
) -> None:
    cuts = list(range(0, len(data), chunk)) if chunk else []
    session, outcome = feed(data, cuts, 16 << 10)
    assert (outcome.kind, outcome.status) == (kind, status), outcome
    if kind == "rejected":
        check_rejected(session, outcome)
    elif kind == "pending":
        check_pending(session)
    else:
        check_accepted(session, b"", "")


# Known bugs…

BODIES = {
    "content-length": BASE + b"Content-Length: 5\r\n\r\nhello",
    "chunked": BASE + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "content-length-and-chunked": (
        BASE + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    "chunked-and-content-length": (
        BASE + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("data", BODIES.values(), ids=BODIES.keys())
def test_upgrade_with_a_request_body_is_refused(data: bytes) -> None:
    session, outcome = feed(data, [], 16 << 10)
    assert (outcome.kind, outcome.status) == ("rejected", 400), outcome
    check_rejected(session, outcome)


def test_bytes_after_a_head_with_content_length_do_not_depend_on_the_cut() -> None:
    data = BASE + b"Content-Length: 6\r\n\r\n" + build_raw(0x1, b"", mask=True)
    whole_session, _ = feed(data, [], 16 << 10)
    cut_session, _ = feed(data, [len(data) - 6], 16 << 10)
    outcomes = []
    for session in (whole_session, cut_session):
        if session.request is None:
            outcomes.append(session.rejected_status)
            continue
        check_accepted(session, data[-6:], "")  # the frame must reach the backend
        outcomes.append(101)
    assert outcomes[0] == outcomes[1]




@pytest.mark.parametrize(
    "target", [b"chat", b"*", b"http://evil.example/chat", b"ws://evil.example/chat"],
    ids=["relative", "asterisk", "absolute-http", "absolute-ws"],
)
def test_target_not_in_origin_form_is_refused_or_normalised(target: bytes) -> None:
    data = BASE.replace(b"/chat", target, 1) + b"\r\n"
    session, outcome = feed(data, [], 16 << 10)
    if outcome.kind == "rejected":
        assert outcome.status == 400
        return
    assert outcome.kind == "accepted"
    session.accept()
    session.connect_upstream(
        target="t", authority="backend:80", path_prefix="/app", forwarding=FORWARDING,
        pass_extensions=False,
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"".join(session.data_to_send(UPSTREAM)))
    upstream = server.next_event()
    assert isinstance(upstream, h11.Request)
    assert upstream.target == b"/app/chat"


def test_a_subprotocol_offer_reaches_the_backend_byte_for_byte_or_is_refused() -> None:
    data = BASE + b"Sec-WebSocket-Protocol: caf\xe9\r\n\r\n"
    session, outcome = feed(data, [], 16 << 10)
    if outcome.kind == "rejected":
        assert outcome.status == 400
        return
    session.accept()
    session.connect_upstream(
        target="t", authority="backend:80", path_prefix="", forwarding=FORWARDING,
        pass_extensions=False,
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"".join(session.data_to_send(UPSTREAM)))
    upstream = server.next_event()
    assert isinstance(upstream, h11.Request)
    assert (b"sec-websocket-protocol", b"caf\xe9") in upstream.headers
