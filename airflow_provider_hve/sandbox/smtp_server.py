"""The SMTP side of the sandbox: an aiosmtpd server that behaves like HVE.

STARTTLS, then ``AUTH XOAUTH2`` with a sandbox token, then MAIL/RCPT/DATA under HVE's
rules (send as the HVE account only, accepted domains only, 50 recipients, 10 MB), with
HVE's reply codes. Everything received is recorded for tests.

The EHLO answer is Exchange Online's (see :mod:`.extensions`, which also holds BDAT and SMTPUTF8).
PIPELINING (RFC 2920) is advertised and honoured: aiosmtpd reads commands line by line from
one buffered stream, so a batch written at once is answered command by command, in order,
and ``DATA`` gets its ``354`` only when a recipient was accepted (else ``503 5.5.2``). Each
session counts its round trips (see :class:`~.records.SmtpSession`), and an optional latency
delays every reply the client has to wait for, as a WAN would (see :meth:`HveSmtp.push`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import datetime as dt
import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, AnyStr, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from airflow_provider_hve.sandbox.directory import MAIL_SEND, Directory
from airflow_provider_hve.sandbox.extensions import (
    BASIC_AUTH_DISABLED,
    EXCHANGE_SIZE,
    NEEDS_SMTPUTF8,
    SMTPUTF8_NOT_OFFERED,
    ChunkingSmtp,
    ehlo_lines,
)
from airflow_provider_hve.sandbox.faults import DisconnectPlan, StallPlan, Throttle
from airflow_provider_hve.sandbox.files import write_private
from airflow_provider_hve.sandbox.records import (
    AuthAttempt,
    DeliveredMessage,
    RecordList,
    SmtpSession,
    Transaction,
)
from airflow_provider_hve.sandbox.tokens import TokenIssuer, TokenRejected

MAX_MESSAGE_SIZE = 10 * 1024 * 1024
MAX_RECIPIENTS = 50
# HVE refuses tokens this close to expiry (seen about 8.5 minutes before; 10 is the safe figure).
EXPIRY_MARGIN = 600
# A real XOAUTH2 line carries a ~2 KB token; aiosmtpd's defaults (1001/512) would refuse it.
LONG_LINE = 64 * 1024

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.3 Authentication unsuccessful"
AUTH_MALFORMED = "501 5.5.124 Invalid XOAUTH2 auth data"
AUTH_EXPIRES_SOON = "501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon"
NOT_AUTHENTICATED = "530 5.7.57 Client not authenticated to send mail"
SEND_AS_DENIED = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
NOT_ACCEPTED_DOMAIN = "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
NEED_MAIL = "503 5.5.2 Need mail command"
NEED_RCPT = "503 5.5.2 Need rcpt command"
SERVICE_CLOSING = "421 4.3.2 Service not available, closing transmission channel"
TOO_MANY_CONNECTIONS = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
TEMPORARY_FAILURE = "451 4.3.0 Temporary server error. Please try again later"
INSUFFICIENT_RESOURCES = "452 4.3.1 Insufficient system resources"
RECIPIENT_NOT_FOUND = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
IDLE_TIMEOUT = "451 4.7.0 Timeout waiting for client input"
SUBMISSION_QUOTA_EXCEEDED = (
    "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; "
    "Failed to process message due to a permanent exception with message Cannot submit message."
)

# aiosmtpd words its size refusals its own way; HVE clients expect Exchange's text.
_DATA_TOO_BIG = "552 Error: Too much mail data"
_REPLY_REWRITES = {
    _DATA_TOO_BIG: TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    # What a pipelining client reads when its MAIL or every RCPT of the batch was refused.
    "503 Error: need MAIL command": NEED_MAIL,
    "503 Error: need RCPT command": NEED_RCPT,
}
# What throttle() and stall_after() can act on: command verbs, and "content" (the reply after a message's
# content, at the end of DATA or at BDAT ... LAST).
FAULTABLE_COMMANDS = ("EHLO", "AUTH", "MAIL", "RCPT", "DATA", "content")
# readuntil() called without a separator: aiosmtpd's command loop, and nothing else (see HveSmtp).
_COMMAND_LINE = object()


def _buffered(reader: asyncio.StreamReader) -> int:
    """Return how many received bytes ``reader`` holds that nobody has read yet."""
    # No public API tells this; aiosmtpd itself reaches into _buffer for STARTTLS.
    return len(reader._buffer)  # type: ignore[attr-defined]


class HveSmtp(ChunkingSmtp):
    """One SMTP connection: aiosmtpd's protocol with HVE's line limits and replies.

    On top of aiosmtpd it counts command lines and round trips into :attr:`record`, delays
    replies by the handler's ``latency_ms`` (see :meth:`push`) and applies the connection-level
    fault switch (:meth:`SmtpServer.disconnect_after`).
    """

    line_length_limit = LONG_LINE

    def __init__(self, handler: HveHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        # aiosmtpd clears the class-level dict in __init__, so set an instance one afterwards.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.command_size_limits["AUTH"] = LONG_LINE
        # The size this connection enforces (SmtpServer.max_message_size; 10 MB as HVE's); EHLO advertises
        # handler.advertised_size (Exchange's 157286400) instead.
        self.data_size_limit = handler.max_message_size
        self.hve_handler = handler
        self.record: SmtpSession | None = None
        # Lines of a multi-line reply (EHLO's "250-..."), written together with its last line.
        self._reply_lines: list[str] = []
        # The emulated network: encoded replies with the loop time at which they reach the wire.
        self._in_flight: collections.deque[tuple[float, bytes]] = collections.deque()
        self._in_flight_timer: asyncio.TimerHandle | None = None
        self._last_due = 0.0
        # Set for the one reply that must be on the wire before the next step (STARTTLS, QUIT).
        self._deliver_before_return = False
        self._hang_up_after_reply = False
        self._hung_up = False
        # Every command goes through the fault check; aiosmtpd dispatches from this dict.
        self._smtp_methods = {name: self._faultable(name, method) for name, method in self._smtp_methods.items()}

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super()._cb_client_connected(reader, writer)
        read_until = reader.readuntil

        async def readuntil(separator: Any = _COMMAND_LINE) -> bytes:
            if separator is not _COMMAND_LINE:
                return await read_until(separator)
            line = await read_until(b"\n")
            if self.record is not None:
                self.record.commands += 1
            return line

        # aiosmtpd reads a command with readuntil() and no argument, a DATA line with b"\r\n" and the
        # answer to a 334 with readline(), which passes b"\n": the missing argument marks a command line.
        # Counting here also counts the commands aiosmtpd refuses before any smtp_* method runs.
        reader.readuntil = readuntil  # type: ignore[method-assign]

    def _faultable(
        self, name: str, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        async def run(arg: str | None) -> None:
            if self._hung_up:
                return
            handler = self.hve_handler
            reply = handler.take_disconnect()
            if reply is not None:
                self._hang_up_after_reply = True
                await self.push(reply)
                return
            stall = handler.take_stall(name)
            if stall:
                await asyncio.sleep(stall)
                if self._hung_up or self._gone():
                    return
            reply = handler.take_throttle(name)
            if reply is not None:
                await self.push(reply)
                return
            await method(arg)

        return run

    def _reset_timeout(self, duration: float | None = None) -> None:
        # SmtpServer.idle_timeout, when set, in place of aiosmtpd's 300 s (read at each command).
        super()._reset_timeout(duration or self.hve_handler.idle_timeout)

    def _timeout_cb(self) -> None:
        # As Exchange does: a last reply nobody asked for, then the connection closes.
        transport = cast("asyncio.WriteTransport | None", self.transport)
        if transport is not None and not self._gone():
            transport.write(f"{IDLE_TIMEOUT}\r\n".encode())
        if self.record is not None:
            self.record.timed_out = True
        super()._timeout_cb()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # Called again after STARTTLS: the record spans the whole connection.
        if self.record is None:
            assert self.session is not None
            self.record = self.hve_handler.new_session(self.session.peer)
            self.hve_handler.connections.add(self)

    def _gone(self) -> bool:
        """Whether the connection is closing or lost: nothing more may be written.

        After STARTTLS, ``transport`` is the TLS layer's, which learns of a reset only a loop turn after the socket's
        own transport: writing in between makes asyncio log "socket.send() raised exception." for each reply.
        """
        if self.transport is None or self.transport.is_closing():
            return True
        below = self._original_transport
        return below is not None and below.is_closing()

    def drop(self) -> None:
        """Close the connection at once, without a reply (:meth:`SmtpServer.refuse_connections`)."""
        self._hung_up = True
        # Nothing the client had sent is read any more (a pipelined message must not be taken after the drop).
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        transport = cast("asyncio.WriteTransport | None", self.transport)
        if transport is not None:
            transport.abort()

    def connection_lost(self, error: Exception | None) -> None:
        self.hve_handler.connections.discard(self)
        if self.record is not None:
            self.record.closed = True
            self.hve_handler.session_closed(self.record)
        if self._in_flight_timer is not None:
            self._in_flight_timer.cancel()
        self._in_flight.clear()
        super().connection_lost(error)

    async def smtp_STARTTLS(self, arg: str) -> None:
        # The 220 must be written in clear text before aiosmtpd swaps the transport for TLS.
        self._deliver_before_return = True
        await super().smtp_STARTTLS(arg)
        if self.record is not None and self._tls_protocol is not None:
            self.record.starttls = True

    async def smtp_QUIT(self, arg: str) -> None:
        # aiosmtpd closes the transport right after the 221: it must be written by then.
        self._deliver_before_return = True
        if self.record is not None:
            self.record.quit = True
        await super().smtp_QUIT(arg)

    async def push(self, status: AnyStr) -> None:
        """Send one reply line through the emulated network; count the round trip it ends.

        A reply is complete at a line without a ``-`` after the code (earlier lines wait for it).
        Round trip: when a reply is complete and the reader holds nothing more from the client,
        the client is waiting for us (see :class:`~.records.SmtpSession`).

        Latency: with ``latency_ms`` set, every complete reply reaches the wire that long after
        the server produced it, without holding up the server, which goes on reading and
        answering the next commands of a pipelined batch. So the replies to a batch arrive
        together, one delay after it, and a client that waits for each reply pays one delay
        per reply, as over a WAN. The whole round-trip time sits on the reply side. A reply
        that must be on the wire before the server goes on (STARTTLS's ``220``, ``221``, and a
        reply before hanging up) is awaited instead.
        """
        if self._hung_up:
            # The channel is closing: commands the client pipelined behind the 421 get no answer.
            return
        if self._gone():
            # The client reset the connection: answering the commands it had pipelined would only make asyncio log
            # "socket.send() raised exception." once per reply.
            return
        text = status if isinstance(status, str) else status.decode("utf-8", errors="surrogateescape")
        if text in _REPLY_REWRITES:
            rewritten = _REPLY_REWRITES[text]
            # Only the DATA refusal belongs to a recorded transaction; SIZE= is refused before MAIL is.
            if text == _DATA_TOO_BIG and self.record is not None and self.record.transactions:
                self.record.transactions[-1].data_reply = rewritten
            text = rewritten
        if text[3:4] == "-":
            self._reply_lines.append(text)
            return
        reply, self._reply_lines = "\r\n".join([*self._reply_lines, text]), []
        hang_up = self._hang_up_after_reply or text.startswith("421")
        deliver_now, self._deliver_before_return = self._deliver_before_return or hang_up, False
        if (hang_up or not await self._client_has_more()) and self.record is not None:
            self.record.round_trips += 1
        delay = self.hve_handler.latency_ms / 1000
        if delay <= 0 and not self._in_flight:
            if not self._gone():  # (the round-trip check above may have let the loop run: re-checked)
                await super().push(reply)
        else:
            due = max(self.loop.time() + delay, self._last_due)
            self._last_due = due
            if deliver_now:
                await asyncio.sleep(due - self.loop.time())
                self._send_in_flight(everything=True)
                if self._gone():
                    return
                await super().push(reply)
            else:
                payload = (reply + "\r\n").encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
                self._in_flight.append((due, payload))
                if self._in_flight_timer is None:
                    self._in_flight_timer = self.loop.call_at(due, self._send_in_flight)
        if hang_up:
            self._hang_up()

    def _send_in_flight(self, everything: bool = False) -> None:
        """Write the delayed replies whose time has come, in order, and wait for the next one."""
        if self._in_flight_timer is not None:
            self._in_flight_timer.cancel()
            self._in_flight_timer = None
        now = self.loop.time()
        while self._in_flight and (everything or self._in_flight[0][0] <= now):
            _, payload = self._in_flight.popleft()
            if not self._gone():
                self._writer.write(payload)
        if self._in_flight:
            self._in_flight_timer = self.loop.call_at(self._in_flight[0][0], self._send_in_flight)

    async def _client_has_more(self) -> bool:
        """Tell whether the client already sent more than the command being answered."""
        if _buffered(self._reader):
            return True
        # Bytes already in the kernel reach the reader only once the loop polls the socket: the first
        # yield lets it poll, the second runs the read callback that the poll queued behind this task.
        # Without this a batch written in two quick send() calls would count as two round trips.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return _buffered(self._reader) > 0

    def _hang_up(self) -> None:
        self._hung_up = True
        # A closed channel answers nothing more, even commands that already arrived behind the reply.
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        if self.transport is not None:
            self.transport.close()

    async def read_auth_continuation(self) -> str:
        """Send an empty ``334`` challenge and return the client's raw answer line."""
        await self.push("334 ")
        line = await self._reader.readline()
        return line.decode("ascii", errors="replace").rstrip("\r\n")


class HveHandler:
    """aiosmtpd handler: XOAUTH2 checks, HVE's sending rules, the mailbox folder.

    The switches (:attr:`pipelining`, :attr:`latency_ms`) and the fault switches live here
    because every connection's :class:`HveSmtp` shares this one handler; they may be changed
    from any thread while the server runs.

    :param directory: accounts, allowed apps and accepted domains
    :param issuer: verifies the access tokens
    :param mailbox_dir: where accepted messages are written
    :param pipelining: advertise PIPELINING in the EHLO answer
    :param latency_ms: emulated round-trip time added to every reply the client waits for
    """

    def __init__(
        self,
        directory: Directory,
        issuer: TokenIssuer,
        mailbox_dir: Path,
        *,
        pipelining: bool = True,
        latency_ms: float = 0,
    ) -> None:
        self.directory = directory
        self.issuer = issuer
        self.mailbox_dir = mailbox_dir
        self.pipelining = pipelining
        self.latency_ms = latency_ms
        self.max_message_size = MAX_MESSAGE_SIZE
        self.advertised_size = EXCHANGE_SIZE
        self.eight_bit_mime = True
        self.chunking = True
        self.smtputf8 = True
        self.idle_timeout: float | None = None
        self.sessions: RecordList[SmtpSession] = RecordList()
        self.messages: RecordList[DeliveredMessage] = RecordList()
        self.connections: set[HveSmtp] = set()
        """The open connections (touched on the server's loop only)."""
        self._session_ids = itertools.count(1)
        self._message_numbers = itertools.count(len(list(mailbox_dir.glob("*.eml"))) + 1)
        self._forced_auth_replies: collections.deque[str] = collections.deque()
        self._refused_recipients: dict[str, str] = {}
        self._disconnect: DisconnectPlan | None = None
        self._stall: StallPlan | None = None
        self._throttles: list[Throttle] = []
        self.max_sessions_per_account: int | None = None
        self._open_sessions: dict[str, set[int]] = {}  # account -> authenticated sessions still open
        self._over_limit: set[int] = set()  # sessions that authenticated while the account was at its limit
        # Never reset with the records: disconnect_after counts from the moment it is set.
        self._accepted_total = 0
        self._listed: set[int] = set()
        self._lock = threading.Lock()

    def new_session(self, peer: Any) -> SmtpSession:
        """Create the record of a new connection; it is listed once the client speaks."""
        return SmtpSession(session_id=next(self._session_ids), peer=tuple(peer) if peer else None)

    def force_auth_replies(self, reply: str, count: int) -> None:
        """Answer the next ``count`` AUTH attempts with ``reply`` whatever the token."""
        with self._lock:
            self._forced_auth_replies.extend([reply] * count)

    def refuse_recipient(self, address: str, reply: str) -> None:
        """Answer every ``RCPT TO`` for ``address`` (any case) with ``reply``."""
        with self._lock:
            self._refused_recipients[address.lower()] = reply

    def plan_disconnect(self, messages: int, reply: str, times: int) -> None:
        """Hang up on the first command after every ``messages`` accepted messages, ``times`` times."""
        with self._lock:
            self._disconnect = DisconnectPlan(messages, times, self._accepted_total + messages, reply=reply)

    def take_disconnect(self) -> str | None:
        """Return the reply to hang up with if a planned disconnect is due now, and consume it."""
        with self._lock:
            plan = self._disconnect
            if plan is None or not plan.fire(self._accepted_total):
                return None
            if plan.remaining <= 0:
                self._disconnect = None
            return plan.reply

    def plan_stall(self, messages: int, seconds: float, command: str, times: int) -> None:
        """Delay the reply to ``command`` by ``seconds`` after every ``messages`` accepted messages, ``times`` times."""
        with self._lock:
            self._stall = StallPlan(messages, times, self._accepted_total + messages, seconds=seconds, command=command)

    def take_stall(self, command: str) -> float:
        """Return how long to hold the reply to ``command`` now (0: not at all), and consume the stall."""
        with self._lock:
            plan = self._stall
            if plan is None or plan.command != command or not plan.fire(self._accepted_total):
                return 0.0
            if plan.remaining <= 0:
                self._stall = None
            return plan.seconds

    def add_throttle(
        self, reply: str, command: str, seconds: float | None, count: int | None, after_messages: int = 0
    ) -> None:
        """Answer ``command`` with ``reply`` for ``seconds`` or ``count`` times (see :meth:`SmtpServer.throttle`)."""
        with self._lock:
            self._throttles.append(Throttle(reply, command, seconds, count, self._accepted_total + after_messages))

    def take_throttle(self, command: str) -> str | None:
        """Return the reply a throttle forces on ``command`` now, if any."""
        now = time.monotonic()
        with self._lock:
            self._throttles = [t for t in self._throttles if not t.over(now)]
            for throttle in self._throttles:
                if throttle.command == command and throttle.applies(self._accepted_total, now):
                    if throttle.remaining is not None:
                        throttle.remaining -= 1
                    return throttle.reply
        return None

    def session_authenticated(self, record: SmtpSession, account: str) -> None:
        with self._lock:
            open_now = self._open_sessions.setdefault(account.lower(), set())
            if self.max_sessions_per_account is not None and len(open_now) >= self.max_sessions_per_account:
                self._over_limit.add(record.session_id)
            open_now.add(record.session_id)

    def session_closed(self, record: SmtpSession) -> None:
        with self._lock:
            for sessions in self._open_sessions.values():
                sessions.discard(record.session_id)
            self._over_limit.discard(record.session_id)

    def over_limit(self, record: SmtpSession) -> bool:
        with self._lock:
            return record.session_id in self._over_limit

    def clear_forced_replies(self) -> None:
        """Drop every pending fault: forced replies, refused recipients, disconnects, stalls, throttles, limits."""
        with self._lock:
            self._forced_auth_replies.clear()
            self._refused_recipients.clear()
            self._disconnect = None
            self._stall = None
            self._throttles.clear()
            self.max_sessions_per_account = None
            self._over_limit.clear()
            self.max_message_size = MAX_MESSAGE_SIZE
            self.advertised_size = EXCHANGE_SIZE
            self.eight_bit_mime = True
            self.chunking = True
            self.smtputf8 = True
            self.idle_timeout = None

    def _forced_reply(self) -> str | None:
        with self._lock:
            return self._forced_auth_replies.popleft() if self._forced_auth_replies else None

    def _record(self, server: HveSmtp) -> SmtpSession:
        # The controller's own start-up probe connects and leaves silently; only sessions
        # that send a command are listed, so tests see their own connections only.
        record = server.record
        assert record is not None
        if record.session_id not in self._listed:
            self._listed.add(record.session_id)
            self.sessions.append(record)
        return record

    async def handle_EHLO(
        self, server: HveSmtp, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # With a new-style EHLO hook aiosmtpd leaves remembering the EHLO to the hook.
        session.host_name = hostname
        self._record(server).ehlo_names.append(hostname)
        auth = next((line[4:] for line in responses if line.startswith("250-AUTH ")), None)
        return ehlo_lines(
            responses[0],
            size=self.advertised_size,
            pipelining=self.pipelining,
            eight_bit_mime=self.eight_bit_mime,
            chunking=self.chunking,
            smtputf8=self.smtputf8,
            starttls="250-STARTTLS" in responses,
            auth=auth,
        )

    async def handle_HELO(self, server: HveSmtp, session: Session, envelope: Envelope, hostname: str) -> str:
        self._record(server).ehlo_names.append(hostname)
        return f"250 {server.hostname}"

    async def auth_XOAUTH2(self, server: HveSmtp, args: list[str]) -> AuthResult:
        """Check ``AUTH XOAUTH2`` in its one-step or two-step form."""
        record = self._record(server)
        attempt = AuthAttempt(mechanism="XOAUTH2", client_lines=["AUTH " + " ".join(args)], two_step=len(args) < 2)
        record.auth_attempts.append(attempt)
        if attempt.two_step:
            line = await server.read_auth_continuation()
            attempt.client_lines.append(line)
            if line.strip() == "*":
                return self._refuse(attempt, "501 5.7.0 Auth aborted", "client aborted")
            blob = line.strip()
        else:
            blob = args[1]
        forced = self._forced_reply()
        try:
            decoded = base64.b64decode(blob, validate=True).decode("utf-8")
            user_part, auth_part, *rest = decoded.split("\x01")
            if not user_part.startswith("user=") or not auth_part.startswith("auth=Bearer "):
                raise ValueError("missing user= or auth=Bearer")
            if rest != ["", ""]:
                raise ValueError("not terminated by two ^A")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            return self._refuse(attempt, forced or AUTH_MALFORMED, f"malformed: {exc}")
        attempt.user = user = user_part.removeprefix("user=")
        attempt.token = token = auth_part.removeprefix("auth=Bearer ")
        if forced:
            return self._refuse(attempt, forced, "forced by fail_next_auth")
        reply, reason = self._check_token(user, token)
        if reply != AUTH_OK:
            return self._refuse(attempt, reply, reason)
        attempt.reply, attempt.success = AUTH_OK, True
        record.authenticated_as = user
        self.session_authenticated(record, user)
        return AuthResult(success=True, auth_data=user, message=AUTH_OK)

    def _check_token(self, user: str, token: str) -> tuple[str, str]:
        try:
            claims = self.issuer.verify(token)
        except TokenRejected as exc:
            return AUTH_FAILED, str(exc)
        if claims["exp"] - time.time() < EXPIRY_MARGIN:
            return AUTH_EXPIRES_SOON, "token expires within 10 minutes"
        account = self.directory.user(user)
        if account is None or account.hve_allowed_apps is None:
            return AUTH_FAILED, f"{user} is not an HVE account"
        if "scp" in claims:
            if MAIL_SEND not in claims["scp"].split():
                return AUTH_FAILED, "delegated token lacks Mail.Send"
            if claims.get("upn", "").lower() != user.lower():
                return AUTH_FAILED, "delegated token belongs to another user"
        elif MAIL_SEND not in claims.get("roles", []):
            return AUTH_FAILED, "app token lacks the Mail.Send role"
        if claims.get("appid") not in account.hve_allowed_apps:
            return AUTH_FAILED, "app is not on the HVE account's allowed-apps list"
        return AUTH_OK, "ok"

    async def auth_LOGIN(self, server: HveSmtp, args: list[str]) -> AuthResult:
        """Refuse ``AUTH LOGIN`` after its two challenges: the sandbox knows no passwords, only tokens.

        Exchange advertises LOGIN next to XOAUTH2; where basic authentication is off it answers ``535 5.7.139``.
        """
        record = self._record(server)
        attempt = AuthAttempt(mechanism="LOGIN", client_lines=["AUTH " + " ".join(args)], two_step=len(args) < 2)
        record.auth_attempts.append(attempt)
        if len(args) < 2:
            username = await server.challenge_auth("Username:")
            if not isinstance(username, bytes):
                attempt.reason = "client aborted"
                return AuthResult(success=False, handled=True)
            attempt.user = username.decode("utf-8", errors="replace")
        else:
            attempt.user = base64.b64decode(args[1] + "==").decode("utf-8", errors="replace")
        # The password is read and dropped: it never reaches a record.
        password = await server.challenge_auth("Password:")
        if not isinstance(password, bytes):
            # challenge_auth has answered already (501).
            attempt.reason = "client aborted"
            return AuthResult(success=False, handled=True)
        return self._refuse(attempt, BASIC_AUTH_DISABLED, "basic authentication (AUTH LOGIN) is not accepted")

    @staticmethod
    def _refuse(attempt: AuthAttempt, reply: str, reason: str) -> AuthResult:
        attempt.reply, attempt.reason = reply, reason
        return AuthResult(success=False, handled=False, message=reply)

    async def handle_MAIL(
        self, server: HveSmtp, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        record = self._record(server)
        if not session.authenticated:
            reply = NOT_AUTHENTICATED
        elif "SMTPUTF8" in mail_options and not self.smtputf8:
            reply = SMTPUTF8_NOT_OFFERED
        elif not address.isascii() and "SMTPUTF8" not in mail_options:
            reply = NEEDS_SMTPUTF8
        elif address.lower() != str(session.auth_data).lower():
            reply = SEND_AS_DENIED
        elif not self.eight_bit_mime and "BODY=8BITMIME" in mail_options:
            reply = "555 5.5.4 BODY=8BITMIME not supported"
        elif self.over_limit(record):
            # Exchange's answer to more concurrent connections than the account may have.
            reply = TOO_MANY_CONNECTIONS
        else:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            reply = "250 2.1.0 Sender OK"
        record.transactions.append(Transaction(mail_from=address, mail_from_reply=reply, mail_options=mail_options))
        return reply

    async def handle_RCPT(
        self, server: HveSmtp, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        record = self._record(server)
        with self._lock:
            refused = self._refused_recipients.get(address.lower())
        if not address.isascii() and not envelope.smtp_utf8:
            reply = NEEDS_SMTPUTF8
        elif refused is not None:
            reply = refused
        elif not self.directory.accepts(address):
            reply = NOT_ACCEPTED_DOMAIN
        elif len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            reply = TOO_MANY_RECIPIENTS
        else:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            reply = "250 2.1.5 Recipient OK"
        if record.transactions:
            transaction = record.transactions[-1]
            transaction.rcpt_replies.append((address, reply))
            if reply.startswith("250"):
                transaction.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: HveSmtp, session: Session, envelope: Envelope) -> str:
        record = self._record(server)
        forced = self.take_throttle("content")
        if forced is not None:
            if record.transactions:
                record.transactions[-1].data_reply = forced
            return forced
        data = envelope.original_content or b""
        if not _from_header_is(data, session.auth_data):
            if record.transactions:
                record.transactions[-1].data_reply = SEND_AS_DENIED
            return SEND_AS_DENIED
        number = next(self._message_numbers)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.mailbox_dir / f"{number:04d}-{stamp}.eml"
        write_private(path, data)
        reply = f"250 2.0.0 OK <{number:04d}.{record.session_id}@localhost> [Hostname=localhost]"
        if record.transactions:
            record.transactions[-1].data_reply = reply
        self.messages.append(
            DeliveredMessage(
                path=path,
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                data=data,
                session_id=record.session_id,
            )
        )
        # A stalled final reply: the message is delivered, the client may give up before it hears so.
        stall = self.take_stall("content")
        with self._lock:
            self._accepted_total += 1
        if stall:
            await asyncio.sleep(stall)
        return reply


def _from_header_is(data: bytes, account: object) -> bool:
    """Tell whether the message's From header is ``account`` (Exchange refuses other senders: 5.7.60)."""
    from email.parser import BytesHeaderParser
    from email.utils import getaddresses

    headers = BytesHeaderParser().parsebytes(data)
    addresses = [addr for _, addr in getaddresses(headers.get_all("From", []))]
    return len(addresses) == 1 and isinstance(account, str) and addresses[0].lower() == account.lower()


class _LoginDataWarningFilter(logging.Filter):
    """Drop aiosmtpd 1.4's own deprecation warning, which it logs on every successful AUTH."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


class _HveController(Controller):
    """aiosmtpd's controller, building :class:`HveSmtp` instead of the stock protocol."""

    def factory(self) -> HveSmtp:
        return HveSmtp(self.handler, **self.SMTP_kwargs)


class SmtpServer:
    """The running SMTP server, with the fault switches tests use.

    :param handler: the HVE handler
    :param port: port to bind on 127.0.0.1 (pick a free one first)
    :param tls_context: server TLS context for STARTTLS
    :param starttls: offer STARTTLS (off proves the client refuses plaintext)
    :param auth_in_clear: advertise and accept AUTH before TLS (proves the client refuses)
    :param pipelining: advertise PIPELINING (RFC 2920); ``None`` keeps the handler's setting
    :param latency_ms: emulated round-trip time in milliseconds; ``None`` keeps the handler's setting
    """

    def __init__(
        self,
        handler: HveHandler,
        port: int,
        tls_context: ssl.SSLContext,
        *,
        starttls: bool = True,
        auth_in_clear: bool = False,
        pipelining: bool | None = None,
        latency_ms: float | None = None,
    ) -> None:
        self.handler = handler
        self.port = port
        # refuse_connections(): the port held by a bound, non-listening socket, and the timer that ends it.
        self._placeholder: socket.socket | None = None
        self._reopen: asyncio.TimerHandle | None = None
        self._reopening: asyncio.Task[None] | None = None
        if pipelining is not None:
            self.pipelining = pipelining
        if latency_ms is not None:
            self.latency_ms = latency_ms
        # aiosmtpd logs every command line at INFO (a one-step AUTH line carries the token): keep the
        # sandbox quiet in users' task logs unless they ask for debugging.
        aiosmtpd_log = logging.getLogger("mail.log")
        if aiosmtpd_log.level == logging.NOTSET:
            aiosmtpd_log.setLevel(logging.WARNING)
        if not any(isinstance(f, _LoginDataWarningFilter) for f in aiosmtpd_log.filters):
            aiosmtpd_log.addFilter(_LoginDataWarningFilter())
        self._controller = _HveController(
            handler,
            hostname="127.0.0.1",
            port=port,
            server_hostname="localhost",
            ident="Microsoft ESMTP MAIL Service ready (HVE sandbox)",
            tls_context=tls_context if starttls else None,
            auth_require_tls=not auth_in_clear,
            auth_exclude_mechanism=["PLAIN"],
            data_size_limit=MAX_MESSAGE_SIZE,
            # Lets aiosmtpd read UTF-8 command lines; whether SMTPUTF8 is offered is the handler's switch.
            enable_SMTPUTF8=True,
        )

    def start(self) -> None:
        """Start the server thread."""
        self._controller.start()

    def stop(self) -> None:
        """Stop the server thread and release the port."""
        self._controller.stop()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    @property
    def pipelining(self) -> bool:
        """Return whether EHLO advertises PIPELINING (sessions already past EHLO keep what they saw)."""
        return self.handler.pipelining

    @pipelining.setter
    def pipelining(self, enabled: bool) -> None:
        self.handler.pipelining = enabled

    @property
    def latency_ms(self) -> float:
        """Return the emulated round-trip time in milliseconds (see :meth:`HveSmtp.push`)."""
        return self.handler.latency_ms

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"latency_ms must be >= 0, not {value!r}.")
        self.handler.latency_ms = value

    @property
    def max_message_size(self) -> int:
        """Return the message size new connections enforce (``552 5.3.4`` to a larger ``MAIL FROM SIZE=`` or content).

        HVE's 10 MB by default, while EHLO advertises Exchange's ``SIZE 157286400`` (:attr:`advertised_size`).
        Setting it also sets :attr:`advertised_size`, to act like a relay that advertises its lower limit
        (a Postfix at its 10,240,000 bytes default, say). Connections already open keep theirs.
        :meth:`reset_faults` restores both.
        """
        return self.handler.max_message_size

    @max_message_size.setter
    def max_message_size(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"max_message_size must be >= 1, not {size!r}.")
        self.handler.max_message_size = size
        self.handler.advertised_size = size

    @property
    def advertised_size(self) -> int:
        """Return the ``SIZE`` that EHLO advertises: Exchange's 157286400 unless set (HVE still enforces 10 MB)."""
        return self.handler.advertised_size

    @advertised_size.setter
    def advertised_size(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"advertised_size must be >= 0, not {size!r}.")
        self.handler.advertised_size = size

    @property
    def idle_timeout(self) -> float | None:
        """Return the seconds a session may sit without a command before the server says :data:`IDLE_TIMEOUT` and
        closes it (``None``: aiosmtpd's 300 s). Applies to sessions from their next command; :meth:`reset_faults`
        clears it."""
        return self.handler.idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, seconds: float | None) -> None:
        if seconds is not None and seconds <= 0:
            raise ValueError(f"idle_timeout must be > 0 seconds or None, not {seconds!r}.")
        self.handler.idle_timeout = seconds

    @property
    def chunking(self) -> bool:
        """Return whether EHLO advertises ``CHUNKING`` and ``BINARYMIME`` (RFC 3030) and ``BDAT`` is accepted.

        Off, ``BDAT`` gets ``502 5.5.1`` and clients fall back to DATA. :meth:`reset_faults` turns it back on.
        """
        return self.handler.chunking

    @chunking.setter
    def chunking(self, enabled: bool) -> None:
        self.handler.chunking = enabled

    @property
    def smtputf8(self) -> bool:
        """Return whether EHLO advertises ``SMTPUTF8`` (RFC 6531); :meth:`reset_faults` turns it back on.

        Either way a non-ASCII address without the ``SMTPUTF8`` parameter on MAIL FROM gets ``553 5.6.7``;
        off, the parameter itself gets ``555 5.5.4``.
        """
        return self.handler.smtputf8

    @smtputf8.setter
    def smtputf8(self, enabled: bool) -> None:
        self.handler.smtputf8 = enabled

    @property
    def eight_bit_mime(self) -> bool:
        """Return whether EHLO advertises ``8BITMIME`` (RFC 6152); :meth:`reset_faults` turns it back on."""
        return self.handler.eight_bit_mime

    @eight_bit_mime.setter
    def eight_bit_mime(self, enabled: bool) -> None:
        self.handler.eight_bit_mime = enabled

    def fail_next_auth(self, reply: str = AUTH_EXPIRES_SOON, count: int = 1) -> None:
        """Answer the next ``count`` AUTH attempts with ``reply``, whatever the token.

        :param reply: the full SMTP reply line, e.g. ``"535 5.7.3 Authentication unsuccessful"``
        :param count: how many attempts to refuse
        """
        self.handler.force_auth_replies(reply, count)

    def fail_next_data(self, reply: str = SUBMISSION_QUOTA_EXCEEDED, count: int = 1) -> None:
        """Answer the end of DATA of the next ``count`` messages with ``reply``; they are not delivered.

        A ``421`` reply also closes the connection, as it does everywhere in this server.

        :param reply: the full SMTP reply line, e.g. :data:`SUBMISSION_QUOTA_EXCEEDED` or
            ``"451 4.3.0 Temporary failure"``
        :param count: how many messages to refuse, across all sessions
        """
        self.handler.add_throttle(reply, "content", None, count)

    def refuse_recipient(self, address: str, reply: str = RECIPIENT_NOT_FOUND) -> None:
        """Refuse every ``RCPT TO`` for ``address`` (case-insensitive) until :meth:`reset_faults`.

        :param address: the recipient address
        :param reply: the full SMTP reply line
        """
        self.handler.refuse_recipient(address, reply)

    def disconnect_after(self, messages: int, reply: str = SERVICE_CLOSING, *, times: int = 1) -> None:
        """Hang up once ``messages`` more messages have been accepted, counted across sessions.

        The first command received after that (in any session) is answered with ``reply``, then the
        connection is closed; commands already pipelined behind it get no answer. With ``times=k``
        this repeats: the next hang-up is due ``messages`` accepted messages after the previous one
        (``messages=0`` hangs up on the next ``k`` commands). A new call replaces a pending one.

        :param messages: accepted messages to let through first (0: the very next command)
        :param reply: the full SMTP reply line sent before closing
        :param times: how many hang-ups
        """
        if messages < 0 or times < 1:
            raise ValueError("disconnect_after needs messages >= 0 and times >= 1.")
        self.handler.plan_disconnect(messages, reply, times)

    def throttle(
        self,
        reply: str = TOO_MANY_CONNECTIONS,
        *,
        command: str = "MAIL",
        seconds: float | None = None,
        count: int | None = None,
        after_messages: int = 0,
    ) -> None:
        """Answer ``command`` with ``reply`` for ``seconds``, or ``count`` times, in every session.

        Throttling as HVE does it: ``432 4.3.2`` (too many concurrent connections),
        :data:`TEMPORARY_FAILURE` (``451 4.3.0``), :data:`INSUFFICIENT_RESOURCES` (``452 4.3.1``);
        a ``421`` reply also closes the connection.

        :param reply: the full SMTP reply line
        :param command: ``"MAIL"``, ``"RCPT"``, ``"DATA"``, ``"EHLO"``, ``"AUTH"`` (the command), or
            ``"content"`` (the final reply after a message's content; the message is not delivered)
        :param seconds: how long it lasts, from now
        :param count: how many replies it forces, across sessions
        :param after_messages: start once this many more messages have been accepted (the seconds count
            from then)
        """
        if (seconds is None) == (count is None) or (seconds is not None and seconds <= 0) or after_messages < 0:
            raise ValueError("throttle needs exactly one of seconds= (> 0) or count=, and after_messages >= 0.")
        if command not in FAULTABLE_COMMANDS:
            raise ValueError(f"throttle: command must be one of {', '.join(FAULTABLE_COMMANDS)}, not {command!r}.")
        if reply[:1] not in ("4", "5"):
            raise ValueError(f"throttle: reply must be a 4xx or 5xx SMTP reply line, not {reply!r}.")
        self.handler.add_throttle(reply, command, seconds, count, after_messages)

    def stall_after(self, messages: int, seconds: float, *, command: str = "content", times: int = 1) -> None:
        """Hold one reply for ``seconds`` once ``messages`` more messages have been accepted (across sessions).

        With ``command="content"`` (the default) the message is delivered first and only its ``250`` is
        late: a client that times out meanwhile does not know the message arrived, the case where a
        resend would duplicate it. With a command name (``"MAIL"``, ``"EHLO"``...) the command is answered
        late. With ``times=k`` this repeats every ``messages`` accepted messages.

        :param messages: accepted messages to let through first (0: the very next one)
        :param seconds: how long the reply is held
        :param command: which reply to hold
        :param times: how many stalls
        """
        if messages < 0 or times < 1 or seconds <= 0:
            raise ValueError("stall_after needs messages >= 0, seconds > 0 and times >= 1.")
        if command not in FAULTABLE_COMMANDS:
            raise ValueError(f"stall_after: command must be one of {', '.join(FAULTABLE_COMMANDS)}, not {command!r}.")
        self.handler.plan_stall(messages, seconds, command, times)

    def limit_sessions(self, per_account: int | None) -> None:
        """Allow at most ``per_account`` concurrent authenticated sessions per HVE account (``None``: no limit).

        A session that authenticates while the account already has that many open gets
        :data:`TOO_MANY_CONNECTIONS` (``432 4.3.2``) at every ``MAIL FROM`` until it closes.
        """
        if per_account is not None and per_account < 1:
            raise ValueError("limit_sessions needs per_account >= 1 or None.")
        self.handler.max_sessions_per_account = per_account

    def refuse_connections(self, seconds: float) -> None:
        """Be unreachable for ``seconds``, as HVE in an outage: drop every open connection and refuse new ones.

        Open connections are closed at once, without a reply (what was handed over may or may not be delivered);
        the port stops listening, so a client's connect fails with ``ECONNREFUSED``. Then the server listens on
        the same port again (the port stays bound meanwhile, so no other socket can take it). Returns once the
        port refuses. A new call while refusing counts ``seconds`` from now; :meth:`reset_faults` ends it at once.
        """
        if seconds <= 0:
            raise ValueError(f"refuse_connections needs seconds > 0, not {seconds!r}.")
        self._on_loop(self._refuse(seconds))

    @property
    def refusing_connections(self) -> bool:
        """Return whether :meth:`refuse_connections` is in force."""
        return self._placeholder is not None

    async def _refuse(self, seconds: float) -> None:
        if self._reopening is not None:  # listening again right now: let it finish, then close again
            await self._reopening
        if self._reopen is not None:
            self._reopen.cancel()
        server = self._controller.server
        if self._placeholder is None and server is not None:
            server.close()  # the listening socket is closed now (asyncio's close() is synchronous for sockets)
            placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            placeholder.bind(("127.0.0.1", self.port))  # bound, never listening: a SYN gets a reset
            self._placeholder = placeholder
        for connection in list(self.handler.connections):
            connection.drop()
        self._reopen = asyncio.get_running_loop().call_later(seconds, self._listen_again)

    def _listen_again(self) -> asyncio.Task[None] | None:
        """Start listening again (on the loop); return the task doing it, if refusing."""
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        if self._placeholder is not None and self._reopening is None:
            self._reopening = asyncio.get_running_loop().create_task(self._relisten())
        return self._reopening

    async def _relisten(self) -> None:
        try:
            # Bound while the placeholder still holds the port (both SO_REUSEADDR, neither listening yet).
            self._controller.server = await self._controller._create_server()
        finally:
            if self._placeholder is not None:
                self._placeholder.close()
                self._placeholder = None
            self._reopening = None

    async def _end_refusal(self) -> None:
        reopening = self._listen_again()
        if reopening is not None:
            await reopening

    def _on_loop(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on the server's event loop and wait for it."""
        asyncio.run_coroutine_threadsafe(work, self._controller.loop).result(timeout=30)

    def reset_faults(self) -> None:
        """Undo every fault switch (AUTH, DATA, recipients, disconnects, stalls, throttles, session limit, SIZE,
        8BITMIME, CHUNKING, SMTPUTF8, idle timeout, refused connections)."""
        self.handler.clear_forced_replies()
        if self._placeholder is not None:
            self._on_loop(self._end_refusal())
