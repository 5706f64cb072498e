"""Connections dropped without a close frame, the way networks drop them.

``reset`` sends an RST on a connection of ours (SO_LINGER 0, then abort: no FIN, no
close frame). ``TcpRelay`` stands between clients and a proxy, as a load balancer or
a NAT does: it copies bytes both ways, passes an end of stream on as one, can reset
every connection it carries at once (``cut``), and sends new connections wherever
``target`` says at the time. With ``passing`` set it lets only that many more bytes
of the clients' through, and drops the rest: a network dying in the middle of a send.
"""

from __future__ import annotations

import asyncio
import socket
import struct


def reset(transport: asyncio.BaseTransport) -> None:
    """Reset *transport*'s TCP connection: an RST, no FIN (a process killed, a NAT's
    entry gone)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class TcpRelay:
    """A TCP relay on 127.0.0.1 to the port ``target`` (read at each new connection)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        #: Bytes from the clients still let through (None: all of them).
        self.passing: int | None = None

    async def start(self) -> int:
        """Listen; the relay's port."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       from_client: bool) -> None:
            try:
                while data := await src.read(65536):
                    if from_client and self.passing is not None:
                        data = data[:self.passing]
                        self.passing -= len(data)
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def cut(self) -> None:
        """Reset both sides of every connection carried: an RST each way."""
        for writer in self._writers:
            if not writer.transport.is_closing():
                reset(writer.transport)
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
