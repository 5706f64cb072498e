"""A small authoritative DNS server for tests, on 127.0.0.1 (UDP and TCP, one port).

Built on ``dnslib`` for the wire format and asyncio for the sockets, so it runs in the
test's own event loop and its records change between two awaits, no thread involved:

    async with dns_server() as dns:
        dns.set_addresses("app.test", "127.0.0.2", "127.0.0.3")
        ... resolver "127.0.0.1:{dns.port}" ...
        dns.mode = "servfail"

Like a real server, a UDP answer larger than the client's EDNS payload size (512 bytes
without EDNS) goes out truncated (TC set, no records), and the client asks again over
TCP. ``queries`` records every question with the transport it came on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSRecord

#: How the server answers every question.
#: answer: from the zone (NXDOMAIN for an unknown name); servfail, refused, nxdomain:
#: that rcode; empty: NOERROR without records; drop: no answer at all (a timeout).
Mode = Literal["answer", "servfail", "refused", "nxdomain", "empty", "drop"]


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


@dataclass
class DNSServer:
    port: int = 0
    mode: Mode = "answer"
    #: When False, SRV answers carry no addresses in their additional section.
    srv_glue: bool = True
    #: name -> qtype ("A", "AAAA", "SRV") -> dnslib rdata objects.
    zone: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    #: (name, qtype, "udp" or "tcp") of every question received.
    queries: list[tuple[str, str, str]] = field(default_factory=list)
    #: Open TCP connections, closed when the server stops.
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def address(self) -> str:
        """The ``discovery.dns.resolver`` value for this server."""
        return f"127.0.0.1:{self.port}"

    def set_addresses(self, name: str, *addresses: str) -> None:
        """*name*'s A and AAAA records become *addresses* (none: the name exists, empty)."""
        records = self.zone.setdefault(_key(name), {})
        records["A"] = [A(a) for a in addresses if ipaddress.ip_address(a).version == 4]
        records["AAAA"] = [AAAA(a) for a in addresses if ipaddress.ip_address(a).version == 6]

    def set_srv(self, name: str, *targets: tuple[str, int]) -> None:
        """*name*'s SRV records: (target, port) each, priority 10, weight 100."""
        records = self.zone.setdefault(_key(name), {})
        records["SRV"] = [SRV(10, 100, port, _key(target)) for target, port in targets]

    def remove(self, name: str) -> None:
        self.zone.pop(_key(name), None)

    def answer(self, data: bytes, transport: str) -> bytes | None:
        """The reply to the query *data*; None for no reply."""
        request = DNSRecord.parse(data)
        qname, qtype = str(request.q.qname), QTYPE[request.q.qtype]
        self.queries.append((qname, qtype, transport))
        if self.mode == "drop":
            return None
        reply = request.reply()
        reply.header.aa = 1
        records = self.zone.get(_key(qname))
        if self.mode in ("servfail", "refused", "nxdomain"):
            reply.header.rcode = getattr(RCODE, self.mode.upper())
        elif self.mode == "answer" and records is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif self.mode == "answer" and records is not None:
            for rdata in records.get(qtype, []):
                reply.add_answer(RR(qname, QTYPE.reverse[qtype], rdata=rdata, ttl=0))
            if qtype == "SRV" and self.srv_glue:
                for srv in records.get("SRV", []):
                    glue = self.zone.get(str(srv.target), {})
                    for kind in ("A", "AAAA"):
                        for rdata in glue.get(kind, []):
                            reply.add_ar(RR(str(srv.target), QTYPE.reverse[kind],
                                            rdata=rdata, ttl=0))
        packed: bytes = reply.pack()
        if transport == "udp" and len(packed) > self._udp_limit(request):
            reply.rr, reply.ar = [], []
            reply.header.tc = 1
            packed = reply.pack()
        return packed

    @staticmethod
    def _udp_limit(request: DNSRecord) -> int:
        for rr in request.ar:
            if rr.rtype == QTYPE.OPT:
                return max(512, int(rr.rclass))
        return 512


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _serve_tcp(
    server: DNSServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    server.writers.add(writer)
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        try:
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = server.answer(await reader.readexactly(size), "tcp")
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        finally:
            server.writers.discard(writer)
            writer.close()


@contextlib.asynccontextmanager
async def dns_server() -> AsyncIterator[DNSServer]:
    """A DNSServer on 127.0.0.1, UDP and TCP on one port chosen by the system."""
    loop = asyncio.get_running_loop()
    server = DNSServer()
    for _attempt in range(20):  # the UDP port may be taken for TCP: then another one
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(server), local_addr=("127.0.0.1", 0)
        )
        port = udp.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(
                lambda r, w: _serve_tcp(server, r, w), "127.0.0.1", port
            )
        except OSError:
            udp.close()
            continue
        break
    else:
        raise RuntimeError("no port free for both UDP and TCP")
    server.port = port
    try:
        yield server
    finally:
        udp.close()
        tcp.close()
        for writer in list(server.writers):
            writer.close()
        await tcp.wait_closed()
