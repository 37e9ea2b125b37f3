"""Session set-up (greeting, EHLO, STARTTLS, AUTH) through smtplib, with every reply bounded.

smtplib reads replies with ``file.readline()``: its ``timeout`` applies to each read, not to a reply, and it
keeps any number of ``250-`` lines. A server (or anyone on the path before STARTTLS) that answers EHLO with
continuation lines that never end grew a client by 762 MB in one second, and one such line per second held a
worker for as long as the server liked. :class:`BoundedSMTP` reads replies with
:class:`~airflow_provider_hve.transport.replies.ReplyParser` instead: at most its limits per reply, and each
reply within the connection's ``timeout`` of wall-clock time.
"""

from __future__ import annotations

import logging
import smtplib
import time
from collections import deque
from typing import Any

from airflow_provider_hve.transport.replies import ProtocolViolation, Reply, ReplyParser

log = logging.getLogger(__name__)

RECV_BYTES = 16 * 1024
"""Bytes asked of the socket per read: the most a read can add beyond the parser's limits."""
_VERBS = frozenset({"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT"})


class ReplyBoundError(smtplib.SMTPServerDisconnected):
    """
    A reply broke a bound (too long, malformed, or not finished within the deadline); the connection is closed.

    :param awaiting: what was being read (``"its greeting"``, ``"its reply to EHLO"``, ``"a reply"``).
    :param problem: what the server sent (``"a reply of more than 100 lines"``).
    """

    def __init__(self, awaiting: str, problem: str) -> None:
        super().__init__(f"at {awaiting}, the server sent {problem}")
        self.awaiting = awaiting
        self.problem = problem


class BoundedSMTP(smtplib.SMTP):
    """
    :class:`smtplib.SMTP` whose :meth:`getreply` is bounded in lines, bytes and wall-clock time.

    Each reply must arrive whole within ``timeout`` seconds of the call that waits for it (no deadline if
    ``timeout`` is not given). Replies that arrive together (pipelining) are kept, in order, for the next
    calls. Whatever the server sent before the TLS handshake is dropped at STARTTLS (RFC 3207: a command
    injection defence). :meth:`take_buffered` hands the unread bytes to a reader that takes the socket over.

    Example::

        smtp = BoundedSMTP("smtp.hve.mx.microsoft", 587, timeout=30, local_hostname="client.example")
        smtp.ehlo()
    """

    def __init__(self, *args: Any, parser_limits: dict[str, int] | None = None, **kwargs: Any) -> None:
        self._limits = parser_limits or {}
        self._parser = ReplyParser(**self._limits)
        self._replies: deque[Reply] = deque()
        self._awaiting = "its greeting"
        self._putting: str | None = None
        super().__init__(*args, **kwargs)  # connects and reads the greeting when given a host

    def connect(self, host: str = "localhost", port: int = 0, source_address: Any = None) -> tuple[int, bytes]:
        self._forget_buffered()
        self._awaiting = "its greeting"
        return super().connect(host, port, source_address)

    def putcmd(self, cmd: str, args: str = "") -> None:
        verb = cmd.split(" ", 1)[0].upper()
        # AUTH's continuation lines (a base64 response) are no verb: they keep the label "AUTH", never show.
        self._putting = f"its reply to {verb}" if verb in _VERBS else self._awaiting
        try:
            super().putcmd(cmd, args)
        finally:
            self._putting = None

    def send(self, s: Any) -> None:
        # Commands written directly (a pipeline's batch) are not named in errors: "a reply".
        self._awaiting = self._putting or "a reply"
        super().send(s)

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        try:
            return super().starttls(*args, **kwargs)
        finally:
            # Anything after the 220 arrived before TLS: from anyone on the path. Never read as a reply.
            dropped = self._forget_buffered()
            if dropped:
                log.warning("Dropped %d bytes the SMTP server sent after its reply to STARTTLS (RFC 3207).", dropped)

    def close(self) -> None:
        self._forget_buffered()
        super().close()

    def getreply(self) -> tuple[int, bytes]:
        """Return the next reply as smtplib does: ``(code, text lines joined with b"\\n")``."""
        if not self._replies:
            self._receive_reply()
        reply = self._replies.popleft()
        return reply.code, reply.text.encode("utf-8", "surrogateescape")

    def take_buffered(self) -> bytes:
        """
        Return the bytes received but not yet returned by :meth:`getreply`, and forget them.

        For a loop that reads the socket itself after AUTH: feed these to its own parser first, then what it
        reads. :meth:`getreply` must not be called after that.
        """
        held = b"".join(line.encode("utf-8", "surrogateescape") + b"\r\n" for r in self._replies for line in r.lines)
        self._replies.clear()
        return held + self._parser.take_buffered()

    def _forget_buffered(self) -> int:
        dropped = len(self.take_buffered())
        self._parser = ReplyParser(**self._limits)
        return dropped

    def _receive_reply(self) -> None:
        """Read until at least one reply is complete, within the deadline and the parser's limits."""
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        deadline = None if timeout is None else time.monotonic() + timeout
        received = 0
        while not self._replies:
            sock = self.sock
            if sock is None:
                raise smtplib.SMTPServerDisconnected("please run connect() first")
            try:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(left)
                data = sock.recv(RECV_BYTES)
                self._replies.extend(self._parser.feed(data) if data else ())
            except TimeoutError:
                problem = self._unfinished(received, timeout)
                self.close()
                raise ReplyBoundError(self._awaiting, problem) from None
            except ProtocolViolation as exc:
                self.close()
                raise ReplyBoundError(self._awaiting, str(exc)) from None
            except OSError as exc:
                self.close()
                raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {exc}") from exc
            finally:
                if deadline is not None and self.sock is sock:
                    sock.settimeout(timeout)
            if not data:
                self._closed_by_server()
            received += len(data)

    def _closed_by_server(self) -> None:
        try:
            self._parser.receive_eof()
        except ProtocolViolation as exc:
            self.close()
            raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {exc}") from None
        self.close()
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")

    def _unfinished(self, received: int, timeout: float | None) -> str:
        lines = self._parser.pending_lines
        return (
            f"{lines} line{'s' if lines != 1 else ''} ({received} bytes) without ending the reply within {timeout:g} s"
        )
