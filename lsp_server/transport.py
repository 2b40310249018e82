"""How the server talks: LSP frames over stdio, or over TCP on the loopback interface only.

pygls' reader takes only a header line that is exactly `Content-Length: N\\r\\n`. After a frame whose length was
wrong, the rest of that body runs into the next header line and pygls would lose every later message; the readers
here cut such a line back to its `Content-Length:`, so the next frame is read again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

from pygls.io_ import run_async

if TYPE_CHECKING:
    from .server import TinymorphServer

log = logging.getLogger(__name__)

HEADER = b"Content-Length: "


def resync(line: bytes) -> bytes:
    """A header line with the tail of a mis-framed body cut off its front."""
    at = line.rfind(HEADER)
    return line[at:] if at > 0 else line


class ResyncingStdin:
    """stdin for pygls' stdio reader (which calls `readline` and `read` in a thread)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def readline(self) -> bytes:
        return resync(self.stream.readline())

    def read(self, n: int) -> bytes:
        return bytes(self.stream.read(n))


class ResyncingStream:
    """An asyncio stream reader for pygls' reader (TCP)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def readline(self) -> bytes:
        return resync(await self.reader.readline())

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:  # the client left mid-frame
            return exc.partial


def serve_stdio(server: TinymorphServer) -> None:
    server.start_io(stdin=ResyncingStdin(sys.stdin.buffer))  # type: ignore[arg-type]  # readline and read suffice


def serve_tcp(server: TinymorphServer, host: str, port: int) -> None:
    """Serve one client on `host:port` (a loopback address: anyone who can reach the port could read the
    writer's documents); say where on stderr. The server ends when that client leaves."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"tinymorph serves TCP on a loopback address only, not {host}")
    stop = asyncio.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.protocol.writer is not None:  # one editor per server
            writer.close()
            return
        server.protocol.set_writer(writer)
        try:
            await run_async(stop_event=server._stop_event, reader=ResyncingStream(reader),  # type: ignore[arg-type]
                            protocol=server.protocol, logger=log, error_handler=server.report_server_error)
        finally:
            stop.set()

    async def listen() -> None:
        tcp = await asyncio.start_server(connection, host, port)
        where = ", ".join(f"{name[0]}:{name[1]}" for name in (s.getsockname() for s in tcp.sockets))
        sys.stderr.write(f"tinymorph: listening on {where} (loopback only: this machine's programs can connect, "
                         f"no other machine can)\n")
        sys.stderr.flush()
        async with tcp:
            await stop.wait()

    server._stop_event = threading.Event()
    try:
        asyncio.run(listen())
    finally:
        server.shutdown()
