"""
Not noisy: which alerts go out on their own and which are collected into a digest, and sending digests.

The rule, shared by every process through the journal: an alert goes out on its own when fewer than
``digest_threshold`` (N) alerts arrived in the last ``digest_window_minutes`` (M) and no digest is being
collected; otherwise it is appended to the digest being collected. A digest is closed M minutes after its first
alert and sent by whichever process comes next: the next alert, or :func:`flush_digests` (which the outbox's
maintenance DAG and command line call). A storm of failures therefore sends N alerts, then one digest every M
minutes for as long as it lasts; 1,000 failures within 5 minutes (N=3, M=5) are 3 alerts and 1 digest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from airflow_provider_hve.alerts.config import AlertConfig
from airflow_provider_hve.alerts.journal import Journal, JournalState

log = logging.getLogger(__name__)

DIGEST_TEMPLATE = "digest.html.j2"
DIGEST_SUBJECT = (
    "[Airflow] {{ digest | length }} failure alert(s) in {{ digest_window_minutes }} min (digest since "
    "{{ digest_since }})"
)


def admit(state: JournalState, now: float, config: AlertConfig) -> bool:
    """
    Record one alert arriving at ``now``; return True to send it on its own, False to collect it into the digest.

    Call with the journal's lock held; the state is written back with it.
    """
    threshold = config.digest_threshold
    if threshold <= 0:
        return True
    recent = [t for t in state.arrivals if now - t < config.window_seconds]
    single = state.pending_since is None and len(recent) < threshold
    state.arrivals = [*recent, now][-threshold:]  # only the last N arrivals decide the next one
    if not single and state.pending_since is None:
        state.pending_since = now
    return single


def close_if_due(journal: Journal, state: JournalState, now: float, config: AlertConfig, *, force: bool) -> None:
    """Close the digest being collected when its window has ended (or ``force``), making it due. Lock held."""
    since = state.pending_since
    if since is not None and (force or now - since >= config.window_seconds):
        journal.close_pending(state)


def flush_digests(
    *, force: bool = False, config: AlertConfig | None = None, clock: Callable[[], float] = time.time
) -> int:
    """
    Send every digest whose window has ended (``force``: also the one being collected); return how many were sent.

    Safe to call from any process at any time (the outbox's maintenance DAG and command line do): a digest is
    claimed under the journal's lock, so two callers never send the same one. Never raises for a failed send (see
    :func:`send_claimed`); raises :class:`HveConfigError` for a bad ``[hve] alert_*`` option and ``OSError`` when
    the journal cannot be used.
    """
    from airflow_provider_hve.alerts.config import load_alert_config

    config = config or load_alert_config()
    if not config.enabled:
        return 0
    journal = Journal(config.journal_dir)
    with journal.locked() as state:
        close_if_due(journal, state, clock(), config, force=force)
        claimed = journal.claim_due()
    return send_claimed(journal, claimed, config)


def send_claimed(journal: Journal, claimed: list[str], config: AlertConfig) -> int:
    """
    Send the claimed digest batches; return how many were sent (or kept in the outbox for HVE to take later).

    A batch whose send failed for a reason that may pass is given back (the next flush or alert sends it); one HVE
    refused for good is logged at ERROR with the failures it listed, then dropped (sending it again would fail
    again). Never raises for a failed send.
    """
    sent = 0
    for name in claimed:
        try:
            entries = journal.read_batch(name)
        except FileNotFoundError:  # taken back meanwhile as a stale claim (this process was slow): theirs now
            continue
        if not entries:
            journal.done(name)
            continue
        try:
            send_digest(entries, config)
        except Exception as exc:
            if _permanent(exc, config):
                log.error(
                    "HVE alert digest of %d failure(s) was not delivered and is not sent again (refused for good, or "
                    "HVE may have it already): %s; its failures: %s",
                    len(entries),
                    exc,
                    ", ".join(str(entry.get("key")) for entry in entries),
                )
                journal.done(name)
            else:
                log.exception(
                    "HVE alert digest of %d failure(s) could not be sent; kept for the next flush", len(entries)
                )
                try:
                    journal.release(name)
                except OSError:
                    log.exception(
                        "HVE alert digest %s could not be given back; it is retried once its claim is stale", name
                    )
            continue
        sent += 1
        journal.done(name)  # sent, or kept in the notifier's outbox (HVE takes it later)
    return sent


def _permanent(exc: BaseException, config: AlertConfig) -> bool:
    """True when HVE refused the digest for good (the notifier's outbox would not keep it): never retried."""
    from airflow_provider_hve.alerts.outbox import recipients_to_keep
    from airflow_provider_hve.exceptions import HveError

    return isinstance(exc, HveError) and not recipients_to_keep(exc, config.to)


def send_digest(entries: list[dict[str, Any]], config: AlertConfig) -> None:
    """Send one digest listing ``entries`` (each: DAG, task, run, try, when, log URL) to ``[hve] alert_to``."""
    from airflow_provider_hve.alerts.ids import alert_key
    from airflow_provider_hve.alerts.mail import send_alert
    from airflow_provider_hve.reports import packaged_template

    key = alert_key(event="digest", dag_id=None, run_id=entries[0].get("key"), task_id=entries[-1].get("key"))
    context = {
        "digest": entries,
        "digest_window_minutes": f"{config.digest_window_minutes:g}",
        "digest_since": entries[0].get("when"),
    }
    send_alert(
        config,
        key=key,
        to=list(config.to),
        subject=DIGEST_SUBJECT,
        html_content=packaged_template(DIGEST_TEMPLATE),
        context=context,
    )
