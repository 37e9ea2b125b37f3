"""Errors raised by the HVE provider.

One root, :class:`HveError`, and a few subclasses grouped by what the on-call engineer has to fix:

* :class:`HveConfigError` - the connection or an argument is wrong; nothing was sent.
* :class:`HveAuthError` - Entra ID refused the credential, or HVE refused the token (XOAUTH2).
* :class:`HveConnectionError` - the SMTP server could not be reached or secured (TLS, STARTTLS).
* :class:`HveSendError` - the server refused a message or some of its recipients.
* :class:`HveCancelledError` - the send was cancelled (an alert whose trigger was cancelled) before it was done.

Every message names the connection id (and the field, where one is at fault), says what to do, and never
contains a secret or a token. Low-level errors are translated once, at the boundary, and kept as
``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException


class HveError(AirflowException):
    """Root of every error raised by the HVE provider."""

    accepted: tuple[str, ...] = ()
    """Recipients HVE had already accepted the message for when a single send failed (an earlier attempt of
    :meth:`~airflow_provider_hve.smtp.HveSmtpSession.send` delivered to them): never send it to them again."""


class HveConfigError(HveError, ValueError):
    """A connection field or an argument is missing or invalid; raised before anything is sent."""


class HveAuthError(HveError):
    """
    Entra ID did not issue a token, or HVE refused the token during ``AUTH XOAUTH2``.

    :param message: the diagnosis: likely cause and fix.
    :param code: ``AADSTS7000215`` style code from Entra, or the SMTP reply code (``535``).
    :param smtp_reply: the SMTP server's reply text, if the refusal came from HVE.
    :param correlation_id: Entra's correlation id (what Microsoft support asks for).
    :param trace_id: Entra's trace id.
    :param temporary: Entra could not be reached or was unavailable (HTTP 429 or 5xx beyond the retries): the
        credential may be fine, a later attempt may work (the alert outbox keeps such an alert).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        smtp_reply: str | None = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
        temporary: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.smtp_reply = smtp_reply
        self.correlation_id = correlation_id
        self.trace_id = trace_id
        self.temporary = temporary


class HveConnectionError(HveError):
    """
    The SMTP server could not be reached, did not offer STARTTLS, failed certificate checks, or broke the
    connection.

    :param message: what happened and what to check.
    :param in_flight: keys of messages handed over on the broken connection with no final reply: HVE may or
        may not have them, so sending them again risks a duplicate.
    :param unsent: keys of messages that were certainly not accepted: safe to send again.
    :param completed: outcomes (``pipeline.Delivery``) read before the connection broke.
    :param accepted: recipients HVE accepted the message for before the failure (see :attr:`HveError.accepted`).
    """

    permanent = False
    """True when a new connection would meet the same failure (no STARTTLS, a certificate that fails
    verification, no AUTH XOAUTH2, an unknown host): a retry only repeats it."""

    def __init__(
        self,
        message: str,
        *,
        in_flight: Sequence[object] = (),
        unsent: Sequence[object] = (),
        completed: Sequence[Any] = (),
        accepted: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.in_flight = list(in_flight)
        self.unsent = list(unsent)
        self.completed = list(completed)
        self.accepted = tuple(accepted)


class HveSendError(HveError):
    """
    The server refused a message, or every one of its recipients.

    :param message: what was refused and why.
    :param refused: recipient address -> ``(code, reply text)`` for each refused recipient.
    :param smtp_code: the SMTP reply code of a whole-message refusal.
    :param completed: outcomes (``pipeline.Delivery``) of earlier messages read before the refusal.
    :param accepted: recipients HVE accepted the message for before the failure (see :attr:`HveError.accepted`).
    """

    def __init__(
        self,
        message: str,
        *,
        refused: dict[str, tuple[int, str]] | None = None,
        smtp_code: int | None = None,
        completed: Sequence[Any] = (),
        accepted: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.refused = dict(refused or {})
        self.smtp_code = smtp_code
        self.completed = list(completed)
        self.accepted = tuple(accepted)


class HveCancelledError(HveError):
    """
    The send was cancelled before it was done (a Deadline Alert whose trigger was cancelled): no further attempt.

    Raised between steps, never in the middle of one: a message is either not handed over (``unsent``) or was
    handed over in full by an earlier attempt, to the recipients in ``accepted``.

    :param message: what was left undone.
    :param unsent: keys (Message-IDs) of messages certainly not accepted.
    :param accepted: recipients HVE accepted the message for before the cancellation (see :attr:`HveError.accepted`).
    """

    def __init__(self, message: str, *, unsent: Sequence[object] = (), accepted: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.unsent = list(unsent)
        self.accepted = tuple(accepted)
