"""A TCP proxy that adds a fixed round-trip time: an independent way to emulate network latency.

Every byte read on one side is written to the other side ``rtt_ms / 2`` later, in order, in each direction; a
round trip through the proxy therefore costs ``rtt_ms`` more, whatever the protocol and whoever counts it.
STARTTLS passes through untouched (it is only bytes to the proxy), so the client checks the server's certificate
against the host it connects to: connect to ``127.0.0.1`` (the proxy listens there; the sandbox certificate names
``localhost`` and ``127.0.0.1``, and so does the one the Postfix harness is given).

The delay is per chunk read, not per byte and with no bandwidth limit: what a client pipelines reaches the
server together, ``rtt_ms / 2`` later, as it would over a long but fat link.

Run it on its own (the benchmark starts it as a child process, so it shares no GIL with the client measured)::

    python benchmarks/delay_proxy.py --upstream 127.0.0.1:2525 --rtt-ms 20
    # prints "listening 127.0.0.1 PORT" once it accepts connections
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from types import TracebackType


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk ``delay`` seconds after it was read, in order; then close the write side."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while chunk := await reader.read(65536):
                queue.put_nowait((time.monotonic() + delay, chunk))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait((time.monotonic() + delay, b""))

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()

    reading = asyncio.ensure_future(read())
    try:
        await write()
    except (ConnectionError, OSError):
        reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve(upstream_host: str, upstream_port: int, rtt_ms: float, listen_host: str, listen_port: int) -> None:
    delay = rtt_ms / 2000

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError:
            client_writer.close()
            return
        _nodelay(client_writer)
        _nodelay(server_writer)
        await asyncio.gather(
            _pump(client_reader, server_writer, delay),
            _pump(server_reader, client_writer, delay),
            return_exceptions=True,
        )
        for writer in (client_writer, server_writer):
            writer.close()

    server = await asyncio.start_server(handle, listen_host, listen_port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {listen_host} {port}", flush=True)
    async with server:
        await server.serve_forever()


class DelayProxy:
    """Run :func:`serve` in a child process; a context manager. ``port`` is where clients connect (on ``host``)."""

    host = "127.0.0.1"

    def __init__(self, upstream_host: str, upstream_port: int, rtt_ms: float) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rtt_ms = rtt_ms
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> DelayProxy:
        command = [sys.executable, __file__, "--upstream", f"{self.upstream[0]}:{self.upstream[1]}"]
        command += ["--rtt-ms", str(self.rtt_ms), "--listen", self.host]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline().split()
        if len(line) != 3 or line[0] != "listening":
            self.__exit__(None, None, None)
            raise RuntimeError(f"The delay proxy did not start (it printed {line!r}).")
        self.port = int(line[2])
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round-trip time to add, ms (half each way)")
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one, printed)")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, int(port), args.rtt_ms, args.listen, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
