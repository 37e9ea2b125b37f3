"""Every mail of the listener goes out here, through :class:`HveNotifier` (and so through its outbox)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from email.utils import parseaddr
from typing import Any

from airflow_provider_hve.alerts.config import AlertConfig

log = logging.getLogger(__name__)


def sender_domain(conn_id: str) -> str:
    """
    Return the domain the connection sends from (its ``from_email``, else the HVE account): Message-IDs use it.

    ``airflow.invalid`` while the connection cannot be read; that fallback is not remembered (the next alert asks
    again), a domain that was read is.
    """
    try:
        return _cached_sender_domain(conn_id)
    except Exception as exc:  # the send names the problem; the Message-ID only needs some domain
        log.debug("No sender domain for connection %r: %s", conn_id, exc)
        return "airflow.invalid"


@functools.lru_cache(maxsize=16)
def _cached_sender_domain(conn_id: str) -> str:
    from airflow_provider_hve.hooks.hve import HveHook

    config = HveHook(hve_conn_id=conn_id).config
    domain = parseaddr(config.from_email or config.account)[1].rpartition("@")[2]
    if not domain:
        raise ValueError("the connection names no sender address")
    return domain


sender_domain.cache_clear = _cached_sender_domain.cache_clear  # type: ignore[attr-defined]


def message_id_for(key: str, config: AlertConfig) -> str:
    """Return the Message-ID of the alert with ``key`` (from :func:`alert_key`) sent through the alert connection."""
    from airflow_provider_hve.alerts.ids import alert_message_id

    return alert_message_id(key, sender_domain(config.conn_id))


def send_alert(
    config: AlertConfig,
    *,
    key: str,
    to: list[str],
    context: Mapping[str, Any],
    subject: str | None = None,
    html_content: str | None = None,
    in_reply_to: str | None = None,
) -> str:
    """
    Render and send one alert through :class:`HveNotifier` with the stable Message-ID of ``key``; return that ID.

    ``in_reply_to``: the Message-ID of the first alert of the thread; the mail carries it as ``In-Reply-To`` and
    ``References`` so mail clients show it under that alert. Raises what the send raises, on every Airflow.
    """
    from types import SimpleNamespace

    from airflow_provider_hve.notifications.hve import HveNotifier

    message_id = message_id_for(key, config)
    context = dict(context)
    # Airflow 2.11's notifier renders with context["dag"] (and asks it render_template_as_native_obj): a stand-in
    # that renders text, whatever the task's own DAG says.
    dag_id = getattr(context.get("dag"), "dag_id", None)
    context["dag"] = SimpleNamespace(dag_id=dag_id, render_template_as_native_obj=False)
    headers = {"In-Reply-To": in_reply_to, "References": in_reply_to} if in_reply_to else None
    notifier = HveNotifier(
        to=to,
        subject=subject,
        html_content=html_content,
        headers=headers,
        hve_conn_id=config.conn_id,
        message_id=message_id,
    )
    # Not notifier(context): Airflow's BaseNotifier.__call__ logs a failed send and returns (2.11 to 3.3), and the
    # caller must know (a digest that could not be sent is given back to the journal, not counted as sent).
    notifier._render_and_send(context)
    return message_id
