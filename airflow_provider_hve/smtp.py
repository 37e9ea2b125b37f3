"""The XOAUTH2 SMTP session with HVE: connect, EHLO, STARTTLS, EHLO, AUTH XOAUTH2, send many, QUIT.

Security rules enforced here, not left to smtplib: no token is ever written to a connection that has not
completed STARTTLS with a verified certificate (smtplib would happily send AUTH in the clear), and the
certificate's host name is checked.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from airflow_provider_hve.auth import mask
from airflow_provider_hve.diagnostics import describe_smtp_auth_reply, smtp_reply_hint
from airflow_provider_hve.exceptions import HveAuthError, HveConnectionError, HveSendError
from airflow_provider_hve.message import wire_bytes

if TYPE_CHECKING:
    import smtplib

    from airflow_provider_hve.auth import AccessToken
    from airflow_provider_hve.connection import HveConnectionConfig
    from airflow_provider_hve.pipeline import Pipeline

log = logging.getLogger(__name__)

TokenSource = Callable[..., "AccessToken"]


@dataclass(frozen=True)
class SendResult:
    """What the server did with one message: ``refused`` maps address -> (code, reply)."""

    message_id: str
    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, e.g. for XCom."""
        return {
            "message_id": self.message_id,
            "accepted": list(self.accepted),
            "refused": {addr: [code, reply] for addr, (code, reply) in self.refused.items()},
        }


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
        self.messages_sent = 0

    def __enter__(self) -> HveSmtpSession:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._smtp is not None

    def open(self) -> None:
        """Connect, secure the connection with STARTTLS and authenticate with XOAUTH2."""
        import smtplib

        config = self.config
        where = f"{config.host}:{config.port} (connection {config.conn_id!r})"
        # Token first: an Entra problem is reported as such, and no SMTP connection idles meanwhile.
        token = self._get_token()
        try:
            # The host given here is also the name the certificate is checked against at STARTTLS.
            smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout, local_hostname=_local_hostname())
        except smtplib.SMTPConnectError as exc:
            reply = _text(exc.smtp_error)
            raise HveConnectionError(
                f"The SMTP server {where} refused the connection: {exc.smtp_code} {reply}."
                f"{smtp_reply_hint(exc.smtp_code, reply)}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise HveConnectionError(
                f"Cannot connect to the SMTP server {where}: {_describe_os_error(exc)}. Check 'host' and "
                f"'port' ({config.port}) and that this worker may open outbound connections to it."
            ) from exc
        try:
            self._secure(smtp, where)
            self._authenticate(smtp, token)
        except BaseException:
            close_quietly(smtp)
            raise
        self._smtp = smtp

    def close(self) -> None:
        """Say QUIT and close; never raises."""
        if self._smtp is not None:
            smtp, self._smtp = self._smtp, None
            try:
                smtp.quit()
            except Exception:
                close_quietly(smtp)

    def pipeline(self, *, envelope_from: str | None = None, pipelining: bool | None = None) -> Pipeline:
        """
        Return a :class:`~airflow_provider_hve.pipeline.Pipeline` over this session, for streams of messages.

        :param envelope_from: MAIL FROM; defaults to the HVE account.
        :param pipelining: force RFC 2920 pipelining on or off; default: what the server advertises.
        """
        from airflow_provider_hve.pipeline import Pipeline

        if self._smtp is None:
            raise HveConnectionError(f"The HVE session for connection {self.config.conn_id!r} is not open.")
        return Pipeline(
            self._smtp, envelope_from or self.config.account, conn_id=self.config.conn_id, pipelining=pipelining
        )

    def send(
        self,
        message: EmailMessage,
        recipients: Sequence[str],
        *,
        envelope_from: str | None = None,
        payload: bytes | None = None,
    ) -> SendResult:
        """
        Send one message to ``recipients`` (To, Cc and Bcc addresses: the envelope).

        Envelopes over 50 recipients are split into several transactions of the same message, so every
        recipient receives it exactly once with the headers intact.

        :param message: the message; must not carry a ``Bcc`` header.
        :param recipients: validated envelope addresses.
        :param envelope_from: MAIL FROM; defaults to the HVE account.
        :param payload: the message already serialised for SMTP (``OutgoingMessage.payload``).
        :return: accepted and refused recipients.
        :raises HveSendError: the server refused the sender, or the message for every recipient.
        """
        if not recipients:
            raise HveSendError("The message has no recipients; give at least one To, Cc or Bcc address.")
        message_id = str(message.get("Message-ID", ""))
        pipeline = self.pipeline(envelope_from=envelope_from)
        try:
            (delivery,) = (
                pipeline.submit(message_id, payload or wire_bytes(message), recipients, message_id) + pipeline.flush()
            )
        except HveConnectionError:
            self._smtp = None
            raise
        self.messages_sent += 1
        result = SendResult(message_id=message_id, accepted=tuple(delivery.accepted), refused=delivery.refused)
        if not delivery.accepted:
            details = "; ".join(f"{addr}: {code} {reply}" for addr, (code, reply) in delivery.refused.items())
            hints = {smtp_reply_hint(code, reply) for code, reply in delivery.refused.values()} - {""}
            raise HveSendError(
                f"HVE refused the message for every recipient (connection {self.config.conn_id!r}): "
                f"{details}.{''.join(sorted(hints))}",
                refused=delivery.refused,
            )
        return result

    # -- connection set-up -----------------------------------------------------------------------------

    def _secure(self, smtp: smtplib.SMTP, where: str) -> None:
        import smtplib

        try:
            _ehlo(smtp, where)
            if not smtp.has_extn("starttls"):
                # Whatever else the server offers (AUTH included), a token never goes over plain text.
                raise HveConnectionError(
                    f"The SMTP server {where} does not offer STARTTLS, so no token was sent. HVE always "
                    f"offers it on port 587: check 'host' and 'port', and whether a proxy strips STARTTLS."
                )
            smtp.starttls(context=tls_context(self.config.ca_bundle))
            # starttls() forgets the EHLO answer; without a new EHLO, AUTH is not advertised and a later
            # implicit EHLO resets the session (530 5.7.57 at MAIL FROM).
            _ehlo(smtp, where)
        except ssl.SSLCertVerificationError as exc:
            raise HveConnectionError(
                f"The TLS certificate of the SMTP server {where} failed verification "
                f"({exc.verify_message}); no token was sent. If a proxy or a private CA sits in between, put "
                f"its CA certificate in a PEM file and set extra 'ca_bundle'."
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise HveConnectionError(
                f"STARTTLS with the SMTP server {where} failed: {_describe_os_error(exc)}; no token was sent."
            ) from exc

    def _authenticate(self, smtp: smtplib.SMTP, token: AccessToken) -> None:
        import smtplib

        mechanisms = (smtp.esmtp_features.get("auth") or "").upper().split()
        if "XOAUTH2" not in mechanisms:
            raise HveConnectionError(
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
                    raise HveConnectionError(
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
            except (OSError, smtplib.SMTPException) as exc:
                raise HveConnectionError(
                    f"The connection to {self.config.host}:{self.config.port} failed during AUTH "
                    f"(connection {self.config.conn_id!r}): {_describe_os_error(exc)}"
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


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def close_quietly(smtp: smtplib.SMTP) -> None:
    """Close the socket without QUIT, ignoring errors (best effort on a broken or abandoned connection)."""
    with contextlib.suppress(Exception):
        smtp.close()


_LOCAL_HOSTNAME: str | None = None


def _local_hostname() -> str:
    # smtplib would call socket.getfqdn() per connection, which can take seconds without working DNS.
    global _LOCAL_HOSTNAME
    if _LOCAL_HOSTNAME is None:
        _LOCAL_HOSTNAME = socket.gethostname() or "localhost"
    return _LOCAL_HOSTNAME
