"""Personalised bulk sending (mail merge): one token, long-lived pipelined sessions, per-recipient results.

Rows stream through: each is rendered, built, sent and forgotten, so memory does not grow with the size of
the messages. Every row ends in exactly one bucket of the :class:`BulkReport`: accepted, refused (with the
server's reply), invalid (bad address or template, never sent), skipped (delivered by an earlier try),
unknown (the connection broke after the message was handed over, so HVE may or may not have it), or not sent
(the run stopped first). The state of each row is kept in one place, the
:class:`~airflow_provider_hve.bulk.ledger.RowLedger`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_hve.bulk.delivery_log import UNKNOWN_MARK, DeliveryLog, TaskStateDeliveryLog, delivery_key
from airflow_provider_hve.bulk.ledger import RowLedger
from airflow_provider_hve.bulk.report import BulkReport, Progress
from airflow_provider_hve.bulk.rows import Row, RowState, Settled
from airflow_provider_hve.bulk.sessions import SessionWorker, SharedLedger, row_error, run_sessions
from airflow_provider_hve.bulk.stops import Killed, stop_error
from airflow_provider_hve.exceptions import HveConfigError

if TYPE_CHECKING:
    import jinja2

    from airflow_provider_hve.addresses import Mailbox
    from airflow_provider_hve.bulk.compiled import MergedMessage
    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.message import Attachment, OutgoingMessage

log = logging.getLogger(__name__)

MAX_SESSIONS = 8
"""Upper bound on parallel SMTP sessions per task; HVE limits concurrent connections per tenant."""
RETRY_BUDGET_SHARE = 0.05
"""Default retry budget of a run: this share of its rows (at least :data:`MIN_RETRY_BUDGET`)."""
MIN_RETRY_BUDGET = 20
FIRST_ROWS_TRIED = 20
"""Rows tried before connecting: if this many fail in a row, the merge fails (a template error, not one row's data)."""
MIN_WRITE_AHEAD = 32
"""Fewest rows whose intent the delivery log writes ahead of the sessions at the start (``MailMerge._write_ahead``)."""
WRITE_AHEAD_GROWTH = 8
"""How far the distance may grow past its start while the sessions wait for the record (a slow metadata database)."""


def default_retry_budget(rows: int) -> int:
    """Return the default number of retries (resends after 4xx, reconnects) a run of ``rows`` may spend."""
    return max(MIN_RETRY_BUDGET, int(rows * RETRY_BUDGET_SHARE))


class MailMerge:
    """
    Render one message per row and send them all through HVE.

    :param hook: the HveHook (its connection, token provider and sessions).
    :param subject: subject template; sees ``recipient`` (the row) and ``context``.
    :param html_content: HTML template (autoescaped), or ``None``.
    :param text_content: plain-text template, or ``None`` (derived from the HTML; slower).
    :param address_key: the row key holding the recipient address.
    :param sessions: parallel SMTP sessions (1..8).
    :param rate_per_minute: at most this many messages a minute across sessions; ``None``: no limit.
    :param env: the Jinja environment (the DAG's, for its filters and template folder).
    :param context: extra template variables (the Airflow context).
    :param delivery_log: where delivered rows are remembered across retries.
    :param progress_interval: seconds between progress lines in the log.
    :param max_reconnects: how many times in a row a session may be re-opened after a broken connection
        without delivering a message in between.
    :param retry_budget: how many retries the whole run may spend: each message sent again after a 4xx and
        each reconnect costs one. ``None``: 5% of the rows, at least 20. Once spent, a recipient refused with
        a 4xx is reported as refused; a message deferred as a whole (HVE throttling) or a broken connection
        stops the run, and the rows not accepted are reported ``not_sent``.
    :param message_id_seed: what makes each row's Message-ID the same in every try of one task instance (the
        operator passes DAG, run, task and map index); ``None``: a new Message-ID per message.
    :param resend_unknown: send again the rows an earlier try handed over without HVE's answer (``unknown`` in
        its delivery log), under the same Message-ID; default: they stay ``unknown`` and are never resent.

    Example::

        report = MailMerge(HveHook(), subject="Hi {{ recipient.name }}", text_content="...").run(rows)
    """

    def __init__(
        self,
        hook: HveHook,
        *,
        subject: str,
        html_content: str | None = None,
        text_content: str | None = None,
        address_key: str = "email",
        from_email: str | None = None,
        reply_to: str | Iterable[str] | None = None,
        headers: Mapping[str, str] | None = None,
        attachments: Sequence[Attachment] = (),
        images: Mapping[str, str] | None = None,
        sessions: int = 2,
        rate_per_minute: float | None = None,
        env: jinja2.Environment | None = None,
        context: Mapping[str, Any] | None = None,
        delivery_log: DeliveryLog | None = None,
        progress_interval: float = 10.0,
        max_reconnects: int = 3,
        retry_budget: int | None = None,
        message_id_seed: str | None = None,
        resend_unknown: bool = False,
        max_recipients: int | None = None,
    ) -> None:
        _check_arguments(sessions, rate_per_minute, max_reconnects, retry_budget, html_content, text_content)
        self.hook = hook
        self.address_key = address_key
        self.from_email = from_email
        self.reply_to = reply_to
        self.headers = headers
        self.attachments = list(attachments)
        self.images = images
        self.sessions = sessions
        self.rate_per_minute = rate_per_minute
        self.context = dict(context or {})
        self.delivery_log = delivery_log
        self.progress_interval = progress_interval
        self.max_reconnects = max_reconnects
        self.retry_budget = retry_budget
        self.message_id_seed = message_id_seed
        self.resend_unknown = resend_unknown
        if max_recipients is not None and (isinstance(max_recipients, bool) or max_recipients < 1):
            raise HveConfigError(f"Argument 'max_recipients' is {max_recipients!r}; use 1 or more, or None for no cap.")
        self.max_recipients = max_recipients
        self.last_report: BulkReport | None = None
        self._shared: SharedLedger | None = None
        self._stop_requested = False
        self._templates = _Templates(env, subject, html_content, text_content)

    def run(self, rows: Sequence[Mapping[str, Any]]) -> BulkReport:
        """
        Validate every row, then send; return the report (nothing raised for per-recipient refusals).

        :raises HveConfigError: before connecting, if the templates fail for the first row.
        :raises HveAuthError: Entra or HVE refused the credential.
        """
        price = configured_price_per_million()
        if self.max_recipients is not None and len(rows) > self.max_recipients:
            raise HveConfigError(
                f"Argument 'max_recipients': the mail merge has {len(rows):,} rows, more than max_recipients="
                f"{self.max_recipients:,}. Nothing was sent. HVE bills each delivered recipient (estimated "
                f"{format_cost(len(rows), price)} for these rows) and counts them against the tenant's quota: check "
                f"the recipients, or raise max_recipients if the list is right."
            )
        log.info(
            "HVE mail merge of %d row(s): estimated cost at most %s if every row is delivered.",
            len(rows),
            format_cost(len(rows), price),
        )
        report = self.last_report = BulkReport(total=len(rows), price_per_million=price)
        started = time.monotonic()
        done_before = self.delivery_log.delivered() if self.delivery_log else set()
        writes_before, seconds_before = (
            (self.delivery_log.writes, self.delivery_log.write_seconds)
            if isinstance(self.delivery_log, TaskStateDeliveryLog)
            else (0, 0.0)
        )
        plan = self._plan(rows, done_before)
        verdicts, first = _up_to_first_row(plan)
        build: Callable[[Row], OutgoingMessage | MergedMessage] = self._build
        if first is not None:
            first = self._first_that_builds(first, plan, verdicts)
            build = self.row_builder(first)
        ledger = RowLedger(
            len(rows),
            itertools.chain(verdicts, [first] if first is not None else [], plan),
            retry_budget=self.retry_budget if self.retry_budget is not None else default_retry_budget(len(rows)),
            max_reconnects=self.max_reconnects,
            rate_interval=60.0 / self.rate_per_minute if self.rate_per_minute else 0.0,
            clock=time.monotonic,
            write_ahead=self._write_ahead() if self.delivery_log is not None else 0,
            write_ahead_cap=WRITE_AHEAD_GROWTH * self._write_ahead(),
        )
        progress = Progress(len(rows), self.progress_interval)
        shared = self._shared = SharedLedger(ledger, self.delivery_log, progress)
        if self._stop_requested:  # told to stop (on_kill) while the rows and templates were being read
            ledger.stop(Killed())
        provider = self.hook.token_provider if first is not None else None
        requests_before = provider.requests_sent if provider is not None else 0
        try:
            if first is not None:
                report.sessions = min(self.sessions, len(rows))
                workers = [SessionWorker(shared, self.hook, build) for _ in range(report.sessions)]
                run_sessions(shared, workers, grace_seconds=self.hook.config.timeout + 5)
        finally:
            try:
                shared.change(lambda ledger: ledger.finish())
                progress.final(ledger.settled(), ledger.count(RowState.REFUSED))
                report.take_outcomes(ledger)
            finally:
                if provider is not None:
                    report.token_requests = provider.requests_sent - requests_before
                if isinstance(self.delivery_log, TaskStateDeliveryLog):
                    try:
                        self.delivery_log.flush(timeout=self.hook.config.timeout + 5)
                    finally:
                        report.record_writes = self.delivery_log.writes - writes_before
                        report.record_write_seconds = self.delivery_log.write_seconds - seconds_before
                        report.record_ahead_max = ledger.write_ahead_max
                elif self.delivery_log is not None:
                    self.delivery_log.flush()
                report.elapsed_seconds = time.monotonic() - started
        report.log_summary()
        if report.accepted:  # HVE took mail through this connection: the alerts kept for it go out now
            self.hook.flush_alert_outbox()
        if ledger.stopped is not None:
            raise stop_error(ledger.stopped, report.accepted)  # composed now, after every session: figures are final
        return report

    def _write_ahead(self) -> int:
        """
        How many rows past the one being taken get their intent journaled ahead at the start: what the sessions can
        have in flight (so the log's writer keeps ahead of them), at least :data:`MIN_WRITE_AHEAD`. The ledger
        adapts it (down to what the writer needs, up to :data:`WRITE_AHEAD_GROWTH` times this); a killed worker
        leaves at most the distance of that moment more rows unknown than were in flight.
        """
        return max(MIN_WRITE_AHEAD, self.sessions * self.hook.config.bdat_window)

    def stop(self) -> None:
        """
        Stop a running merge (the operator's ``on_kill``): nothing more is handed over, the sessions read the
        replies of what they handed over, and :meth:`run` returns to raise with the final figures.

        Safe from a signal handler: the ledger's lock is taken in a thread of its own, never in the handler.
        """
        self._stop_requested = True  # seen by run() if it has not built its ledger yet
        shared = self._shared
        if shared is not None:
            threading.Thread(
                target=shared.change, args=(lambda ledger: ledger.stop(Killed()),), name="hve-merge-stop", daemon=True
            ).start()

    # -- planning and rendering --------------------------------------------------------------------------

    def _first_that_builds(self, first: Row, plan: Iterator[Row | Settled], verdicts: list[Settled]) -> Row:
        """
        Return the first row whose message builds, before connecting: a broken template or sender shows up here.

        A row whose own data breaks its message is invalid, as it would be anywhere later in the run, and the
        next row is tried (its verdict goes to ``verdicts``). When no row builds, or the first
        :data:`FIRST_ROWS_TRIED` in a row all fail (then the template, not the data, is at fault), the run is
        refused with the first row's error: nothing was sent.
        """
        row: Row | None = first
        failure: Exception | None = None
        failures = 0
        while row is not None and failures < FIRST_ROWS_TRIED:
            try:
                self._build(row, check_sender=True)
                return row
            except Exception as exc:
                verdicts.append(Settled(row.index, RowState.INVALID, row.mailbox.addr_spec, row_error(row.index, exc)))
                failures += 1
                if failure is None:
                    failure = exc
                    log.warning(
                        "Row %d is invalid (%s); looking for a row that builds before connecting.", row.index, exc
                    )
            more, row = _up_to_first_row(plan)
            verdicts.extend(more)
        raise failure  # type: ignore[misc]  # set: the loop ran at least once, and returned on success

    def _plan(self, rows: Sequence[Mapping[str, Any]], done_before: set[str]) -> Iterator[Row | Settled]:
        """Yield each row to send, or its verdict, validating as it comes: nothing per row is kept in memory."""
        from airflow_provider_hve.addresses import (
            AddressError,
            accepted_domains_message,
            outside_domains,
            parse_mailbox,
        )

        accepted = self.hook.config.accepted_domains
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                yield Settled(index, RowState.INVALID, reason=f"is a {type(row).__name__}, not a dict")
                continue
            raw = row.get(self.address_key)
            if not raw:
                yield Settled(index, RowState.INVALID, reason=f"has no {self.address_key!r}")
                continue
            try:
                mailbox = parse_mailbox(str(raw))
            except AddressError as exc:
                yield Settled(index, RowState.INVALID, str(raw), reason=str(exc))
                continue
            if accepted and outside_domains([mailbox.addr_spec], accepted):
                reason = accepted_domains_message(
                    self.address_key, [mailbox.addr_spec], accepted, self.hook.hve_conn_id
                )
                yield Settled(index, RowState.INVALID, mailbox.addr_spec, reason=reason)
                continue
            key = delivery_key(index, mailbox.addr_spec)
            if key in done_before:
                yield Settled(index, RowState.SKIPPED, mailbox.addr_spec)
            elif UNKNOWN_MARK + key in done_before and not self.resend_unknown:
                # An earlier try handed it over and never heard back: still unknown, and never sent again.
                yield Settled(index, RowState.UNKNOWN, mailbox.addr_spec)
            else:
                yield Row(index, mailbox, key, row)

    def row_builder(self, first: Row) -> Callable[[Row], OutgoingMessage | MergedMessage]:
        """
        Return the function that renders and builds one row's message for this run.

        The message is compiled once (:mod:`~airflow_provider_hve.bulk.compiled`) from ``first``'s recipient;
        each row then costs its rendering and the encoding of its bodies. With inline ``images`` every message
        is built by the email package, as is a row whose content happens to contain a MIME boundary.
        """
        from airflow_provider_hve.bulk.compiled import compile_message

        if self.images:
            log.info("Inline images: every message of the merge is built by the email package (slower).")
            return self._build
        compiled = compile_message(
            functools.partial(self._email_package_build, check_sender=False),
            first=first.mailbox,
            html=self._templates.html is not None,
            text=True,  # given, or derived from the HTML per row
        )
        if compiled is None:
            log.info("This merge's message could not be compiled: every message is built by the email package.")
            return self._build

        def build(row: Row) -> OutgoingMessage | MergedMessage:
            subject, html, text = self._templates.render(self.context, row.data, row.index)
            merged = compiled.fill(row.mailbox, subject, html, text, message_id_left=self._message_id_left(row))
            if merged is not None:
                return merged
            log.debug("Row %d: its content holds a MIME boundary; built by the email package.", row.index)
            return self._stable_id(
                row,
                self._email_package_build(
                    to=[row.mailbox], subject=subject, html_content=html, text_content=text, check_sender=False
                ),
            )

        return build

    def _build(self, row: Row, *, check_sender: bool = False) -> OutgoingMessage:
        """Render and build one row's message with the email package (the reference the compiled path matches)."""
        subject, html, text = self._templates.render(self.context, row.data, row.index)
        return self._stable_id(
            row,
            self._email_package_build(
                to=[row.mailbox], subject=subject, html_content=html, text_content=text, check_sender=check_sender
            ),
        )

    def _message_id_left(self, row: Row) -> str | None:
        """The left part of the row's Message-ID, the same in every try of the task; ``None`` without a seed."""
        if self.message_id_seed is None:
            return None
        digest = hashlib.sha256(f"{self.message_id_seed}\0{row.index}\0{row.mailbox.addr_spec.lower()}".encode())
        return f"hve.{digest.hexdigest()[:40]}"

    def _stable_id(self, row: Row, outgoing: OutgoingMessage) -> OutgoingMessage:
        """``outgoing`` under the row's stable Message-ID (same domain), serialised again; as is without a seed."""
        left = self._message_id_left(row)
        if left is None:
            return outgoing
        from airflow_provider_hve.message import wire_bytes

        domain = outgoing.message_id.rstrip(">").rpartition("@")[2]
        outgoing.message.replace_header("Message-ID", f"<{left}@{domain}>")
        return dataclasses.replace(outgoing, payload=wire_bytes(outgoing.message))

    def _email_package_build(
        self,
        *,
        to: Sequence[Mailbox],
        subject: str,
        html_content: str | None,
        text_content: str | None,
        check_sender: bool,
    ) -> OutgoingMessage:
        return self.hook.build_message(
            to=list(to),
            subject=subject,
            html_content=html_content,
            text_content=text_content,
            from_email=self.from_email,
            reply_to=self.reply_to,
            headers=self.headers,
            images=self.images,
            attachments=self.attachments,
            check_sender=check_sender,
        )


DEFAULT_PRICE_PER_MILLION = 42.0
"""HVE's price in USD per million delivered recipients (from 1 June 2026); ``[hve] price_per_million_recipients``."""


def configured_price_per_million() -> float:
    """Return ``[hve] price_per_million_recipients`` from Airflow's configuration, or the published price."""
    try:
        from airflow.configuration import conf
    except ImportError:  # pragma: no cover - used without Airflow
        return DEFAULT_PRICE_PER_MILLION
    try:
        value = conf.getfloat("hve", "price_per_million_recipients", fallback=DEFAULT_PRICE_PER_MILLION)
    except Exception as exc:  # AirflowConfigException: not a number
        raise HveConfigError(f"[hve] price_per_million_recipients must be a number (USD): {exc}") from None
    if not value >= 0:
        raise HveConfigError(f"[hve] price_per_million_recipients is {value}; use 0 or more (USD).")
    return value


def format_cost(recipients: int, price_per_million: float) -> str:
    """``USD 0.0126 (300 recipients x USD 42 per million ...)``: the estimate, and how it was made."""
    return (
        f"USD {recipients * price_per_million / 1_000_000:.4f} ({recipients:,} recipients x USD "
        f"{price_per_million:g} per million, [hve] price_per_million_recipients)"
    )


def _up_to_first_row(plan: Iterator[Row | Settled]) -> tuple[list[Settled], Row | None]:
    """Read the plan up to its first row to send; return the verdicts before it, and that row."""
    verdicts: list[Settled] = []
    for planned in plan:
        if isinstance(planned, Row):
            return verdicts, planned
        verdicts.append(planned)
    return verdicts, None


def _check_arguments(
    sessions: int,
    rate_per_minute: float | None,
    max_reconnects: int,
    retry_budget: int | None,
    html_content: str | None,
    text_content: str | None,
) -> None:
    if not 1 <= sessions <= MAX_SESSIONS:
        raise HveConfigError(f"Argument 'sessions' is {sessions}; use 1 to {MAX_SESSIONS}.")
    if rate_per_minute is not None and rate_per_minute <= 0:
        raise HveConfigError(f"Argument 'rate_per_minute' is {rate_per_minute}; use a positive number.")
    if max_reconnects < 0:
        raise HveConfigError(f"Argument 'max_reconnects' is {max_reconnects}; use 0 or more.")
    if retry_budget is not None and retry_budget < 0:
        raise HveConfigError(f"Argument 'retry_budget' is {retry_budget}; use 0 or more, or None for the default.")
    if html_content is None and text_content is None:
        raise HveConfigError("Give 'html_content' or 'text_content' (or both): the messages have no body.")


class _Templates:
    """The three templates, compiled once; undefined variables are errors, HTML is autoescaped."""

    def __init__(self, env: jinja2.Environment | None, subject: str, html: str | None, text: str | None) -> None:
        import jinja2

        from airflow_provider_hve.templating import default_environment

        base = env or default_environment()
        plain = base.overlay(undefined=jinja2.StrictUndefined, autoescape=False)
        escaped = base.overlay(undefined=jinja2.StrictUndefined, autoescape=True)
        self.subject = plain.from_string(subject)
        self.html = escaped.from_string(html) if html is not None else None
        self.text = plain.from_string(text) if text is not None else None

    def render(
        self, context: Mapping[str, Any], row: Mapping[str, Any], index: int
    ) -> tuple[str, str | None, str | None]:
        variables = {**context, "recipient": row}
        rendered: dict[str, str | None] = {}
        for name, template in (("subject", self.subject), ("html_content", self.html), ("text_content", self.text)):
            try:
                rendered[name] = template.render(variables) if template is not None else None
            except Exception as exc:  # TemplateError, or the row's data (1 / 0, None formatted as a number...)
                raise HveConfigError(
                    f"Row {index}: the template of argument {name!r} failed: {type(exc).__name__}: {exc}. Each row "
                    f"is available as 'recipient' (e.g. {{{{ recipient.name }}}})."
                ) from exc
        return " ".join((rendered["subject"] or "").split()), rendered["html_content"], rendered["text_content"]
