"""
Stable identities of alerts.

An alert is one event of one task instance try (or of one DAG run): the same event always gets the same
Message-ID, in every process and on every retry of the send, so a resend from the outbox is the same message to
Exchange and to the recipient's mail client, and follow-ups can thread under it (``In-Reply-To`` / ``References``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["alert_key", "alert_message_id", "content_key"]


def alert_key(
    *,
    event: str,
    dag_id: str | None,
    run_id: str | None = None,
    task_id: str | None = None,
    map_index: int | None = -1,
    try_number: int | None = None,
) -> str:
    """
    Return a short stable key (hex) of one alert event.

    ``event`` names what happened (``failure``, ``retry``, ``success``, ``sla_miss``, ``deadline``, ``digest``,
    ``recovered``, ...). A DAG-level event leaves ``task_id`` None. Fields are joined with a separator that cannot
    occur in them (NUL), so ``("a", "b.c")`` and ``("a.b", "c")`` never collide.
    """
    fields = (
        event,
        dag_id or "",
        run_id or "",
        task_id or "",
        "" if map_index is None else str(map_index),
        "" if try_number is None else str(try_number),
    )
    return hashlib.sha256("\0".join(fields).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def content_key(*, sender: str, recipients: Iterable[str], subject: str, body: str, minute: int) -> str:
    """
    Return a stable key (hex, like :func:`alert_key`) of a mail whose sender knows no DAG, run or task.

    What Airflow's ``[email] email_backend`` is handed is a mail, not an event: the key is a hash of its envelope,
    subject and body and of the minute it was sent in (``minute``: whole minutes since the epoch). The same mail
    sent again within that minute gets the same key; the same text on another day does not.
    """
    fields = ("mail", sender.lower(), ",".join(sorted(r.lower() for r in recipients)), subject, body, str(minute))
    return hashlib.sha256("\0".join(fields).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def alert_message_id(key: str, domain: str) -> str:
    """Return the Message-ID of the alert with ``key`` (from :func:`alert_key`), sent from ``domain``."""
    if not key or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"alert key {key!r} is not a hex key from alert_key()")
    domain = domain.strip().lower() or "airflow.invalid"
    return f"<hve-alert.{key}@{domain}>"
