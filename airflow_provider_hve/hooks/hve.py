"""HveHook: an Airflow ``hve`` connection + Entra tokens + XOAUTH2 SMTP sessions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_hve.connection import DEFAULT_CONN_ID, HveConnectionConfig

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from airflow_provider_hve.auth import TokenProvider
    from airflow_provider_hve.message import AddressInput, MessageOptions, OutgoingMessage
    from airflow_provider_hve.smtp import HveSmtpSession, SendProgress, SendResult

log = logging.getLogger(__name__)


def _once(value: Any) -> Any:
    """A one-shot iterator of addresses as a list (read once); anything else (a string, a list, None) as it is."""
    from collections.abc import Iterator as AnIterator

    return list(value) if isinstance(value, AnIterator) else value


class HveHook(BaseHook):
    """
    Send mail through Microsoft 365 High Volume Email with OAuth 2.0 (SASL XOAUTH2).

    Tokens come from Entra ID through MSAL and are shared by every hook of the process that uses the same
    credential; sessions use STARTTLS with a verified certificate before any token is sent.

    :param hve_conn_id: the ``hve`` connection to use.

    Example::

        hook = HveHook(hve_conn_id="hve_default")
        result = hook.send_email(to="team@contoso.com", subject="Daily report", html_content="<p>Done</p>")

        with hook.smtp_session() as session:  # many messages, one connection
            for message, recipients in outbox:
                session.send(message, recipients)
    """

    conn_name_attr = "hve_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "hve"
    hook_name = "Microsoft 365 High Volume Email"

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Return the labelled connection fields for Airflow before 3.2 (3.2+ reads ``conn-fields``)."""
        from airflow_provider_hve.connection_form import legacy_connection_form_widgets

        return legacy_connection_form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return the relabelled, hidden and placeholder standard fields for Airflow before 3.2."""
        from airflow_provider_hve.connection_form import legacy_ui_field_behaviour

        return legacy_ui_field_behaviour()

    def __init__(self, hve_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hve_conn_id = hve_conn_id

    @cached_property
    def config(self) -> HveConnectionConfig:
        """The connection, fetched and validated once."""
        from airflow_provider_hve.connection import load_connection_config

        return load_connection_config(self.hve_conn_id)

    @property
    def token_provider(self) -> TokenProvider:
        """The process-wide token provider for this connection's credential."""
        from airflow_provider_hve.auth import token_provider

        return token_provider(self.config)

    def get_access_token(self, *, force_refresh: bool = False) -> str:
        """
        Return an access token for HVE valid for at least 12 more minutes.

        The token is registered with Airflow's secret masker. Repeated calls (from any hook using the same
        credential in this process) reuse the cached token.

        :param force_refresh: ask Entra for a new token even if a cached one is still valid.
        :raises HveAuthError: Entra refused; the message names the cause and the fix.
        """
        return self.token_provider.get_token(force_refresh=force_refresh).value

    @contextmanager
    def smtp_session(self) -> Iterator[HveSmtpSession]:
        """
        Yield an authenticated session that sends many messages over one connection; QUIT on exit.

        Left by an exception, the connection is closed without QUIT: it may be in the middle of a message,
        where the server would read QUIT as content and never answer.
        """
        from airflow_provider_hve.smtp import HveSmtpSession

        session = HveSmtpSession(self.config, self.token_provider.get_token)
        session.open()
        try:
            yield session
        except BaseException:
            session.discard()
            raise
        finally:
            session.close()

    def get_conn(self) -> HveSmtpSession:
        """
        Return an open, authenticated SMTP session (the Airflow convention for a hook's client).

        The session has done STARTTLS and AUTH XOAUTH2 with a fresh or cached Entra token. The caller owns it:
        ``close()`` it (QUIT) when done, or use it as a context manager. Each call opens a new session;
        :meth:`smtp_session` does the same and closes it for you.

        Example::

            with HveHook().get_conn() as session:
                session.send(message, ["team@contoso.com"])

        :raises HveAuthError: Entra or HVE refused the credential; the message names the cause and the fix.
        :raises HveConnectionError: the server could not be reached or secured.
        """
        from airflow_provider_hve.smtp import HveSmtpSession

        session = HveSmtpSession(self.config, self.token_provider.get_token)
        session.open()
        return session

    def build_message(
        self,
        to: AddressInput,
        subject: str,
        html_content: str | None = None,
        *,
        check_sender: bool = True,
        **options: Unpack[MessageOptions],
    ) -> OutgoingMessage:
        """
        Validate the arguments and build the message and its envelope; nothing is sent.

        The From header defaults to the connection's ``from_email`` extra, then to the HVE account. See
        :meth:`send_email` for the arguments; ``check_sender=False`` skips the warning about a From
        address other than the HVE account (bulk senders check once).
        """
        from airflow_provider_hve.message import build_message

        parts: dict[str, Any] = dict(options)
        from_email = parts.pop("from_email", None)
        # An iterator (a generator of addresses) is read once here: the builder and the domain check see the same.
        to = _once(to)
        for name in ("cc", "bcc"):
            if name in parts:
                parts[name] = _once(parts[name])
        outgoing = build_message(
            sender=from_email or self.config.from_email or self.config.account,
            to=to,
            subject=subject,
            html_content=html_content,
            **parts,
        )
        if self.config.accepted_domains:
            self._check_accepted_domains({"to": to, "cc": parts.get("cc"), "bcc": parts.get("bcc")})
        if check_sender and outgoing.sender.lower() != self.config.account.lower():
            log.warning(
                "From address %s is not the HVE account %s of connection %r; HVE refuses other senders "
                "(550 5.7.60) unless the account may send as them. Keep the address, change the display name.",
                outgoing.sender,
                self.config.account,
                self.hve_conn_id,
            )
        return outgoing

    def _check_accepted_domains(self, arguments: dict[str, Any]) -> None:
        """Refuse recipients outside the connection's ``accepted_domains``, naming the argument (before sending)."""
        from airflow_provider_hve.addresses import accepted_domains_message, outside_domains, parse_addresses
        from airflow_provider_hve.exceptions import HveConfigError

        accepted = self.config.accepted_domains
        for argument, value in arguments.items():
            # Parsed already by the builder (cached): this costs a look-up per address.
            outside = outside_domains((box.addr_spec for box in parse_addresses(value, smtputf8=True)), accepted)
            if outside:
                raise HveConfigError(accepted_domains_message(argument, outside, accepted, self.hve_conn_id))

    def send_email(
        self,
        to: AddressInput,
        subject: str,
        html_content: str | None = None,
        *,
        retries: int | None = None,
        **options: Unpack[MessageOptions],
    ) -> SendResult:
        """
        Build, validate and send one message; every address is checked before connecting.

        Temporary failures are retried where that cannot duplicate the message (see :meth:`send_message`). Once HVE
        accepted it, the alerts kept for this connection are flushed (:meth:`flush_alert_outbox`).

        :param to: recipients, as a list or a comma/semicolon separated string.
        :param subject: the subject line.
        :param html_content: the HTML body.
        :param retries: how many times to send again after a temporary failure; default: the connection's
            ``send_retries`` extra (3); 0 turns retries off.
        :param options: the optional parts of the message, by keyword (one definition for this method and
            :meth:`build_message`): ``text_content``, ``cc``, ``bcc``, ``reply_to``, ``from_email``, ``files``,
            ``headers``, ``images``, ``attachments``; see :class:`~airflow_provider_hve.message.MessageOptions`.
        :return: accepted and refused recipients and the Message-ID.
        """
        return self.send_message(self.build_message(to, subject, html_content, **options), retries=retries)

    def send_message(
        self, outgoing: OutgoingMessage, *, retries: int | None = None, progress: SendProgress | None = None
    ) -> SendResult:
        """
        Send a built message over a new session and log what the server accepted and refused.

        A temporary refusal (``4xx``) or a connection lost before the message was handed over is retried: a new
        connection, a new AUTH, jittered backoff, at most ``retries`` times within a minute. A message whose
        outcome is unknown (the connection broke after it was handed over) is never sent again: the error names
        its Message-ID. A recipient refused for good is reported in the result; the others still receive it.

        :param outgoing: the message and its envelope (:meth:`build_message`).
        :param retries: how many times to send again; default: the connection's ``send_retries`` extra (3).
        :param progress: kept up to date while sending, for a caller interrupted meanwhile (a timeout, SIGTERM).
        """
        from airflow_provider_hve.smtp import HveSmtpSession

        if self.config.accepted_domains:  # a message built elsewhere, or its envelope changed since
            self._check_accepted_domains({"recipients": outgoing.recipients})
        # Opened by send(), which opens it again after a broken connection; QUIT at the end either way.
        session = HveSmtpSession(self.config, self.token_provider.get_token)
        try:
            result = session.send(
                outgoing.message, outgoing.recipients, payload=outgoing.payload, retries=retries, progress=progress
            )
        finally:
            session.close()
        if result.refused:
            log.warning(
                "HVE refused %d recipient(s) of %s: %s",
                len(result.refused),
                result.message_id,
                "; ".join(f"{addr}: {code} {reply}" for addr, (code, reply) in result.refused.items()),
            )
        log.info("HVE accepted %s for %d recipient(s).", result.message_id, len(result.accepted))
        if result.accepted:
            self.flush_alert_outbox()
        return result

    def flush_alert_outbox(self) -> None:
        """
        Deliver the alerts kept for this connection while HVE could not take them: HVE just accepted a message.

        Called after every successful send (this hook's, the mail merge's). One directory listing when nothing is
        kept; never raises, never changes the outcome of the send before it (docs/alerts.md, "Alert outbox").
        """
        from airflow_provider_hve.alerts.flush import flush_after_send

        flush_after_send(self)

    def test_connection(self) -> tuple[bool, str]:
        """
        Get a token and complete STARTTLS + AUTH XOAUTH2 + QUIT; on failure return the diagnosis.

        Called by the Test button of Airflow's connection form, the message names the connection id typed in
        the form (not the random one Airflow tests it under) and the fields by their labels.
        """
        from airflow_provider_hve.exceptions import HveError

        try:
            with self.smtp_session():
                pass
        except HveError as exc:
            ok, message = False, str(exc)
        else:
            config = self.config
            ok, message = (
                True,
                (
                    f"Connected to {config.host}:{config.port} with STARTTLS and authenticated as {config.account} "
                    f"(XOAUTH2, {config.auth_mode.value})."
                ),
            )
        from airflow_provider_hve.connection_form import airflow_test_connection_id, form_test_message

        typed_id = airflow_test_connection_id(self.hve_conn_id)
        if typed_id is not None:
            message = form_test_message(message, self.hve_conn_id, typed_id)
        return ok, message
