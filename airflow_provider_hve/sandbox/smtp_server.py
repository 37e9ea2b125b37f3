"""The SMTP side of the sandbox: an aiosmtpd server that behaves like HVE.

STARTTLS, then ``AUTH XOAUTH2`` with a sandbox token, then MAIL/RCPT/DATA under HVE's
rules (send as the HVE account only, accepted domains only, 50 recipients, 10 MB), with
HVE's reply codes. Everything received is recorded for tests.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime as dt
import itertools
import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from airflow_provider_hve.sandbox.directory import MAIL_SEND, Directory
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

# aiosmtpd words its size refusals its own way; HVE clients expect Exchange's text.
_DATA_TOO_BIG = "552 Error: Too much mail data"
_REPLY_REWRITES = {
    _DATA_TOO_BIG: TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
}


class HveSmtp(SMTP):
    """One SMTP connection: aiosmtpd's protocol with HVE's line limits and replies."""

    line_length_limit = LONG_LINE

    def __init__(self, handler: HveHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        # aiosmtpd clears the class-level dict in __init__, so set an instance one afterwards.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.command_size_limits["AUTH"] = LONG_LINE
        self.hve_handler = handler
        self.record: SmtpSession | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # Called again after STARTTLS: the record spans the whole connection.
        if self.record is None:
            assert self.session is not None
            self.record = self.hve_handler.new_session(self.session.peer)

    def connection_lost(self, error: Exception | None) -> None:
        if self.record is not None:
            self.record.closed = True
        super().connection_lost(error)

    async def smtp_STARTTLS(self, arg: str) -> None:
        await super().smtp_STARTTLS(arg)
        if self.record is not None and self._tls_protocol is not None:
            self.record.starttls = True

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status in _REPLY_REWRITES:
            rewritten = _REPLY_REWRITES[status]
            # Only the DATA refusal belongs to a recorded transaction; SIZE= is refused before MAIL is.
            if status == _DATA_TOO_BIG and self.record is not None and self.record.transactions:
                self.record.transactions[-1].data_reply = rewritten
            await super().push(rewritten)
            return
        await super().push(status)

    async def read_auth_continuation(self) -> str:
        """Send an empty ``334`` challenge and return the client's raw answer line."""
        await super().push("334 ")
        line = await self._reader.readline()
        return line.decode("ascii", errors="replace").rstrip("\r\n")


class HveHandler:
    """aiosmtpd handler: XOAUTH2 checks, HVE's sending rules, the mailbox folder.

    :param directory: accounts, allowed apps and accepted domains
    :param issuer: verifies the access tokens
    :param mailbox_dir: where accepted messages are written
    """

    def __init__(self, directory: Directory, issuer: TokenIssuer, mailbox_dir: Path) -> None:
        self.directory = directory
        self.issuer = issuer
        self.mailbox_dir = mailbox_dir
        self.sessions: RecordList[SmtpSession] = RecordList()
        self.messages: RecordList[DeliveredMessage] = RecordList()
        self._session_ids = itertools.count(1)
        self._message_numbers = itertools.count(len(list(mailbox_dir.glob("*.eml"))) + 1)
        self._forced_auth_replies: collections.deque[str] = collections.deque()
        self._listed: set[int] = set()
        self._lock = threading.Lock()

    def new_session(self, peer: Any) -> SmtpSession:
        """Create the record of a new connection; it is listed once the client speaks."""
        return SmtpSession(session_id=next(self._session_ids), peer=tuple(peer) if peer else None)

    def force_auth_replies(self, reply: str, count: int) -> None:
        """Answer the next ``count`` AUTH attempts with ``reply`` whatever the token."""
        with self._lock:
            self._forced_auth_replies.extend([reply] * count)

    def clear_forced_replies(self) -> None:
        """Drop pending forced AUTH replies."""
        with self._lock:
            self._forced_auth_replies.clear()

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
        return responses

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
        elif address.lower() != str(session.auth_data).lower():
            reply = SEND_AS_DENIED
        else:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            reply = "250 2.1.0 Sender OK"
        record.transactions.append(Transaction(mail_from=address, mail_from_reply=reply))
        return reply

    async def handle_RCPT(
        self, server: HveSmtp, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        record = self._record(server)
        if not self.directory.accepts(address):
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
        data = envelope.original_content or b""
        if not _from_header_is(data, session.auth_data):
            if record.transactions:
                record.transactions[-1].data_reply = SEND_AS_DENIED
            return SEND_AS_DENIED
        number = next(self._message_numbers)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.mailbox_dir / f"{number:04d}-{stamp}.eml"
        path.write_bytes(data)
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
    """

    def __init__(
        self,
        handler: HveHandler,
        port: int,
        tls_context: ssl.SSLContext,
        *,
        starttls: bool = True,
        auth_in_clear: bool = False,
    ) -> None:
        self.handler = handler
        self.port = port
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
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            data_size_limit=MAX_MESSAGE_SIZE,
            enable_SMTPUTF8=False,
        )

    def start(self) -> None:
        """Start the server thread."""
        self._controller.start()

    def stop(self) -> None:
        """Stop the server thread and release the port."""
        self._controller.stop()

    def fail_next_auth(self, reply: str = AUTH_EXPIRES_SOON, count: int = 1) -> None:
        """Answer the next ``count`` AUTH attempts with ``reply``, whatever the token.

        :param reply: the full SMTP reply line, e.g. ``"535 5.7.3 Authentication unsuccessful"``
        :param count: how many attempts to refuse
        """
        self.handler.force_auth_replies(reply, count)

    def reset_faults(self) -> None:
        """Undo every fault switch still pending."""
        self.handler.clear_forced_replies()
