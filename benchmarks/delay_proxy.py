"""A TCP proxy that adds a fixed round-trip time: an independent way to emulate network latency.

Every byte read on one side is written to the other side ``rtt_ms / 2`` later, in order, in each direction; a
round trip through the proxy therefore costs ``rtt_ms`` more, whatever the protocol and whoever counts it.
STARTTLS passes through untouched (it is only bytes to the proxy), so the client checks the server's certificate
against the host it connects to: connect to ``127.0.0.1`` (the proxy listens there; the sandbox certificate names
``localhost`` and ``127.0.0.1``, and so does the one the Postfix harness is given).

The delay is per chunk read, not per byte and with no bandwidth limit: what a client pipelines reaches the
server together, ``rtt_ms / 2`` later, as it would over a long but fat link.

It is built to take little CPU from the client and the server it sits between (on a small machine they share the
cores): asyncio protocols, no task per direction; each side reads into a buffer of its own (``recv_into``), a
direction holds its chunks in a deque with their due times under one timer, and writes every chunk due at once
in one write; at 0 ms a chunk is written as soon as it is read. A side whose socket cannot take more (its send
buffer over asyncio's high-water mark) stops the other side's reading until it drains.

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
import collections
import contextlib
import socket
import struct
import subprocess
import sys
import threading
from types import TracebackType
from typing import Any

READ_SIZE = 256 * 1024  # bytes read at most at once, per side


class _Direction:
    """One direction of a proxied connection: what was read on one side, written to ``sink`` ``delay`` s later.

    Chunks wait in a deque with their due time; one timer is armed for the head, and when it fires every chunk
    then due goes out in a single write (bytes joined), in order. At 0 ms nothing is held: a chunk is written in
    the callback that read it. ``b""`` stands for the end of the stream (a half close, passed on as one).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.sink: asyncio.Transport | None = None
        self.held: collections.deque[tuple[float, bytes]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.ended = False  # the end of the stream was delivered (or the sink is gone)
        self.on_end: Any = None

    def put(self, chunk: bytes) -> None:
        if self.ended:
            return
        if self.delay <= 0 and not self.held:
            self._deliver(chunk)
            return
        due = self.loop.time() + self.delay
        self.held.append((due, chunk))
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        held = self.held
        due: list[bytes] = []
        while held and held[0][0] <= now:
            chunk = held.popleft()[1]
            if not chunk:
                if due:
                    self._deliver(b"".join(due))
                self._deliver(b"")
                return
            due.append(chunk)
        if due:
            self._deliver(due[0] if len(due) == 1 else b"".join(due))
        if held:
            self.timer = self.loop.call_at(held[0][0], self._flush)

    def _deliver(self, data: bytes) -> None:
        sink = self.sink
        if data:
            if sink is not None and not sink.is_closing():
                sink.write(data)
            return
        with contextlib.suppress(OSError):
            if sink is not None and not sink.is_closing() and sink.can_write_eof():
                sink.write_eof()
        self.drop()

    def drop(self) -> None:
        """Forget what is held (a reset, or the sink is gone) and end this direction."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.held.clear()
        if not self.ended:
            self.ended = True
            if self.on_end is not None:
                self.on_end()


class _Side(asyncio.BufferedProtocol):
    """One socket of a proxied connection: what it reads goes to ``outgoing``; ``incoming`` writes to it.

    It reads into one buffer of its own (``recv_into``), so a read costs no fresh 256 KiB allocation.
    """

    def __init__(self, outgoing: _Direction, incoming: _Direction) -> None:
        self.outgoing = outgoing
        self.incoming = incoming
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None  # the other socket of the connection: what it reads is written here
        self.buffer = memoryview(bytearray(READ_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.incoming.sink = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.outgoing.put(bytes(self.buffer[:nbytes]))

    def eof_received(self) -> bool:
        self.outgoing.put(b"")
        return True  # a half close: this side may still be written to

    def pause_writing(self) -> None:
        # Backpressure: this socket's send buffer is over asyncio's high-water mark; stop reading what fills it.
        self._peer_reading(False)

    def resume_writing(self) -> None:
        self._peer_reading(True)

    def _peer_reading(self, on: bool) -> None:
        peer = None if self.peer is None else self.peer.transport
        if peer is None or peer.is_closing():
            return
        if on:
            peer.resume_reading()
        else:
            peer.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.incoming.drop()  # nothing more reaches this side
        self.outgoing.put(b"")  # the other side sees the end (an RST from here is passed on as an orderly end)


class _Connection:
    """A client connection and its upstream one: two directions, both delayed; closed when both have ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, number: int) -> None:
        self.number = number
        self.up = _Direction(loop, delay)  # client -> server
        self.down = _Direction(loop, delay)  # server -> client
        self.up.on_end = self.down.on_end = self._ended
        self.client: _Side | None = None  # the accepted side, set when it is made
        self.server = _Side(self.down, self.up)
        self.timer: asyncio.TimerHandle | None = None

    def _ended(self) -> None:
        if self.up.ended and self.down.ended:
            if self.timer is not None:
                self.timer.cancel()
            for side in (self.client, self.server):
                if side is not None and side.transport is not None:
                    side.transport.close()

    def reset(self) -> None:
        """Drop what both directions hold and send a TCP RST to both sides (``SO_LINGER`` on, 0 s, then abort)."""
        self.timer = None
        self.up.on_end = self.down.on_end = None
        self.up.drop()
        self.down.drop()
        for side in (self.client, self.server):
            if side is None or side.transport is None:
                continue
            sock = side.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            side.transport.abort()
        print(f"reset {self.number}", flush=True)


async def serve(
    upstream_host: str,
    upstream_port: int,
    rtt_ms: float,
    listen_host: str,
    listen_port: int,
    reset_after: float | None = None,
    resets: int = 1,
) -> None:
    loop = asyncio.get_running_loop()
    delay = rtt_ms / 2000
    accepted = 0

    async def connect(connection: _Connection, client: asyncio.Transport) -> None:
        try:
            await loop.create_connection(lambda: connection.server, upstream_host, upstream_port)
        except OSError:
            client.close()
            return
        if client.is_closing():  # reset while the upstream connection was being made
            if connection.server.transport is not None:
                connection.server.transport.abort()
            return
        client.resume_reading()  # as a stream proxy would: the client is read once the upstream is there

    class Accept(_Side):
        def __init__(self) -> None:
            nonlocal accepted
            accepted += 1
            connection = _Connection(loop, delay, accepted)
            super().__init__(connection.up, connection.down)
            self.connection = connection

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            assert isinstance(transport, asyncio.Transport)
            self.connection.client = self
            self.peer, self.connection.server.peer = self.connection.server, self
            if reset_after is not None and self.connection.number <= resets:
                self.connection.timer = loop.call_later(reset_after, self.connection.reset)
            transport.pause_reading()
            tasks.add(task := loop.create_task(connect(self.connection, transport)))
            task.add_done_callback(tasks.discard)

    tasks: set[asyncio.Task[None]] = set()
    server = await loop.create_server(Accept, listen_host, listen_port)
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
