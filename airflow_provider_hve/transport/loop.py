"""
The socket loop around the reply queue: the only I/O of the transport.

It writes what :meth:`~airflow_provider_hve.transport.queue.ReplyQueue.bytes_to_write` gives, and reads whatever
has arrived whenever it runs (``selectors``, non-blocking reads), feeding it to the queue. Waiting for a reply
has a wall-clock deadline: the connection's ``timeout`` from the last write or the last complete reply, however
the server dribbles bytes meanwhile; past it the connection is broken (:class:`HveConnectionError`, naming the
server and the connection).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_provider_hve.transport.queue import ReplyQueue, Settled
from airflow_provider_hve.transport.transactions import Transaction

if TYPE_CHECKING:
    import smtplib

IDLE_PROBE_SECONDS = 5.0
"""A session quiet for this long is checked with ``NOOP`` before anything is handed over (see ``probe_if_idle``)."""
DEFAULT_TIMEOUT = 30.0
"""The deadline for a reply when neither the caller nor the ``smtplib.SMTP`` gives one."""
READ_SIZE = 65536
WRITE_SIZE = 16384
"""Bytes written per step: at most one TLS record, retried whole when the socket cannot take it."""
LAST_WRITE = "hve_last_write"


class SocketLoop:
    """
    Write and read one authenticated SMTP connection for a :class:`ReplyQueue`.

    :param smtp: the connection, after STARTTLS, EHLO and AUTH (its socket is used directly).
    :param queue: the protocol state.
    :param timeout: seconds to wait for a reply.
    :param server: the server's name, for error messages.
    :param on_settled: called with the transactions each read settled, and when (``time.monotonic()``).
    """

    def __init__(
        self,
        smtp: smtplib.SMTP,
        queue: ReplyQueue,
        *,
        timeout: float,
        server: str,
        on_settled: Callable[[list[Settled], float], None],
    ) -> None:
        self._smtp = smtp
        self._queue = queue
        self._timeout = timeout
        self._server = server
        self._on_settled = on_settled
        self._progress = time.monotonic()  # the last write or complete reply: where the deadline runs from
        self.waited = 0.0  # seconds spent blocked on replies (what a window too small or stop-and-wait costs)
        # When the client last wrote on this connection (the server's idle clock runs from its last command): kept
        # on the smtplib object, which outlives the pipelines of one session (HveSmtpSession.send makes one each).
        if not isinstance(getattr(smtp, LAST_WRITE, None), float):
            setattr(smtp, LAST_WRITE, time.monotonic())
        if smtp.sock is not None:
            # Small pipelined writes must not wait for the peer's delayed ACK (Nagle).
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Bytes the set-up's reader (transport.setup.BoundedSMTP) received and did not return belong to us now.
        take_buffered = getattr(smtp, "take_buffered", None)
        if take_buffered is not None and (held := take_buffered()):
            self._queue.receive(held)

    def write(
        self,
        transactions: int | None = None,
        handing_over: Callable[[list[Transaction]], None] | None = None,
    ) -> list[Transaction]:
        """
        Write what the queue lets go (``transactions``: at most that many new ones); return what was written.

        ``handing_over`` is called with the transactions just before their bytes go out: replies read while they
        are written may settle them before this returns.
        """
        if not self._queue.expecting and (unasked := self._recv(0.0)):
            # Bytes while no reply is due (an unsolicited reply, the end of the connection): found before anything
            # is handed over, they break the session here; read after, they would be taken for the next replies.
            self._feed(unasked)
        data = self._queue.bytes_to_write(transactions)
        if not data:
            return []
        written = list(self._queue.just_written)
        if handing_over is not None:
            handing_over(written)
        self._send_reading(data)
        self._progress = time.monotonic()
        setattr(self._smtp, LAST_WRITE, self._progress)
        return written

    def _send_reading(self, data: bytes) -> None:
        """
        Write ``data``, reading the replies that arrive meanwhile.

        A plain ``sendall`` reads nothing until it is done: with a large window, a server that stops reading while
        it writes its replies (a threaded MTA) and a client that stops reading while it writes would wait for each
        other until the timeout. Each step (bytes written or read) must come within the connection's ``timeout``.
        """
        sock = self._smtp.sock
        if sock is None:
            raise self._queue.broken(ConnectionResetError("the connection is closed"))
        view, deadline = memoryview(data), time.monotonic() + self._timeout
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    late = TimeoutError(f"{self._server} took no bytes within {self._timeout:g} s (timed out)")
                    raise self._queue.broken(late)
                ready = {mask for _, mask in selector.select(left)}
                if any(mask & selectors.EVENT_READ for mask in ready) and (arrived := self._recv(0.0)):
                    self._feed(arrived)
                    deadline = time.monotonic() + self._timeout
                if any(mask & selectors.EVENT_WRITE for mask in ready) and (sent := self._send_some(sock, view)):
                    view = view[sent:]
                    deadline = time.monotonic() + self._timeout

    def _send_some(self, sock: socket.socket, view: memoryview) -> int:
        """Write the next chunk of ``view`` without blocking; return how many bytes went (0: not now)."""
        # The same chunk again after a refused write: TLS wants a retried write to carry the same bytes.
        chunk = view[:WRITE_SIZE]
        try:
            sock.settimeout(0.0)
            return sock.send(chunk)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return 0
        except OSError as exc:
            raise self._queue.broken(exc) from exc
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self._timeout)

    def poll(self) -> None:
        """Read and apply whatever replies have arrived, without waiting."""
        while self._queue.expecting and (data := self._recv(0.0)):
            self._feed(data)

    def wait(self, done: Callable[[], bool]) -> None:
        """Read and apply replies until ``done()``; each reply within the deadline."""
        while not done():
            if not self._queue.expecting:
                return  # nothing written is unanswered: no reply can make it true
            left = self._progress + self._timeout - time.monotonic()
            if left <= 0:
                late = TimeoutError(f"{self._server} sent no complete reply within {self._timeout:g} s (timed out)")
                raise self._queue.broken(late)
            if not (data := self._recv(0.0)):
                started = time.monotonic()
                data = self._recv(left)
                self.waited += time.monotonic() - started
            if data:
                self._feed(data)

    def probe_if_idle(self) -> None:
        """
        On a session quiet for :data:`IDLE_PROBE_SECONDS`, with no reply outstanding, check with ``NOOP`` that it is
        alive before handing anything over. A server that closed it meanwhile (Exchange: ``451 4.7.0 Timeout
        waiting for client input``, then the end of the connection) would otherwise take the next message's bytes
        and leave its outcome unknown; found here, nothing was handed over and it is sent again on a new session.
        """
        if self._queue.expecting or time.monotonic() - getattr(self._smtp, LAST_WRITE) < IDLE_PROBE_SECONDS:
            return
        self._queue.probe()
        self.write(0)
        self.wait(lambda: not self._queue.expecting)

    def abort(self) -> None:
        """Close the connection at once, without QUIT."""
        close_quietly(self._smtp)

    def _feed(self, data: bytes) -> None:
        before = self._queue.expecting
        events = self._queue.receive(data)
        now = time.monotonic()
        if self._queue.expecting < before:
            self._progress = now  # a complete reply: the deadline runs from here
        if events:
            self._on_settled(events, now)

    def _recv(self, timeout: float) -> bytes:
        """Return what arrived within ``timeout`` seconds (``b""``: nothing yet); the end of the connection raises."""
        sock = self._smtp.sock
        if sock is None:
            raise self._queue.receive_eof()
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        if timeout > 0 and not pending and not _readable(sock, timeout):
            return b""
        try:
            sock.settimeout(0.0)
            data = sock.recv(READ_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return b""
        except OSError as exc:
            raise self._queue.broken(exc) from exc
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self._timeout)
        if not data:
            raise self._queue.receive_eof()
        return data


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``sock`` to have something to read."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))


def close_quietly(smtp: smtplib.SMTP) -> None:
    """Close the socket without QUIT, ignoring errors (best effort on a broken or abandoned connection)."""
    with contextlib.suppress(Exception):
        smtp.close()


def quit_quietly(smtp: smtplib.SMTP) -> None:
    """Say QUIT and close, or just close if that fails (never raises)."""
    try:
        smtp.quit()
    except Exception:
        close_quietly(smtp)
