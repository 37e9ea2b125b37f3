"""
Delivering the alerts kept in the outbox (:func:`flush`), each exactly once across concurrent flushers.

Three things flush the outbox: every successful send through the same connection (:func:`flush_after_send`, called
by :class:`~airflow_provider_hve.hooks.hve.HveHook` and the mail merge: one directory listing when it is empty), the
maintenance DAG (:func:`flush_until_empty`) and the command line (``python -m airflow_provider_hve.alerts flush``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import html
import logging
import re
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Protocol

from airflow_provider_hve.alerts.outbox import Claim, KeptAlert, Outbox, recipients_to_keep

if TYPE_CHECKING:
    from airflow_provider_hve.auth import TokenProvider
    from airflow_provider_hve.connection import HveConnectionConfig
    from airflow_provider_hve.smtp import HveSmtpSession, SendResult


class Sender(Protocol):
    """What a flush needs of a hook (:class:`~airflow_provider_hve.hooks.hve.HveHook`): its connection and tokens."""

    @property
    def hve_conn_id(self) -> str: ...

    @property
    def config(self) -> HveConnectionConfig: ...

    @property
    def token_provider(self) -> TokenProvider: ...


log = logging.getLogger(__name__)

AFTER_SEND_SECONDS = 10.0
"""A flush after a send claims no further alert after this many seconds; the rest waits for the next flush."""
RAISED_AT_HEADER = "X-HVE-Alert-Raised-At"
LATE_HEADER = "X-HVE-Alert-Late-By"
POSSIBLE_DUPLICATE_HEADER = "X-HVE-Alert-Possible-Duplicate"
_FLUSHING: contextvars.ContextVar[bool] = contextvars.ContextVar("hve_outbox_flushing", default=False)


@dataclass
class FlushReport:
    """What one flush did, alert by alert, in the words the CLI prints."""

    lines: list[str] = field(default_factory=list)
    delivered: int = 0
    possibly_duplicate: int = 0
    kept: int = 0
    dropped: int = 0
    busy: int = 0
    """Alerts another flusher was delivering."""
    left: int = 0
    """Alerts still in the outbox afterwards (queued or claimed)."""

    def merge(self, other: FlushReport) -> None:
        self.lines += other.lines
        self.delivered += other.delivered
        self.possibly_duplicate += other.possibly_duplicate
        self.kept += other.kept
        self.dropped += other.dropped
        self.busy += other.busy
        self.left = other.left

    def summary(self) -> str:
        return (
            f"delivered {self.delivered} (possible duplicates {self.possibly_duplicate}), still kept {self.kept}, "
            f"dropped {self.dropped}, being delivered by another flusher {self.busy}; {self.left} left in the outbox"
        )


def flush(
    conn_id: str | None = None,
    *,
    outbox: Outbox | None = None,
    hook: Sender | None = None,
    seconds: float | None = None,
) -> FlushReport:
    """
    Deliver the kept alerts, oldest first, each exactly once across concurrent flushers; never raises for an alert.

    One SMTP session per connection; no retry within the flush (the next flush is the retry). A connection whose
    HVE or credential fails keeps its alerts for the next flush. Each delivered alert carries when it was raised and
    how late it is (a first line and ``X-HVE-Alert-Raised-At`` / ``X-HVE-Alert-Late-By``), its Message-ID unchanged.

    :param conn_id: only the alerts of this connection; default: all.
    :param outbox: default: ``[hve] alert_dir``'s.
    :param hook: a hook of ``conn_id`` to reuse (its connection and token).
    :param seconds: claim no further alert after this long.
    """
    from airflow_provider_hve.exceptions import HveCancelledError, HveError, HveSendError

    outbox = outbox or Outbox.configured()
    report = FlushReport()
    started = time.monotonic()
    blocked: set[str] = set()
    sessions: dict[str, HveSmtpSession] = {}
    token = _FLUSHING.set(True)  # its own sends never start another flush
    try:
        for entry in outbox.entries(conn_id):
            if seconds is not None and time.monotonic() - started > seconds:
                break
            if entry.tag in blocked:
                continue
            claim = outbox.claim(entry)
            if claim is None:  # another flusher has it
                report.busy += 1
                continue
            alert = claim.alert
            try:
                session = sessions.get(alert.conn_id) or sessions.setdefault(
                    alert.conn_id, _session(hook, alert.conn_id)
                )
                result = session.send(
                    for_delivery(alert, time.time(), possibly_duplicate=claim.stale),
                    alert.recipients,
                    envelope_from=alert.sender,
                    retries=0,
                )
            except HveCancelledError as exc:
                claim.release(str(exc))
                report.kept += 1
                break
            except HveError as exc:
                later = recipients_to_keep(exc, alert.recipients)
                if later or not isinstance(exc, HveSendError):  # HVE or the credential failed, not this alert
                    blocked.add(entry.tag)
                    if not later and getattr(exc, "in_flight", None):
                        claim.drop()
                        report.dropped += 1
                        unknown = f"NOT DELIVERED (outcome unknown, not sent again) {_what(alert)}: {exc}"
                        _say(report, log.error, unknown)
                        continue
                    claim.release(str(exc), later or None)
                    report.kept += 1
                    if later:
                        _say(report, log.warning, f"still kept {_what(alert)}: {_first_sentence(str(exc))}")
                    else:  # refused for good (a wrong secret: 535): kept, as credentials get fixed, but loudly
                        refused = (
                            f"still kept, REFUSED (attempt {alert.attempts + 1}; fix the connection) {_what(alert)}"
                        )
                        _say(report, log.error, f"{refused}: {exc}")
                    continue
                claim.drop()
                report.dropped += 1
                _say(report, log.error, f"DROPPED (refused for good) {_what(alert)}: {exc}")
                continue
            except Exception as exc:  # unexpected: the alert waits, the flush goes on
                claim.release(f"{type(exc).__name__}: {exc}")
                report.kept += 1
                log.exception("HVE alert outbox: delivering %s failed", alert.message_id)
                continue
            except BaseException as exc:  # a task timeout, SIGTERM, Ctrl-C: the alert waits for the next flush
                claim.release(f"interrupted: {type(exc).__name__}: {exc}")
                raise
            _delivered(claim, result, report)
    finally:
        _FLUSHING.reset(token)
        for session in sessions.values():
            session.close()
    report.left = len(outbox.entries(conn_id))
    return report


def _delivered(claim: Claim, result: SendResult, report: FlushReport) -> None:
    alert = claim.alert
    later = [a for a, (code, _) in result.refused.items() if 400 <= code < 500]
    if later:
        claim.release("; ".join(f"{a}: {c} {r}" for a, (c, r) in result.refused.items()), later)
        report.kept += 1
    else:
        claim.delivered()
    late = _duration(time.time() - alert.raised_at)
    report.delivered += 1
    if claim.stale:
        report.possibly_duplicate += 1
        _say(
            report,
            log.warning,
            f"delivered again, POSSIBLY A DUPLICATE (a flusher that claimed it did not finish; same Message-ID) "
            f"{_what(alert)}, {late} late",
        )
    else:
        _say(report, log.info, f"delivered {_what(alert)}, {late} late")


def flush_after_send(hook: Sender) -> None:
    """
    Flush the alerts of ``hook``'s connection: HVE just accepted a message through it. Never raises an Exception.

    One directory listing when the outbox holds nothing for this connection; at most :data:`AFTER_SEND_SECONDS` of
    claiming otherwise. An interruption that is not an ``Exception`` (Airflow's task timeout, SIGTERM, Ctrl-C)
    during this flush releases the alert being delivered (it waits for the next flush, nothing is lost) and is
    raised: the task's own mail was accepted already, but a task told to stop stops.
    """
    if _FLUSHING.get():
        return
    try:
        outbox = Outbox.configured()
        if not outbox.entries(hook.hve_conn_id):
            return
        report = flush(hook.hve_conn_id, outbox=outbox, hook=hook, seconds=AFTER_SEND_SECONDS)
        if report.delivered or report.dropped:
            log.info("HVE alert outbox flushed after a send: %s.", report.summary())
    except Exception as exc:
        log.warning("HVE alert outbox: the flush after a send failed (the send itself succeeded): %s", exc)
    except BaseException as exc:
        log.warning(
            "HVE alert outbox: the flush after a send was interrupted (%s); the send itself succeeded, and an "
            "alert being delivered, if any, was released for the next flush.",
            type(exc).__name__,
        )
        raise


def flush_until_empty(
    conn_id: str | None = None, *, seconds: float = 280.0, poll: float = 20.0, outbox: Outbox | None = None
) -> FlushReport:
    """
    Flush, and while alerts are left, flush again every ``poll`` seconds for up to ``seconds``.

    What the maintenance DAG runs: its run ends at once when the outbox is empty, and during an outage it stays to
    deliver within ``poll`` seconds of HVE's return.
    """
    outbox = outbox or Outbox.configured()
    total = FlushReport()
    ends = time.monotonic() + seconds
    while True:
        total.merge(flush(conn_id, outbox=outbox))
        remaining = ends - time.monotonic()
        if not total.left or remaining <= 0:
            return total
        time.sleep(min(poll, remaining))  # the last try at the very end: the next run starts soon after


def for_delivery(alert: KeptAlert, now: float, *, possibly_duplicate: bool = False) -> EmailMessage:
    """
    Return the kept message as it goes out now: a first line and headers say when it was raised and how late it is.

    The Message-ID, the Date (when it was raised) and everything else stay as kept.
    """
    from email.parser import BytesParser

    from airflow_provider_hve.message import POLICY

    message = BytesParser(policy=POLICY).parsebytes(alert.payload)
    raised = dt.datetime.fromtimestamp(alert.raised_at, tz=dt.timezone.utc)
    late = max(0.0, now - alert.raised_at)
    line = late_line(alert.raised_at, now)
    message[RAISED_AT_HEADER] = raised.isoformat(timespec="seconds")
    message[LATE_HEADER] = f"{late:.0f} s"
    if possibly_duplicate:
        message[POSSIBLE_DUPLICATE_HEADER] = "yes"
    for part in list(message.walk()):
        if part.is_multipart() or part.is_attachment():
            continue
        kind = part.get_content_type()
        if kind == "text/plain":
            part.set_content(f"{line}\n\n{part.get_content()}", subtype="plain")
        elif kind == "text/html":
            part.set_content(_html_with_line(str(part.get_content()), line), subtype="html")
    return message


def late_line(raised_at: float, now: float) -> str:
    """``Raised at 2026-12-07 13:02:11 UTC; delivered 10 min 12 s late (HVE could not take it then).``"""
    raised = dt.datetime.fromtimestamp(raised_at, tz=dt.timezone.utc)
    return (
        f"Raised at {raised:%Y-%m-%d %H:%M:%S} UTC; delivered {_duration(now - raised_at)} late "
        f"(HVE could not take it then)."
    )


def _html_with_line(body: str, line: str) -> str:
    note = (
        '<p style="margin:0 0 12px 0;padding:8px 12px;background:#fff4ce;border:1px solid #f0c36d;'
        f'font-family:Segoe UI,Arial,sans-serif;font-size:13px;color:#323130">{html.escape(line)}</p>'
    )
    opening = re.search(r"<body\b[^>]*>", body, flags=re.IGNORECASE)
    if opening is None:
        return note + body
    return body[: opening.end()] + note + body[opening.end() :]


def _session(hook: Sender | None, conn_id: str) -> HveSmtpSession:
    from airflow_provider_hve.auth import token_provider
    from airflow_provider_hve.connection import load_connection_config
    from airflow_provider_hve.smtp import HveSmtpSession

    if hook is not None and hook.hve_conn_id == conn_id:
        return HveSmtpSession(hook.config, hook.token_provider.get_token)
    config = load_connection_config(conn_id)
    return HveSmtpSession(config, token_provider(config).get_token)


def _say(report: FlushReport, logger: object, line: str) -> None:
    report.lines.append(line)
    logger("HVE alert outbox: %s", line)  # type: ignore[operator]


def _what(alert: KeptAlert) -> str:
    raised = dt.datetime.fromtimestamp(alert.raised_at, tz=dt.timezone.utc)
    return (
        f"{alert.message_id} {alert.subject!r} to {', '.join(alert.recipients)} (connection {alert.conn_id!r}, "
        f"raised at {raised:%Y-%m-%d %H:%M:%S} UTC by {alert.origin})"
    )


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _first_sentence(text: str) -> str:
    first = text.split(". ", 1)[0].strip()
    return first if first.endswith(".") else f"{first}."
