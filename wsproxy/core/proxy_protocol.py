"""The HAProxy PROXY protocol header, v1 and v2: a pure, incremental parser.

Theory of operation. A load balancer that speaks the PROXY protocol writes one header
in front of the client's bytes; the header names the client the balancer saw. When
``listen.proxy_protocol`` is on, every connection must start with one, and the address
it carries replaces the socket peer in the per-IP limits, the logs and
X-Forwarded-For. The format is HAProxy's ``proxy-protocol.txt``:

- v1 is one text line, at most 107 bytes with its CRLF:
  ``PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n``, ``PROXY TCP6 ...`` or
  ``PROXY UNKNOWN<anything>\\r\\n``.
- v2 is binary: a 12-byte signature, a version/command byte (0x20 LOCAL, 0x21
  PROXY), a family/transport byte, a big-endian 16-bit length, then that many bytes
  of addresses followed by TLVs (which we skip).

The two signatures differ in their first byte ("P" against "\\r"), so the version is
known at once, and a connection that sends anything else (an HTTP request from a
client that bypassed the balancer) fails on its first byte that cannot begin either
signature. The parser never holds more than one header's worth of bytes: a v1 line
without CRLF fails at 107 bytes, and a v2 length above ``MAX_V2_PAYLOAD`` fails as
soon as the length is read.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Final

V1_PREFIX: Final = b"PROXY "
#: A v1 line, "PROXY" and CRLF included, is at most this long.
MAX_V1_HEADER: Final = 107

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: Signature, version/command, family/transport, 16-bit length.
V2_FIXED: Final = 16
#: The largest address block (two AF_UNIX paths) plus a generous TLV allowance.
MAX_V2_PAYLOAD: Final = 216 + 4096

_V2_VERSION: Final = 0x2
_V2_LOCAL: Final = 0x0
_V2_PROXY: Final = 0x1

# Family (high nibble) and transport (low nibble) of v2's 14th byte.
_AF_UNSPEC: Final = 0x0
_AF_INET: Final = 0x1
_AF_INET6: Final = 0x2
_AF_UNIX: Final = 0x3
_TRANSPORTS: Final = frozenset({0x0, 0x1, 0x2})  # UNSPEC, STREAM, DGRAM
#: Bytes of the address block for each family: two addresses, then two ports.
_ADDRESS_BLOCK: Final = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_TCP4: Final = 0x11
_TCP6: Final = 0x21


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """Who the load balancer says the client is.

    ``client_ip`` and ``client_port`` are None when the header carries no usable
    address (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC, UNIX or UDP): use the socket peer then.
    """

    client_ip: str | None
    client_port: int | None


#: The header of a connection whose address is the socket peer's.
NO_ADDRESS: Final = ProxyHeader(None, None)


class ProxyProtocolError(ValueError):
    """The connection did not start with a valid PROXY protocol header."""


class _Phase(enum.Enum):
    #: Fewer bytes than a signature: could still be either version.
    SIGNATURE = "signature"
    #: Saw "PROXY ": reading the line up to CRLF.
    V1 = "v1"
    #: Saw the binary signature: reading the fixed part, then the payload.
    V2 = "v2"
    #: Terminal: a header was returned, or an error raised.
    FINISHED = "finished"


class ProxyHeaderParser:
    """Reads one PROXY protocol header from the start of a connection.

    Call :meth:`feed` with every chunk received until it returns the header; from
    then on the connection is ordinary, starting with the bytes it returned. A
    parser reads one header: feeding it after it returned or raised is a bug.
    """

    __slots__ = ("_buffer", "_phase")

    def __init__(self) -> None:
        self._buffer = b""
        self._phase = _Phase.SIGNATURE

    def __repr__(self) -> str:
        return f"<ProxyHeaderParser {self._phase.name} buffered={len(self._buffer)}>"

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """Add received bytes; return the header once it is complete.

        Returns:
            None while more bytes are needed, else the header and the bytes that
            followed it (the start of the client's stream, to be handled as if
            just received).

        Raises:
            ProxyProtocolError: the bytes cannot be a valid header (no header,
                bad signature, version or addresses, or longer than allowed).
            RuntimeError: called again after returning a header or raising.
        """
        if self._phase is _Phase.FINISHED:
            raise RuntimeError("the PROXY header was already read")
        buffer = self._buffer + data
        try:
            result = self._parse(buffer)
        except ProxyProtocolError:
            self._finish()
            raise
        if result is None:
            self._buffer = buffer
        else:
            self._finish()
        return result

    def _finish(self) -> None:
        self._phase = _Phase.FINISHED
        self._buffer = b""

    def _parse(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        if self._phase is _Phase.SIGNATURE:
            self._phase = _identify(buffer)
        if self._phase is _Phase.V1:
            return _parse_v1(buffer)
        if self._phase is _Phase.V2:
            return _parse_v2(buffer)
        return None


def _identify(buffer: bytes) -> _Phase:
    """The version that *buffer* starts, or SIGNATURE if it is too short to tell."""
    for signature, phase in ((V1_PREFIX, _Phase.V1), (V2_SIGNATURE, _Phase.V2)):
        if buffer.startswith(signature):
            return phase
        if signature.startswith(buffer):
            return _Phase.SIGNATURE
    raise ProxyProtocolError("connection did not start with a PROXY protocol header")


# Version 1: one line of text.


def _parse_v1(buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
    end = buffer.find(b"\r\n", 0, MAX_V1_HEADER)
    if end == -1:
        if len(buffer) >= MAX_V1_HEADER:
            raise ProxyProtocolError(f"PROXY v1 line without CRLF in {MAX_V1_HEADER} bytes")
        return None
    return _v1_header(buffer[len(V1_PREFIX) : end]), buffer[end + 2 :]


def _v1_header(line: bytes) -> ProxyHeader:
    fields = line.split(b" ")
    if fields[0] == b"UNKNOWN":
        return NO_ADDRESS  # "the receiver must ignore anything presented before the CRLF"
    if fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1 protocol {fields[0]!r} is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 5:
        raise ProxyProtocolError("PROXY v1 line needs protocol, two addresses and two ports")
    version = 4 if fields[0] == b"TCP4" else 6
    source, _destination = (_v1_address(field, version) for field in fields[1:3])
    source_port, _destination_port = (_v1_port(field) for field in fields[3:5])
    return ProxyHeader(source, source_port)


def _v1_address(field: bytes, version: int) -> str:
    address = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    # ASCII only, and no IPv6 scope ("%eth0"): neither belongs in a v1 header.
    if field.isascii() and b"%" not in field:
        try:
            return str(address(field.decode("ascii")))
        except ValueError:
            pass  # reported below, with the field as it came
    raise ProxyProtocolError(f"PROXY v1 address {field!r} is not IPv{version}")


def _v1_port(field: bytes) -> int:
    # Decimal, no sign, no leading zero: the spec's form, and what int() alone would not check.
    if not field.isdigit() or (len(field) > 1 and field.startswith(b"0")):
        raise ProxyProtocolError(f"PROXY v1 port {field!r} is not a decimal port")
    port = int(field)
    if port > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1 port {port} is above 65535")
    return port


# Version 2: binary, with a length.


def _parse_v2(buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
    if len(buffer) < V2_FIXED:
        return None
    command, family, length = _v2_fixed(buffer)
    end = V2_FIXED + length
    if len(buffer) < end:
        return None
    if command == _V2_LOCAL:
        return NO_ADDRESS, buffer[end:]  # health checks from the balancer itself
    return _v2_addresses(family, buffer[V2_FIXED:end]), buffer[end:]


def _v2_fixed(buffer: bytes) -> tuple[int, int, int]:
    """Check the 16 fixed bytes; return the command, the family byte and the length."""
    version, command = buffer[12] >> 4, buffer[12] & 0xF
    if version != _V2_VERSION:
        raise ProxyProtocolError(f"PROXY v2 header with version {version}")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError(f"PROXY v2 header with command {command}")
    family = buffer[13]
    if family >> 4 not in _ADDRESS_BLOCK or family & 0xF not in _TRANSPORTS:
        raise ProxyProtocolError(f"PROXY v2 header with family byte {family:#04x}")
    length = int.from_bytes(buffer[14:16], "big")
    if length > MAX_V2_PAYLOAD:
        raise ProxyProtocolError(f"PROXY v2 header of {length} bytes (limit {MAX_V2_PAYLOAD})")
    if command == _V2_PROXY and length < _ADDRESS_BLOCK[family >> 4]:
        raise ProxyProtocolError(f"PROXY v2 length {length} too short for family {family:#04x}")
    return command, family, length


def _v2_addresses(family: int, payload: bytes) -> ProxyHeader:
    """The source of a PROXY command's address block; what follows it (TLVs) is skipped."""
    if family == _TCP4:
        return ProxyHeader(str(ipaddress.IPv4Address(payload[0:4])), _port(payload, 8))
    if family == _TCP6:
        return ProxyHeader(str(ipaddress.IPv6Address(payload[0:16])), _port(payload, 32))
    return NO_ADDRESS  # UNSPEC, UNIX, UDP: nothing the per-IP limits can use


def _port(payload: bytes, offset: int) -> int:
    return int.from_bytes(payload[offset : offset + 2], "big")
