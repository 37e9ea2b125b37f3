"""A TCP proxy that adds a fixed round-trip time: an independent way to emulate network latency.

Every byte read on one side is written to the other side ``rtt_ms / 2`` later, in order, in each direction; a
round trip through the proxy therefore costs ``rtt_ms`` more, whatever the protocol and whoever counts it.
STARTTLS passes through untouched (it is only bytes to the proxy), so the client checks the server's certificate
against the host it connects to: connect to ``127.0.0.1`` (the proxy listens there; the sandbox certificate names
``localhost`` and ``127.0.0.1``, and so does the one the Postfix harness is given).

The delay is per chunk read, not per byte and with no bandwidth limit: what a client pipelines reaches the
server together, ``rtt_ms / 2`` later, as it would over a long but fat link.

A broken connection, on demand: with ``--reset-after SECONDS`` the first ``--resets`` connections (default 1)
are reset that long after the proxy accepted them: both sides get a TCP RST (``SO_LINGER`` 0, then close), and
whatever the proxy still held for either side (bytes "on the wire") is dropped, as when a path dies under
load. The proxy prints ``reset N`` on each; :attr:`DelayProxy.resets_done` counts them.

Run it on its own (the benchmark starts it as a child process, so it shares no GIL with the client measured)::

    python benchmarks/delay_proxy.py --upstream 127.0.0.1:2525 --rtt-ms 20
    # prints "listening 127.0.0.1 PORT" once it accepts connections
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import Any


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
    except asyncio.CancelledError:  # a reset: the bytes held are dropped
        reading.cancel()
        raise
    await asyncio.gather(reading, return_exceptions=True)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(pumps: list[asyncio.Task[None]], writers: tuple[asyncio.StreamWriter, ...], number: int) -> None:
    """Drop what the pumps hold and send a TCP RST to both sides (``SO_LINGER`` on, 0 s, then close)."""
    for pump in pumps:
        pump.cancel()
    for writer in writers:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    print(f"reset {number}", flush=True)


async def serve(
    upstream_host: str,
    upstream_port: int,
    rtt_ms: float,
    listen_host: str,
    listen_port: int,
    reset_after: float | None = None,
    resets: int = 1,
) -> None:
    delay = rtt_ms / 2000
    accepted = 0

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        number = accepted
        try:
            server_reader, server_writer = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError:
            client_writer.close()
            return
        _nodelay(client_writer)
        _nodelay(server_writer)
        pumps = [
            asyncio.ensure_future(_pump(client_reader, server_writer, delay)),
            asyncio.ensure_future(_pump(server_reader, client_writer, delay)),
        ]
        timer = None
        if reset_after is not None and number <= resets:
            writers = (client_writer, server_writer)
            timer = asyncio.get_running_loop().call_later(reset_after, _reset, pumps, writers, number)
        await asyncio.gather(*pumps, return_exceptions=True)
        if timer is not None:
            timer.cancel()
        for writer in (client_writer, server_writer):
            writer.close()

    server = await asyncio.start_server(handle, listen_host, listen_port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {listen_host} {port}", flush=True)
    async with server:
        await server.serve_forever()


class DelayProxy:
    """Run :func:`serve` in a child process; a context manager. ``port`` is where clients connect (on ``host``).

    With ``reset_after`` (seconds), the first ``resets`` connections are reset that long after they were
    accepted; :attr:`resets_done` counts the resets the proxy reported so far.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        rtt_ms: float,
        *,
        reset_after: float | None = None,
        resets: int = 1,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rtt_ms = rtt_ms
        self.reset_after = reset_after
        self.resets = resets
        self.port = 0
        self.resets_done = 0
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> DelayProxy:
        command = [sys.executable, __file__, "--upstream", f"{self.upstream[0]}:{self.upstream[1]}"]
        command += ["--rtt-ms", str(self.rtt_ms), "--listen", self.host]
        if self.reset_after is not None:
            command += ["--reset-after", str(self.reset_after), "--resets", str(self.resets)]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline().split()
        if len(line) != 3 or line[0] != "listening":
            self.__exit__(None, None, None)
            raise RuntimeError(f"The delay proxy did not start (it printed {line!r}).")
        self.port = int(line[2])
        self._reader = threading.Thread(target=self._count_resets, args=(self._process.stdout,), daemon=True)
        self._reader.start()
        return self

    def _count_resets(self, stdout: Any) -> None:
        for line in stdout:
            if line.startswith("reset "):
                self.resets_done += 1

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
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round-trip time to add, ms (half each way)")
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one, printed)")
    parser.add_argument(
        "--reset-after", type=float, default=None, help="reset a connection this many seconds after accepting it"
    )
    parser.add_argument("--resets", type=int, default=1, help="how many connections to reset, the first ones (1)")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, int(port), args.rtt_ms, args.listen, args.port, args.reset_after, args.resets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
