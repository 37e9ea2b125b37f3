"""The XOAUTH2 SMTP session with HVE: connect, EHLO, STARTTLS, EHLO, AUTH XOAUTH2, send many, QUIT.

Security rules enforced here, not left to smtplib: no token is ever written to a connection that has not
completed STARTTLS with a verified certificate (smtplib would happily send AUTH in the clear), and the
certificate's host name is checked.

:meth:`HveSmtpSession.send` retries where that cannot duplicate a message: after a temporary refusal (``4xx``) it
sends again on the same session; after a connection that broke before the message was handed over it reconnects,
authenticates again and sends again; with jittered backoff, at most ``send_retries`` times (connection extra,
default 3) within :data:`SEND_RETRY_WINDOW` seconds. A message handed over without a final reply is never sent
again. A send made in :func:`~airflow_provider_hve.cancellation.cancellable` starts no further attempt once its token
is cancelled (its backoff ends at once); the attempt under way is finished. Who has the message, who is sent it
again and what the send returns or raises is decided by :class:`~airflow_provider_hve.transport.SendAccount`, fed
each attempt's outcome; this module attempts and backs off.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses
from typing import TYPE_CHECKING

from airflow_provider_hve import cancellation
from airflow_provider_hve.auth import mask
from airflow_provider_hve.diagnostics import describe_os_error, describe_smtp_auth_reply, smtp_reply_hint
from airflow_provider_hve.exceptions import (
    HveAuthError,
    HveCancelledError,
    HveConfigError,
    HveConnectionError,
    HveError,
    HveSendError,
)
from airflow_provider_hve.message import wire_bytes
from airflow_provider_hve.transport import (
    Pipeline,
    SendAccount,
    SendAgain,
    SendResult,
    check_envelope_address,
    close_quietly,
    quit_quietly,
)

if TYPE_CHECKING:
    import smtplib

    from airflow_provider_hve.auth import AccessToken
    from airflow_provider_hve.connection import HveConnectionConfig
    from airflow_provider_hve.transport import Delivery

log = logging.getLogger(__name__)

TokenSource = Callable[..., "AccessToken"]

SEND_RETRY_WINDOW = 60.0
"""No retry of :meth:`HveSmtpSession.send` starts later than this many seconds after its first attempt."""
RETRY_DELAY = 1.0
"""First backoff of a retry, in seconds; doubled for each further one, and jittered down to half."""
THROTTLED_RETRY_DELAY = 4.0
"""First backoff after HVE said it is busy (``421``, ``432``, ``4.3.2``): it asked for fewer connections."""
# A reply code where a reply starts (": 421 ...", "addr: 432 4.3.2 ..."), not any number in the text (a
# Message-ID, a host name); or the enhanced code 4.3.2 (too many connections, server busy).
_THROTTLED = re.compile(r"(?:^|[:;] )(?:421|432)(?:[ -]|$)|(?<![\w.-])4\.3\.2(?![\w.-])")
# Stand-ins for a test's clock; nothing else replaces them.
_sleep = time.sleep
_clock = time.monotonic


@dataclass
class SendProgress:
    """
    What a :meth:`HveSmtpSession.send` has done so far, readable after it was interrupted by an exception that is
    not the provider's (the task's ``execution_timeout``, SIGTERM), which carries no ``accepted`` or
    ``in_flight``: a caller that keeps a delivery record reads it to know what the next try may send.
    """

    handing_over: bool = False
    """A transaction was being written or its reply awaited: the message may have reached HVE."""
    accepted: list[str] = field(default_factory=list)
    """Recipients HVE accepted the message for, by earlier attempts or batches."""


def xoauth2_string(account: str, token: str) -> str:
    """Return the SASL XOAUTH2 initial response, before base64: ``user=...^Aauth=Bearer ...^A^A``."""
    return f"user={account}\x01auth=Bearer {token}\x01\x01"


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Return a client TLS context: system CAs plus ``ca_bundle``, host names checked, TLS 1.2 or newer."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class HveSmtpSession:
    """
    One authenticated SMTP connection to HVE that sends many messages.

    :param config: the validated connection.
    :param get_token: returns an :class:`~airflow_provider_hve.auth.AccessToken`; called with
        ``force_refresh=True`` once if HVE answers ``501 5.5.127`` (token about to expire).

    Example::

        with HveSmtpSession(config, provider.get_token) as session:
            result = session.send(message, ["a@contoso.com"])
    """

    def __init__(self, config: HveConnectionConfig, get_token: TokenSource) -> None:
        self.config = config
        self._get_token = get_token
        self._smtp: smtplib.SMTP | None = None

    def __enter__(self) -> HveSmtpSession:
        if self._smtp is None:  # a session from HveHook.get_conn() is open already
            self.open()
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        # After an exception (a timeout, SIGTERM) the session may be in the middle of a message: a QUIT would be read
        # as its content and wait for the timeout. Dropped instead, as HveHook.smtp_session() does.
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    @property
    def is_open(self) -> bool:
        return self._smtp is not None

    def open(self) -> None:
        """Connect, secure the connection with STARTTLS and authenticate with XOAUTH2."""
        from airflow_provider_hve.transport.setup import ReplyBoundError

        config = self.config
        where = f"{config.host}:{config.port} (connection {config.conn_id!r})"
        # Token first: an Entra problem is reported as such, and no SMTP connection idles meanwhile.
        token = self._get_token()
        try:
            self._smtp = self._set_up(token, where)
        except ReplyBoundError as exc:
            # One translation for the greeting, EHLO, STARTTLS and AUTH: the reply broke a bound.
            untouched = "" if exc.awaiting.endswith("AUTH") else "; no token was sent"
            raise HveConnectionError(
                f"Gave up on the SMTP server {where} at {exc.awaiting}: it sent {exc.problem}. The connection "
                f"was closed{untouched}. A mail server does not do this: check 'host' and 'port' (HVE is "
                f"smtp.hve.mx.microsoft:587) and any proxy on the path; if the server is only slow, raise the "
                f"extra 'timeout' ({config.timeout:g} s)."
            ) from exc

    def _set_up(self, token: AccessToken, where: str) -> smtplib.SMTP:
        import smtplib

        from airflow_provider_hve.transport.setup import BoundedSMTP, ReplyBoundError

        config = self.config
        try:
            # The host given here is also the name the certificate is checked against at STARTTLS. The EHLO name
            # is set once the socket is connected (a placeholder here keeps smtplib from asking DNS for this
            # machine's name, which takes seconds where DNS does not work). BoundedSMTP bounds every reply.
            smtp = BoundedSMTP(config.host, config.port, timeout=config.timeout, local_hostname="localhost")
        except ReplyBoundError:
            raise
        except smtplib.SMTPConnectError as exc:
            reply = _text(exc.smtp_error)
            raise HveConnectionError(
                f"The SMTP server {where} refused the connection: {exc.smtp_code} {reply}."
                f"{smtp_reply_hint(exc.smtp_code, reply)}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            error = _Permanent if _unknown_host(exc) else HveConnectionError
            raise error(
                f"Cannot connect to the SMTP server {where}: {describe_os_error(exc)}. Check 'host' and "
                f"'port' ({config.port}) and that this worker may open outbound connections to it."
            ) from exc
        smtp.local_hostname = ehlo_name(smtp.sock)
        try:
            self._secure(smtp, where)
            self._authenticate(smtp, token)
        except (HveAuthError, _AuthDeferred):
            # The server answered AUTH: the session is in step, so end it properly.
            quit_quietly(smtp)
            raise
        except BaseException:
            close_quietly(smtp)
            raise
        return smtp

    def close(self) -> None:
        """Say QUIT and close; never raises."""
        if self._smtp is not None:
            smtp, self._smtp = self._smtp, None
            quit_quietly(smtp)

    def discard(self) -> None:
        """Close a broken connection at once, without QUIT (it may be mid-message, or gone)."""
        if self._smtp is not None:
            smtp, self._smtp = self._smtp, None
            close_quietly(smtp)

    def pipeline(
        self, *, envelope_from: str | None = None, pipelining: bool | None = None, chunking: bool | None = None
    ) -> Pipeline:
        """
        Return a :class:`~airflow_provider_hve.transport.Pipeline` over this session, for streams of messages.

        When the server offers PIPELINING and CHUNKING it is a :class:`~airflow_provider_hve.transport.BdatPipeline`
        (a sliding window of at most the connection's ``bdat_window`` transactions); otherwise the DATA pipeline.
        Each reply is awaited at most the connection's ``timeout``.

        :param envelope_from: MAIL FROM; defaults to the HVE account.
        :param pipelining: force RFC 2920 pipelining on or off; default: what the server advertises.
        :param chunking: ``False`` keeps to DATA even when the server offers CHUNKING (RFC 3030).
        """
        if self._smtp is None:
            raise HveConnectionError(f"The HVE session for connection {self.config.conn_id!r} is not open.")
        sender = envelope_from or self.config.account
        offered = self._smtp.has_extn("pipelining") and self._smtp.has_extn("chunking")
        config = self.config
        server = f"{config.host}:{config.port}"
        if pipelining is not False and chunking is not False and offered:
            from airflow_provider_hve.transport import BdatPipeline

            return BdatPipeline(
                self._smtp,
                sender,
                conn_id=config.conn_id,
                window=config.bdat_window,
                timeout=config.timeout,
                server=server,
            )
        return Pipeline(
            self._smtp, sender, conn_id=config.conn_id, pipelining=pipelining, timeout=config.timeout, server=server
        )

    def send(
        self,
        message: EmailMessage,
        recipients: Sequence[str] | None = None,
        *,
        envelope_from: str | None = None,
        payload: bytes | None = None,
        retries: int | None = None,
        progress: SendProgress | None = None,
    ) -> SendResult:
        """
        Send one message to ``recipients`` (To, Cc and Bcc addresses: the envelope).

        Envelopes over 50 recipients are split into several transactions of the same message, so every
        recipient receives it exactly once with the headers intact. The session connects if it is not open
        (first use, or after a broken connection).

        Retried where safe, with jittered backoff, up to ``retries`` times within :data:`SEND_RETRY_WINDOW`
        seconds: recipients refused with a temporary ``4xx`` reply are sent again (only they), and a connection
        that broke before the message was handed over is opened again (new token check, new AUTH). A message
        handed over without a final reply is never sent again: HVE may have it.

        :param message: the message; ``Bcc`` and ``Resent-Bcc`` headers are removed from what is sent.
        :param recipients: envelope addresses; default: the To, Cc and Bcc addresses of ``message`` (the
            ``Resent-`` ones if it has a ``Resent-Date``), as ``smtplib.send_message`` does.
        :param envelope_from: MAIL FROM; defaults to the HVE account.
        :param payload: the message already serialised for SMTP (``OutgoingMessage.payload``).
        :param retries: how many times to send again; default: the connection's ``send_retries`` extra.
        :param progress: kept up to date while sending (:class:`SendProgress`), for a caller interrupted meanwhile.
        :return: accepted and refused recipients.
        :raises HveConfigError: a bare string as ``recipients``, or an envelope address that could break the
            SMTP command line (nothing was sent).
        :raises HveSendError: the server refused the sender, or the message for every recipient.
        :raises HveConnectionError: the connection broke and the retries are spent, or the outcome is unknown
            (the error names the Message-ID; see its ``in_flight``).
        :raises HveCancelledError: sent in :func:`~airflow_provider_hve.cancellation.cancellable` and cancelled
            before an attempt (the first one included) or during a backoff: no further attempt was made. The
            attempt under way when the token was cancelled is finished, and its outcome returned or raised.

        Whatever the error, if an earlier attempt delivered the message to some recipients, its ``accepted``
        names them (and its text says "Already accepted by HVE"): never send it to them again.
        """
        envelope = envelope_recipients(message, recipients)
        sender = envelope_from or self.config.account
        # Checked before a byte is written. An internationalised address is checked here as such; whether the
        # server offers SMTPUTF8 is known only after its EHLO, and the pipeline of each session checks that.
        for address, argument in ((sender, "envelope_from"), *((a, "recipients") for a in envelope)):
            check_envelope_address(address, argument, smtputf8=True)
        if "Bcc" in message or "Resent-Bcc" in message:
            # Envelope only: the copy sent has no Bcc (a serialised payload would still carry it).
            message = copy.copy(message)
            del message["Bcc"]
            del message["Resent-Bcc"]
            payload = None
        content = payload or wire_bytes(message)
        message_id = str(message.get("Message-ID", ""))
        retry = _Retry(self.config.send_retries if retries is None else retries, self.config.conn_id, message_id)
        progress = progress if progress is not None else SendProgress()
        # progress.accepted is the account's list: a caller interrupted meanwhile reads it.
        account = SendAccount(
            self.config.conn_id, message_id, envelope, accepted=progress.accepted, gave_up=retry.gave_up
        )
        while True:
            # Before each attempt, never during one: a message is handed over whole or not at all.
            if (token := cancellation.cancelled()) is not None:
                raise account.cancelled(token.reason)
            outcome: Delivery | HveError
            try:
                outcome = self._send_once(content, account.pending, sender, message_id, progress)
            except HveCancelledError as exc:  # while the token provider waited for Entra: nothing handed over
                raise account.cancelled(getattr(cancellation.current(), "reason", "")) from exc
            except HveConnectionError as exc:
                self.discard()  # broken, or left in the middle of a message
                outcome = exc
            except HveError as exc:  # AUTH refused on the reconnect, MAIL FROM refused...
                outcome = exc
            step = account.feed(outcome)
            if isinstance(step, SendAgain):
                if retry.again(step.cause):
                    continue
                step = account.give_up()
            if isinstance(step, SendResult):
                return step
            raise step

    def _send_once(
        self, content: bytes, recipients: Sequence[str], sender: str, message_id: str, progress: SendProgress
    ) -> Delivery:
        if self._smtp is None:
            self.open()
        pipeline = self.pipeline(envelope_from=sender)
        try:
            progress.handing_over = True  # left set if something else than the provider's errors interrupts
            (delivery,) = pipeline.submit(message_id, content, recipients, message_id) + pipeline.flush()
            progress.handing_over = False
        except (HveConnectionError, HveSendError) as exc:
            progress.handing_over = False  # its in_flight says what may have reached HVE
            # Batches of this message that HVE accepted before the break or the refused sender, whether the message
            # completed partly (``exc.completed``) or its last batch's outcome is unknown (``in_flight``).
            exc.accepted = tuple(a for d in [*exc.completed, *pipeline.in_flight] for a in d.accepted)
            if isinstance(exc, HveSendError):  # the refused batch with HVE's reply, the batches not written 451
                exc.refused.update({a: r for d in exc.completed for a, r in d.refused.items()})
            raise
        return delivery

    # -- connection set-up -----------------------------------------------------------------------------

    def _secure(self, smtp: smtplib.SMTP, where: str) -> None:
        import smtplib

        from airflow_provider_hve.transport.setup import ReplyBoundError

        try:
            _ehlo(smtp, where)
            if not smtp.has_extn("starttls"):
                # Whatever else the server offers (AUTH included), a token never goes over plain text.
                raise _Permanent(
                    f"The SMTP server {where} does not offer STARTTLS, so no token was sent. HVE always "
                    f"offers it on port 587: check 'host' and 'port', and whether a proxy strips STARTTLS."
                )
            smtp.starttls(context=tls_context(self.config.ca_bundle))
            # starttls() forgets the EHLO answer; without a new EHLO, AUTH is not advertised and a later
            # implicit EHLO resets the session (530 5.7.57 at MAIL FROM).
            _ehlo(smtp, where)
        except ssl.SSLCertVerificationError as exc:
            raise _Permanent(
                f"The TLS certificate of the SMTP server {where} failed verification "
                f"({exc.verify_message}); no token was sent. If a proxy or a private CA sits in between, put "
                f"its CA certificate in a PEM file and set extra 'ca_bundle'."
            ) from exc
        except ReplyBoundError:
            raise
        except (OSError, smtplib.SMTPException) as exc:
            raise HveConnectionError(
                f"STARTTLS with the SMTP server {where} failed: {describe_os_error(exc)}; no token was sent."
            ) from exc

    def _authenticate(self, smtp: smtplib.SMTP, token: AccessToken) -> None:
        import smtplib

        from airflow_provider_hve.transport.setup import ReplyBoundError

        mechanisms = (smtp.esmtp_features.get("auth") or "").upper().split()
        if "XOAUTH2" not in mechanisms:
            raise _Permanent(
                f"The SMTP server {self.config.host}:{self.config.port} (connection {self.config.conn_id!r}) "
                f"does not offer AUTH XOAUTH2 (it offers: {' '.join(mechanisms) or 'no AUTH'}). Check that "
                f"'host' is the HVE endpoint (smtp.hve.mx.microsoft)."
            )
        for attempt in (1, 2):
            if attempt > 1:
                token = self._get_token(force_refresh=True)
            authobject = _XOAuth2(self.config.account, token.value)
            try:
                # Two steps (AUTH XOAUTH2, 334, response), as on Microsoft's HVE OAuth page.
                smtp.auth("XOAUTH2", authobject, initial_response_ok=False)
                return
            except smtplib.SMTPAuthenticationError as exc:
                reply = _text(exc.smtp_error)
                if 400 <= exc.smtp_code < 500:
                    # 454 4.7.0, 432 4.3.2...: the credential is fine, HVE is busy; a new session may work.
                    raise _AuthDeferred(
                        f"HVE at {self.config.host}:{self.config.port} deferred AUTH XOAUTH2 (connection "
                        f"{self.config.conn_id!r}): {exc.smtp_code} {reply}.{smtp_reply_hint(exc.smtp_code, reply)} "
                        f"This is temporary: try again later."
                    ) from None
                if attempt == 1 and exc.smtp_code == 501 and "5.5.127" in reply:
                    log.info(
                        "HVE says the token expires soon (%s %s); refreshing it and retrying once.",
                        exc.smtp_code,
                        reply,
                    )
                    continue
                raise describe_smtp_auth_reply(self.config, exc.smtp_code, reply) from None
            except ReplyBoundError:
                raise
            except (OSError, smtplib.SMTPException) as exc:
                raise HveConnectionError(
                    f"The connection to {self.config.host}:{self.config.port} failed during AUTH "
                    f"(connection {self.config.conn_id!r}): {describe_os_error(exc)}"
                ) from exc
        raise HveAuthError("unreachable")  # pragma: no cover - the loop returns or raises


class _XOAuth2:
    """smtplib auth object: the XOAUTH2 response first, then an empty line after an error challenge."""

    def __init__(self, account: str, token: str) -> None:
        self._response = xoauth2_string(account, token)
        self.calls = 0
        mask(base64.b64encode(self._response.encode()).decode())

    def __call__(self, challenge: bytes | None = None) -> str:
        self.calls += 1
        if self.calls == 1:
            return self._response
        # A second 334 carries a base64 JSON error; the client must answer with an empty line and
        # read the final 535.
        return ""

    def __repr__(self) -> str:
        return "<XOAUTH2 response>"


def _ehlo(smtp: smtplib.SMTP, where: str) -> None:
    """Say EHLO; a refusal (``421`` busy...) is reported as such, not as missing extensions."""
    code, reply = smtp.ehlo()
    if code != 250:
        text = _text(reply)
        raise HveConnectionError(
            f"The SMTP server {where} answered EHLO with {code} {text}.{smtp_reply_hint(code, text)} No token was "
            f"sent; try again later."
        )


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


_FQDN = re.compile(r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9-]{0,62}")


def ehlo_name(sock: socket.socket | None) -> str:
    """
    Return the name to give in EHLO: this host's name if it is fully qualified, else the address literal of the
    connection's local end (``[10.0.0.5]``, ``[IPv6:::1]``), as RFC 5321 asks.

    A bare host name (``EHLO vm``) makes servers with ``reject_non_fqdn_helo_hostname`` (Postfix) refuse every
    recipient. No DNS is asked: it can take seconds where DNS does not work.
    """
    name = socket.gethostname()
    if _FQDN.fullmatch(name):
        return name
    try:
        address = ipaddress.ip_address(sock.getsockname()[0] if sock is not None else "127.0.0.1")
    except (OSError, ValueError):
        address = ipaddress.ip_address("127.0.0.1")
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return f"[{mapped}]" if mapped is not None else f"[IPv6:{address.compressed}]"
    return f"[{address}]"


def envelope_recipients(message: EmailMessage, recipients: Sequence[str] | None) -> list[str]:
    """
    Return the envelope recipients: ``recipients``, or the message's To, Cc and Bcc addresses.

    :raises HveConfigError: ``recipients`` is a bare string (it would be sent to each of its characters), or
        the message names no recipient.
    """
    if isinstance(recipients, (str, bytes)):
        raise HveConfigError(
            f"Argument 'recipients' is a single string ({recipients!r}); give a list of addresses, e.g. "
            f"[{recipients!r}]."
        )
    if recipients is None:
        resent = message.get_all("Resent-Date")
        if resent is not None and len(resent) > 1:
            raise HveConfigError("The message has more than one Resent- header block; give 'recipients' explicitly.")
        prefix = "Resent-" if resent else ""
        fields = [str(value) for name in ("To", "Cc", "Bcc") for value in message.get_all(prefix + name, [])]
        recipients = list(dict.fromkeys(address for _, address in getaddresses(fields) if address))
    else:
        recipients = list(recipients)
    if not recipients:
        raise HveConfigError(
            "The message has no recipients; give 'recipients', or To, Cc or Bcc headers on the message."
        )
    return recipients


def _unknown_host(exc: BaseException) -> bool:
    """True when DNS says the host does not exist (not a temporary resolver failure such as EAI_AGAIN)."""
    permanent = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)}
    return isinstance(exc, socket.gaierror) and exc.errno in permanent


class _Permanent(HveConnectionError):
    """A connection failure that a new attempt would meet again (no STARTTLS, bad certificate, unknown host)."""

    permanent = True


class _AuthDeferred(HveConnectionError):
    """HVE answered AUTH with a temporary 4xx: the credential is fine, a later session may work."""


class _Retry:
    """The retry budget of one :meth:`HveSmtpSession.send`: count, window, jittered exponential backoff."""

    def __init__(self, retries: int, conn_id: str, message_id: str) -> None:
        if retries < 0:
            raise HveConfigError(f"Argument 'retries' is {retries}; use 0 (no retry) or more.")
        self.retries = retries
        self.attempts = 1
        self._conn_id = conn_id
        self._message_id = message_id
        self._started = _clock()

    def again(self, cause: str) -> bool:
        """
        Wait before the next attempt and return True; or return False when the budget or the window is spent.

        A cancelled send (:mod:`~airflow_provider_hve.cancellation`) does not wait, or stops waiting at once, and
        returns True: the check before the next attempt raises.
        """
        if cancellation.cancelled() is not None:
            return True
        if self.attempts > self.retries:
            return False
        first = THROTTLED_RETRY_DELAY if _THROTTLED.search(cause) else RETRY_DELAY
        base = first * 2 ** (self.attempts - 1)
        delay = random.uniform(base / 2, base)  # jitter: senders that failed together do not return together
        if _clock() - self._started + delay > SEND_RETRY_WINDOW:
            return False
        log.warning(
            "HVE did not take message %s (connection %r): %s Sending it again in %.1f s (retry %d of %d).",
            self._message_id,
            self._conn_id,
            cause,
            delay,
            self.attempts,
            self.retries,
        )
        if cancellation.back_off(delay, _sleep):
            return True
        self.attempts += 1
        return True

    def gave_up(self) -> str:
        return (
            f" Gave up after {self.attempts} attempt(s) in {_clock() - self._started:.0f} s (at most "
            f"{self.retries} retries within {SEND_RETRY_WINDOW:.0f} s: extra 'send_retries' or argument 'retries')."
        )
