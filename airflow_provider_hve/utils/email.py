"""The ``[email] email_backend`` for Airflow: failure e-mails and ``send_email`` calls go through HVE.

Configure::

    [email]
    email_backend = airflow_provider_hve.utils.email.send_email
    email_conn_id = hve_default
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_hve.connection import DEFAULT_CONN_ID

log = logging.getLogger(__name__)

# Airflow 3.3 passes this when [email] from_email is unset (apache/airflow#69262): it is not an address
# anyone chose, and HVE would refuse it as a sender.
AIRFLOW_PLACEHOLDER_FROM = "airflow@airflow"
# Airflow's default [email] email_conn_id: set whether or not anyone created such a connection.
AIRFLOW_DEFAULT_CONN_ID = "smtp_default"
WITHHELD_SUBJECT = "[Airflow] e-mail withheld: secrets could not be masked"
WITHHELD_HTML = (
    "<p>Airflow sent an e-mail through HVE, but its secret masker could not be imported, so the subject and "
    "body were left out because they may hold a secret. See the task log.</p>"
)


def send_email(
    to: str | Iterable[str],
    subject: str,
    html_content: str,
    files: Iterable[str] | None = None,
    dryrun: bool = False,
    cc: str | Iterable[str] | None = None,
    bcc: str | Iterable[str] | None = None,
    mime_subtype: str = "mixed",
    mime_charset: str = "utf-8",
    conn_id: str | None = None,
    from_email: str | None = None,
    custom_headers: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """
    Send an e-mail through HVE with Airflow's ``email_backend`` signature.

    Secrets Airflow knows (connection passwords, masked variables) are replaced by ``***`` in the subject
    and the body, as in :class:`HveNotifier`; in the body also where they appear HTML-escaped (Airflow
    escapes the exception it puts into a failure e-mail). If Airflow's secret masker cannot be imported, the subject and
    body are withheld (a short notice is sent instead) and a warning is logged.

    :param to: recipients, a string (comma/semicolon separated) or a list.
    :param subject: subject line.
    :param html_content: HTML body (a plain-text alternative is derived).
    :param files: paths of files to attach.
    :param dryrun: build and validate the message, do not send.
    :param cc: Cc recipients.
    :param bcc: Bcc recipients.
    :param mime_subtype: ignored: the message structure follows its parts.
    :param mime_charset: ignored: parts are UTF-8.
    :param conn_id: the ``hve`` connection; default ``[email] email_conn_id``, then ``hve_default``.
        Airflow's own default, ``smtp_default``, counts as unset when no such connection exists or when it
        is not an ``hve`` connection (a warning is logged then).
    :param from_email: From header; ``airflow@airflow`` (Airflow's placeholder) counts as unset.
    :param custom_headers: extra headers.

    A mail HVE or Entra cannot take now for a reason that passes is kept in the alert outbox and delivered later,
    once, with the same Message-ID (a hash of its envelope, subject, body and minute); a permanent refusal raises.
    """
    from airflow_provider_hve.exceptions import HveConfigError
    from airflow_provider_hve.hooks.hve import HveHook

    conn_id = _resolve_conn_id(conn_id or _configured_conn_id())
    if from_email and from_email.strip().lower() == AIRFLOW_PLACEHOLDER_FROM:
        from_email = None
    subject, html_content = _redacted(subject, html_content)
    headers = {str(k): str(v) for k, v in (custom_headers or {}).items()}
    hook = HveHook(hve_conn_id=conn_id)
    try:
        hook.config  # noqa: B018 - validate the connection first, to add the backend-specific hint
    except HveConfigError as exc:
        raise HveConfigError(
            f"{exc} Airflow's e-mail backend uses [email] email_conn_id: point it at your hve connection."
        ) from exc
    outgoing = hook.build_message(
        to, subject, html_content, cc=cc, bcc=bcc, from_email=from_email, files=files, headers=headers
    )
    if dryrun:
        log.info("Dry run: would send %r to %s", subject, ", ".join(outgoing.recipients))
        return
    from airflow_provider_hve.alerts.ids import content_key
    from airflow_provider_hve.alerts.send import send_or_keep, with_message_id

    # No DAG, run or task reaches a backend: the mail itself, and the minute, make its stable Message-ID.
    key = content_key(
        sender=outgoing.sender,
        recipients=outgoing.recipients,
        subject=subject,
        body=html_content,
        minute=int(time.time() // 60),
    )
    send_or_keep(
        hook,
        with_message_id(outgoing, key),
        origin="email backend",
    )


def _configured_conn_id() -> str:
    from airflow.providers.common.compat.sdk import conf

    return conf.get("email", "email_conn_id", fallback=None) or DEFAULT_CONN_ID


def _resolve_conn_id(conn_id: str) -> str:
    """
    Treat Airflow's default ``smtp_default`` as unset unless it is an ``hve`` connection.

    ``airflow connections create-default-connections`` creates an ``smtp_default`` of type ``smtp``; it is
    Airflow's, not a choice of ours, so the backend uses ``hve_default`` then (with a warning).
    """
    if conn_id != AIRFLOW_DEFAULT_CONN_ID:
        return conn_id
    # Through the compat layer: Airflow 2.11 (whose default email_conn_id is smtp_default) has no airflow.sdk.
    from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log.debug("No connection %r: using %r", conn_id, DEFAULT_CONN_ID)
        return DEFAULT_CONN_ID
    if conn.conn_type != "hve":
        log.warning(
            "Connection %r is of type %r, not 'hve' (Airflow's default SMTP connection): sending through %r. "
            "Set [email] email_conn_id to your hve connection to silence this.",
            conn_id,
            conn.conn_type,
            DEFAULT_CONN_ID,
        )
        return DEFAULT_CONN_ID
    return conn_id


def _redacted(subject: str, html_content: str) -> tuple[str, str]:
    """
    Mask secrets in the subject and body. Airflow 2.11's and 3.1's own failure mail put the exception into the
    HTML unescaped: what only looks like a tag in it (``disk <full>``) is then escaped, so it is shown, and masked
    again: escaping first would change a secret holding a ``<`` before the masker sees it, and an escaped secret
    inside such a pseudo-tag is text only once it is escaped.
    """
    from airflow_provider_hve.redaction import redact_html, redact_text
    from airflow_provider_hve.reports import escape_unknown_tags

    safe_subject = redact_text(str(subject), what="the subject")
    safe_html = redact_html(str(html_content), what="the body")
    if safe_html is not None:
        safe_html = redact_html(escape_unknown_tags(safe_html), what="the body")
    if safe_subject is None or safe_html is None:
        return WITHHELD_SUBJECT, WITHHELD_HTML
    return safe_subject, safe_html
