"""What the sandbox saw: token requests, SMTP sessions, delivered messages.

Tests assert on these records instead of on mock calls, so every field holds what
arrived on the wire (form fields as posted, AUTH lines as sent, message bytes as received).
"""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class RecordList(Generic[T]):
    """A list appended to by server threads and read by the test thread.

    Reads return snapshots, so a test iterating over it never races a server append.
    """

    def __init__(self) -> None:
        self._items: list[T] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def append(self, item: T) -> None:
        """Add one record and wake anyone waiting in :meth:`wait_for`."""
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._items.clear()

    def snapshot(self) -> list[T]:
        """Return a copy of the records so far."""
        with self._lock:
            return list(self._items)

    def wait_for(self, count: int, timeout: float) -> list[T]:
        """Block until at least ``count`` records exist or ``timeout`` seconds pass.

        :param count: how many records to wait for
        :param timeout: seconds to wait at most
        :return: a snapshot of the records, however many arrived
        """
        with self._changed:
            self._changed.wait_for(lambda: len(self._items) >= count, timeout=timeout)
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __getitem__(self, index: int) -> T:
        with self._lock:
            return self._items[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self.snapshot())

    def __repr__(self) -> str:
        return f"RecordList({self.snapshot()!r})"


@dataclass
class TokenRequest:
    """One HTTP request to the sandbox's Entra endpoints.

    ``form`` holds the posted fields exactly as received (secrets included: this is a
    test double, and tests need to see what the client sent).
    """

    method: str
    path: str
    tenant: str | None
    grant_type: str | None
    form: dict[str, str]
    client_request_id: str | None
    status: int = 0
    error: str | None = None
    error_code: int | None = None


@dataclass
class AuthAttempt:
    """One SMTP AUTH exchange.

    ``client_lines`` are the raw lines the client sent, starting with the AUTH command
    itself; a two-step exchange has two lines.
    """

    mechanism: str
    client_lines: list[str]
    two_step: bool
    user: str | None = None
    token: str | None = None
    reply: str = ""
    success: bool = False
    reason: str | None = None

    @property
    def initial_response(self) -> str | None:
        """Return the base64 XOAUTH2 blob however it was sent (one or two steps)."""
        if self.two_step:
            return self.client_lines[1] if len(self.client_lines) > 1 else None
        parts = self.client_lines[0].split()
        return parts[2] if len(parts) > 2 else None


@dataclass
class Transaction:
    """One MAIL FROM ... DATA transaction; replies are kept per command."""

    mail_from: str
    mail_from_reply: str
    rcpt_tos: list[str] = field(default_factory=list)
    rcpt_replies: list[tuple[str, str]] = field(default_factory=list)
    data_reply: str | None = None
    mail_options: list[str] = field(default_factory=list)
    """The parameters after ``MAIL FROM:<...>`` as received (upper case): ``SIZE=...``, ``BODY=8BITMIME``."""
    bdat_chunks: int = 0
    """How many ``BDAT`` chunks carried the content (0: it came by DATA, or not at all)."""


@dataclass
class SmtpSession:
    """One SMTP connection from accept to close.

    ``round_trips`` counts the times the server finished a reply while the client had sent nothing
    further: the client was then waiting for the server, so on a real network each one costs a full
    round-trip time. The greeting, ``334`` and ``354`` count like any other reply; the replies to a
    pipelined batch count once (only the last one finds the client waiting); a reply after which the
    server hangs up always counts. ``commands`` counts the command lines read (the ``EHLO``, ``MAIL``,
    ``DATA``... lines; neither the message content nor the answer to a ``334`` challenge).
    """

    session_id: int
    peer: tuple[str, int] | None
    starttls: bool = False
    ehlo_names: list[str] = field(default_factory=list)
    auth_attempts: list[AuthAttempt] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    authenticated_as: str | None = None
    closed: bool = False
    quit: bool = False
    """The client said QUIT (rather than just closing the connection)."""
    timed_out: bool = False
    """The server closed it after ``idle_timeout`` without a command (``451 4.7.0 Timeout ...``)."""
    round_trips: int = 0
    commands: int = 0


@dataclass
class DeliveredMessage:
    """A message the sandbox accepted, as it was written to the mailbox folder."""

    path: Path
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    session_id: int

    @property
    def message(self) -> EmailMessage:
        """Parse :attr:`data` with the modern email API; UTF-8 headers (RFC 6532, sent with SMTPUTF8) as text."""
        head = self.data.split(b"\r\n\r\n", 1)[0]
        if head.isascii():
            return cast(EmailMessage, email.message_from_bytes(self.data, policy=email.policy.default))
        # The bytes parser reads headers as ASCII (non-ASCII turns into surrogates): read the message as UTF-8 text.
        text = self.data.decode("utf-8", errors="surrogateescape")
        return cast(EmailMessage, email.message_from_string(text, policy=email.policy.default))


@dataclass(frozen=True)
class SandboxStats:
    """Counters a benchmark reads, since the last :meth:`~.core.HveSandbox.reset_records`.

    Plain integers, so the record crosses a process boundary (see :mod:`.process`) unchanged.
    """

    messages: int
    """Messages accepted (``250`` after DATA)."""
    token_posts: int
    """POST requests to the token endpoint."""
    smtp_sessions: int
    """SMTP connections that sent at least one command."""
    smtp_round_trips: int
    """Sum of :attr:`SmtpSession.round_trips`."""
    smtp_commands: int
    """Sum of :attr:`SmtpSession.commands`."""
