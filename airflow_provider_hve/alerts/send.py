"""
Sending an alert: now, or kept in the outbox when HVE or Entra cannot take it for a reason that passes.

What :class:`~airflow_provider_hve.notifications.hve.HveNotifier` and the ``[email] email_backend`` send through
(:func:`send_or_keep`), with a stable Message-ID (:func:`with_message_id`). Delivering what was kept is
:mod:`~airflow_provider_hve.alerts.flush`'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_provider_hve.alerts.outbox import KeptAlert, Outbox, recipients_to_keep

if TYPE_CHECKING:
    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.message import OutgoingMessage
    from airflow_provider_hve.smtp import SendResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kept:
    """An alert HVE could not take now, kept in the outbox (what :func:`send_or_keep` returns instead of a result)."""

    message_id: str
    path: Path
    recipients: tuple[str, ...]
    reason: str = ""
    """Why HVE did not take it now (the error, which names no secret)."""


def send_or_keep(hook: HveHook, outgoing: OutgoingMessage, *, origin: str) -> SendResult | Kept:
    """
    Send an alert; if HVE or Entra cannot take it for a reason that passes, keep it in the outbox.

    A permanent refusal is logged with HVE's reply and raised, as before; so is an alert the outbox cannot hold (the
    send's error is raised, the outbox's logged), unless HVE accepted it for some recipients: then the result is
    returned and the recipients that could not be kept are logged at ERROR. Recipients HVE refused with a ``4xx``
    after the retries are kept.

    :param origin: who raises it (``HveNotifier``, ``email backend``), for the log and the CLI.
    """
    from airflow_provider_hve.exceptions import HveCancelledError, HveError

    raised_at = time.time()
    try:
        result = hook.send_message(outgoing)
    except HveError as exc:
        later = recipients_to_keep(exc, outgoing.recipients)
        if not later:
            if not isinstance(exc, HveCancelledError):
                log.error("HVE alert %s was not delivered and is not kept (permanent): %s", outgoing.message_id, exc)
            raise
        try:
            return _keep(hook, outgoing, later, raised_at, origin, str(exc))
        except Exception as keep_error:
            log.error("HVE alert %s could not be kept in the outbox: %s", outgoing.message_id, keep_error)
            raise exc from None
    later = [address for address, (code, _) in result.refused.items() if 400 <= code < 500]
    if later:
        reason = "; ".join(f"{address}: {code} {reply}" for address, (code, reply) in result.refused.items())
        try:
            _keep(hook, outgoing, later, raised_at, origin, reason)
        except Exception as keep_error:  # HVE accepted the others: the mail went out, the callback did not fail
            log.error(
                "HVE alert %s was accepted for %s, but could not be kept in the outbox for %s, which HVE refused for "
                "now (%s): %s. They will not get it.",
                outgoing.message_id,
                ", ".join(result.accepted) or "some recipients",
                ", ".join(later),
                reason,
                keep_error,
            )
    return result


def with_message_id(outgoing: OutgoingMessage, key: str) -> OutgoingMessage:
    """
    Return ``outgoing`` with the stable Message-ID of the alert ``key`` (:func:`~.ids.alert_key`), in its sender's
    domain.
    """
    from dataclasses import replace

    from airflow_provider_hve.alerts.ids import alert_message_id

    message = outgoing.message
    message.replace_header("Message-ID", alert_message_id(key, outgoing.sender.rpartition("@")[2]))
    return replace(outgoing, payload=_wire(message))


def _keep(
    hook: HveHook, outgoing: OutgoingMessage, recipients: list[str], raised_at: float, origin: str, reason: str
) -> Kept:
    message = outgoing.message
    alert = KeptAlert(
        message_id=outgoing.message_id,
        conn_id=hook.hve_conn_id,
        sender=outgoing.sender,
        recipients=tuple(recipients),
        subject=str(message.get("Subject", "")),
        raised_at=raised_at,
        origin=origin,
        reason=reason[:2000],
        payload=outgoing.payload or _wire(message),
    )
    path = Outbox.configured().keep(alert)
    log.warning(
        "HVE alert %s could not be delivered now (%s); kept in the outbox as %s for %s. It goes out with the next "
        "successful send through connection %r, the maintenance DAG, or `python -m airflow_provider_hve.alerts "
        "flush`.",
        alert.message_id,
        _first_sentence(alert.reason),
        path,
        ", ".join(recipients),
        hook.hve_conn_id,
    )
    return Kept(alert.message_id, path, alert.recipients, alert.reason)


def _first_sentence(text: str) -> str:
    first = text.split(". ", 1)[0].strip()
    return first if first.endswith(".") else f"{first}."


def _wire(message: EmailMessage) -> bytes:
    from airflow_provider_hve.message import wire_bytes

    return wire_bytes(message)
