"""Personalised bulk sending (mail merge): one token, long-lived pipelined sessions, per-recipient results.

Rows stream through: each is rendered, built, sent and forgotten, so memory does not grow with the number
of recipients. Every row ends in exactly one bucket of the :class:`BulkReport`: accepted, refused (with the
server's reply), invalid (bad address or template, never sent), skipped (delivered by an earlier try), or
unknown (the connection broke after the message was handed over, so HVE may or may not have it).
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_hve.exceptions import HveConfigError, HveConnectionError, HveSendError

if TYPE_CHECKING:
    import jinja2

    from airflow_provider_hve.addresses import Mailbox
    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.message import Attachment, OutgoingMessage
    from airflow_provider_hve.pipeline import Delivery, Pipeline

log = logging.getLogger(__name__)

MAX_SESSIONS = 8
"""Upper bound on parallel SMTP sessions per task; HVE limits concurrent connections per tenant."""
TRANSIENT_RETRIES = 3
"""How many more times a message refused with a 4xx (temporary) reply is sent, with backoff, before it is
reported as refused."""
RETRY_BUDGET_SHARE = 0.05
"""Default retry budget of a run: this share of its rows (at least :data:`MIN_RETRY_BUDGET`)."""
MIN_RETRY_BUDGET = 20
MAX_THROTTLE_PAUSE = 30.0
"""Longest pause of the whole run, in seconds, after HVE throttled it (432, or a 4xx to a whole message)."""
MAX_RECONNECT_DELAY = 8.0


def default_retry_budget(rows: int) -> int:
    """Return the default number of retries (resends after 4xx, reconnects) a run of ``rows`` may spend."""
    return max(MIN_RETRY_BUDGET, int(rows * RETRY_BUDGET_SHARE))


class DeliveryLog(Protocol):
    """Remembers which rows were delivered, so a retried task does not send them again."""

    def delivered(self) -> set[str]:
        """Return the keys recorded by earlier tries."""

    def record(self, keys: Sequence[str]) -> None:
        """Remember ``keys`` as delivered (may buffer; see :meth:`flush`)."""

    def flush(self) -> None:
        """Persist what :meth:`record` buffered."""


@dataclass
class BulkReport:
    """Counts and per-recipient outcomes of a bulk send; :meth:`as_dict` is its XCom form."""

    total: int = 0
    accepted: int = 0
    skipped: int = 0
    refused: dict[str, list[Any]] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    not_sent: list[str] = field(default_factory=list)
    """Rows not attempted because the run stopped early (see the error); a retry sends them."""
    sessions: int = 0
    reconnects: int = 0
    retried: int = 0
    """Messages sent again after a temporary (4xx) refusal."""
    throttled: int = 0
    """Times HVE throttled the run (432, or a 4xx to a whole message): every session paused."""
    retry_budget: int = 0
    retry_budget_left: int = 0
    token_requests: int = 0
    elapsed_seconds: float = 0.0

    @property
    def messages_per_second(self) -> float:
        done = self.accepted + len(self.refused)
        return done / self.elapsed_seconds if self.elapsed_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "accepted": self.accepted,
            "refused_count": len(self.refused),
            "refused": self.refused,
            "invalid": self.invalid,
            "unknown": self.unknown,
            "not_sent": self.not_sent,
            "skipped_already_delivered": self.skipped,
            "sessions": self.sessions,
            "reconnects": self.reconnects,
            "retried_after_4xx": self.retried,
            "throttled": self.throttled,
            "retry_budget": self.retry_budget,
            "retry_budget_left": self.retry_budget_left,
            "token_requests": self.token_requests,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "messages_per_second": round(self.messages_per_second, 1),
        }


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
        self.hook = hook
        self.address_key = address_key
        self.from_email = from_email
        self.reply_to = reply_to
        self.headers = headers
        self.attachments = list(attachments)
        self.images = images
        self.sessions = sessions
        self.context = dict(context or {})
        self.delivery_log = delivery_log
        self.progress_interval = progress_interval
        self.max_reconnects = max_reconnects
        self.retry_budget = retry_budget
        self._limiter = _RateLimiter(rate_per_minute)
        self.last_report: BulkReport | None = None
        self._templates = _Templates(env, subject, html_content, text_content)

    def run(self, rows: Sequence[Mapping[str, Any]]) -> BulkReport:
        """
        Validate every row, then send; return the report (nothing raised for per-recipient refusals).

        :raises HveConfigError: before connecting, if the templates fail for the first row.
        :raises HveAuthError: Entra or HVE refused the credential.
        """
        report = self.last_report = BulkReport(total=len(rows))
        started = time.monotonic()
        done_before = self.delivery_log.delivered() if self.delivery_log else set()
        plan = self._plan(rows, done_before, report)
        first = next(plan, None)
        try:
            if first is not None:
                provider = self.hook.token_provider
                before = provider.requests_sent
                # Template and sender problems show up once, before any connection.
                self._render(first[0], first[1], first[3], check_sender=True)
                work = itertools.chain([first], plan)
                budget = self.retry_budget if self.retry_budget is not None else default_retry_budget(len(rows))
                state = _RunState(report, work, len(rows), self.delivery_log, self.progress_interval, budget)
                try:
                    self._run_sessions(state)
                finally:
                    report.not_sent = state.leftover()
                    report.token_requests = provider.requests_sent - before
        finally:
            if self.delivery_log is not None:
                self.delivery_log.flush()
            report.elapsed_seconds = time.monotonic() - started
        log.info(
            "HVE mail merge done: %d accepted, %d refused, %d invalid, %d unknown, %d not sent, %d skipped "
            "(already delivered) of %d, in %.1f s (%.1f msg/s) over %d session(s), %d token request(s), "
            "%d reconnect(s), %d resent after 4xx, throttled %d time(s), retry budget %d of %d left.",
            report.accepted,
            len(report.refused),
            len(report.invalid),
            len(report.unknown),
            len(report.not_sent),
            report.skipped,
            report.total,
            report.elapsed_seconds,
            report.messages_per_second,
            report.sessions,
            report.token_requests,
            report.reconnects,
            report.retried,
            report.throttled,
            report.retry_budget_left,
            report.retry_budget,
        )
        return report

    # -- planning and rendering --------------------------------------------------------------------------

    def _plan(
        self, rows: Sequence[Mapping[str, Any]], done_before: set[str], report: BulkReport
    ) -> Iterator[tuple[int, Mapping[str, Any], str, Mailbox]]:
        """Yield the rows to send, validating each as it comes: nothing per row is kept in memory."""
        from airflow_provider_hve.addresses import AddressError, parse_mailbox

        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                report.invalid[f"row {index}"] = f"is a {type(row).__name__}, not a dict"
                continue
            raw = row.get(self.address_key)
            if not raw:
                report.invalid[f"row {index}"] = f"has no {self.address_key!r}"
                continue
            try:
                mailbox = parse_mailbox(str(raw))
            except AddressError as exc:
                report.invalid[f"row {index}"] = str(exc)
                continue
            key = delivery_key(index, mailbox.addr_spec)
            if key in done_before:
                report.skipped += 1
                continue
            if UNKNOWN_MARK + key in done_before:
                # An earlier try handed it over and never heard back: still unknown, and never sent again.
                report.unknown.append(mailbox.addr_spec)
                continue
            yield (index, row, key, mailbox)

    def _render(
        self, index: int, row: Mapping[str, Any], to: Mailbox, *, check_sender: bool = False
    ) -> OutgoingMessage:
        subject, html, text = self._templates.render(self.context, row, index)
        return self.hook.build_message(
            to=[to],
            subject=subject,
            html_content=html,
            text_content=text,
            from_email=self.from_email,
            reply_to=self.reply_to,
            headers=self.headers,
            images=self.images,
            attachments=self.attachments,
            check_sender=check_sender,
        )

    # -- sending -------------------------------------------------------------------------------------------

    def _run_sessions(self, state: _RunState) -> None:
        count = min(self.sessions, state.total)
        state.report.sessions = count
        state.active = count
        # Waited for through events, not Thread.join(): on Python 3.11 a join() interrupted by an exception (the
        # task's timeout, SIGTERM) marks the thread as stopped while it still runs, and later joins return at
        # once (CPython gh-90882).
        finished = [threading.Event() for _ in range(count)]
        threads = [
            threading.Thread(target=self._worker, args=(state, done), name=f"hve-session-{n}", daemon=True)
            for n, done in enumerate(finished)
        ]
        for thread in threads:
            thread.start()
        try:
            for done in finished:
                done.wait()
        except BaseException as exc:
            # Interrupted (execution_timeout, SIGTERM): stop the sessions and let them read the replies of
            # what they handed over, so the report and the delivery log stay true; then go on failing.
            state.stop(exc)
            deadline = time.monotonic() + self.hook.config.timeout + 5
            for done in finished:
                done.wait(timeout=max(deadline - time.monotonic(), 0))
            raise
        finally:
            state.finish()
        if state.stopped is not None:
            raise state.final_error()  # the first reason the run stopped, with the final figures

    def _worker(self, state: _RunState, finished: threading.Event) -> None:
        try:
            self._work(state)
        finally:
            finished.set()

    def _work(self, state: _RunState) -> None:
        failures = 0  # broken sessions in a row without a delivered message in between
        item = state.next()
        try:
            while item is not None and state.stopped is None:
                # From here the session owns the row: it sends it, or puts it back in the queue.
                first, item = item, None
                try:
                    if self._session(state, first):
                        return
                    failures = 0
                except _Reconnect as reconnect:
                    # This break counts; earlier ones count only if no message got through since.
                    failures = 1 if reconnect.progressed else failures + 1
                    if not self._before_reconnect(state, reconnect, failures):
                        return
                item = state.next()
        except BaseException as exc:
            state.stop(exc)
        finally:
            if item is not None:
                state.requeue_item(item)  # taken, never sent: the report lists it as not sent
            state.leave()

    def _session(self, state: _RunState, item: _Item) -> bool:
        """
        Send over one session until the work runs out or the run stops (False), or until this session
        should leave because HVE has too many connections and other sessions go on (True).

        The row in hand is always accounted for: sent, or put back in the queue when the session ends early.

        :raises _Reconnect: the session broke, or HVE answered ``432`` and no other session is left.
        """
        progressed = False
        # The row in hand that no pipeline has yet. Once given to a pipeline, a row is accounted for by it:
        # completed, or listed as in flight or unsent when the connection breaks.
        held: _Item | None = item
        pipeline: Pipeline | None = None
        try:
            with self.hook.smtp_session() as session:
                pipeline = session.pipeline()
                try:
                    while held is not None and state.stopped is None:
                        index, row, _key, mailbox = held
                        state.wait_turn(index)
                        state.pace()
                        if state.stopped is not None:
                            break
                        try:
                            outgoing = self._render(index, row, mailbox)
                        except Exception as exc:  # the row's data broke its template or message: that row only
                            state.invalid(index, _row_error(index, exc))
                        else:
                            self._limiter.wait(state.stop_event)
                            if state.stopped is not None:
                                break  # stopped while this session waited for its turn: hand nothing over
                            message_id = str(outgoing.message["Message-ID"])
                            state.sent(held)
                            submitted, held = held, None
                            outcome = state.completed(
                                pipeline.submit(submitted[0], outgoing.payload, outgoing.recipients, message_id)
                            )
                            progressed |= outcome.accepted > 0
                            if outcome.too_many_connections:
                                progressed |= state.completed(pipeline.flush()).accepted > 0
                                if state.leave_if_others_go_on():
                                    log.warning("HVE has too many connections from this account: one session leaves.")
                                    return True
                                raise _Reconnect(progressed, "HVE answered 432 4.3.2 (too many connections)")
                        held = state.next(leave_if_empty=False)
                        if held is None:
                            # The last outcomes may send rows back (temporary refusals): read them first.
                            progressed |= state.completed(pipeline.flush()).accepted > 0
                            held = state.next()
                    if held is not None:
                        state.requeue_item(held)  # the run stopped before it went: reported as not sent
                        held = None
                    # Stopped (quota, sender refused...): read what is on its way, hand over nothing more.
                    state.completed(pipeline.flush() if state.stopped is None else pipeline.drain())
                except HveSendError as exc:
                    # HVE refused the sender: the outcomes read before it count, then the run stops.
                    state.completed(exc.completed)
                    raise
            return False
        except HveConnectionError as exc:
            # Handed over without a final reply: unknown, never resent (no duplicates). Certainly not
            # accepted: back in the queue (nothing lost).
            progressed |= state.completed(exc.completed).accepted > 0
            state.unknown(exc.in_flight)
            state.requeue(exc.unsent)
            if held is not None:
                state.requeue_item(held)
            raise _Reconnect(progressed, str(exc)) from exc
        except _Reconnect:
            raise
        except BaseException:
            # Auth refused, sender refused, something unexpected: the run stops. The row in hand is reported as
            # not sent; messages handed over without an answer are unknown (HVE may have them), never resent.
            if held is not None:
                state.requeue_item(held)
            if pipeline is not None:
                state.unknown([delivery.key for delivery in pipeline.in_flight])
                pipeline.abort()
            raise

    def _before_reconnect(self, state: _RunState, reconnect: _Reconnect, failures: int) -> bool:
        """Spend a retry and wait (backoff with jitter); return False when the run must stop instead."""
        if state.stopped is not None:
            return False  # another session stopped the run; its error is the one raised
        cause = reconnect.cause
        if failures > self.max_reconnects:
            error: BaseException = HveConnectionError(
                f"{cause} Giving up: {failures} broken session(s) in a row (max_reconnects={self.max_reconnects}). "
                f"Rows not sent are listed in the report; a retry of the "
                f"task sends them and skips the delivered ones."
            )
        elif not state.spend_retry():
            error = HveConnectionError(
                f"The run's retry budget ({state.report.retry_budget}) is spent; the last failure: {cause}. HVE "
                f"keeps failing: check its status and the reply codes in the log. Rows not sent are listed in the "
                f"report; a retry of the task sends them and skips the delivered ones."
            )
        else:
            state.report.reconnects += 1
            base = min(2.0 ** max(failures - 1, 0), MAX_RECONNECT_DELAY)
            delay = base / 2 + random.uniform(0, base / 2)  # jitter: sessions that broke together spread out
            log.warning(
                "HVE session broke (%s); reconnecting in %.1f s (%d in a row, max_reconnects=%d).",
                cause,
                delay,
                failures,
                self.max_reconnects,
            )
            state.sleep(delay)
            return True
        state.stop(error)
        return False


_Item = tuple[int, Mapping[str, Any], str, "Mailbox"]


def _row_error(index: int, exc: Exception) -> str:
    if isinstance(exc, HveConfigError):
        return str(exc)
    return f"Row {index}: building its message failed: {type(exc).__name__}: {exc}."


class _Reconnect(Exception):
    """The session ended early; the worker opens a new one (internal to :class:`MailMerge`)."""

    def __init__(self, progressed: bool, cause: str) -> None:
        super().__init__(cause)
        self.progressed = progressed
        self.cause = cause


@dataclass
class _Outcome:
    """What a batch of completed deliveries means for the session that read it."""

    accepted: int = 0
    too_many_connections: bool = False


class TaskStateDeliveryLog:
    """
    A :class:`DeliveryLog` in Airflow's ``task_state_store`` (Airflow 3.3+): survives retries of the task.

    Keys are written in chunks (``<prefix>/<n>``) so each write stays small; buffered keys are written
    every ``flush_every`` records or ``flush_seconds``, and always by :meth:`flush` (also when the task
    fails). A task killed outright can lose at most the unflushed window: those rows may be sent again.

    :param store: ``context["task_state_store"]``.
    :param prefix: key prefix; one per operator.
    """

    CHUNK = 500

    def __init__(self, store: Any, prefix: str = "hve_mail_merge", flush_every: int = 50, flush_seconds: float = 1.0):
        self._store = store
        self._prefix = prefix
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._chunks = int(store.get(f"{prefix}/chunks", 0) or 0)
        self._current: list[str] = list(store.get(f"{prefix}/{self._chunks}", []) or [])
        self._buffered = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def delivered(self) -> set[str]:
        keys: set[str] = set(self._current)
        for n in range(self._chunks):
            keys.update(self._store.get(f"{self._prefix}/{n}", []) or [])
        return keys

    def record(self, keys: Sequence[str]) -> None:
        with self._lock:
            self._current.extend(keys)
            self._buffered += len(keys)
            due = self._buffered >= self._flush_every or time.monotonic() - self._last >= self._flush_seconds
            if due:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buffered:
            return
        while len(self._current) >= self.CHUNK:
            full, self._current = self._current[: self.CHUNK], self._current[self.CHUNK :]
            self._store.set(f"{self._prefix}/{self._chunks}", full)
            self._chunks += 1
            self._store.set(f"{self._prefix}/chunks", self._chunks)
        self._store.set(f"{self._prefix}/{self._chunks}", self._current)
        self._buffered = 0
        self._last = time.monotonic()


UNKNOWN_MARK = "?"
"""Prefix of a delivery-log key whose outcome is unknown (handed over, no final reply)."""


def delivery_key(index: int, address: str) -> str:
    """Identify a row across tries: its position and its address."""
    return f"{index}:{address.lower()}"


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


class _RateLimiter:
    """Spread message starts evenly: at most ``per_minute`` a minute across all sessions."""

    def __init__(self, per_minute: float | None) -> None:
        self._interval = 60.0 / per_minute if per_minute else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        """Wait for this session's turn; return early when ``stop`` is set (the caller checks it then)."""
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            stop.wait(start - now)


class _RunState:
    """Shared by the session threads: the work queue, pacing, the retry budget, the report, the delivery log."""

    def __init__(
        self,
        report: BulkReport,
        work: Iterator[_Item],
        total: int,
        delivery_log: DeliveryLog | None,
        progress_interval: float,
        retry_budget: int,
    ) -> None:
        self.report = report
        self.total = total
        self._iter = work
        self._again: list[_Item] = []  # not accepted: to send again
        self._later: list[_Item] = []  # refused with 4xx: after a backoff
        self._tries: dict[int, int] = {}  # index -> temporary refusals so far
        self._not_before: dict[int, float] = {}  # index -> monotonic time before which it is not sent again
        self._items: dict[Hashable, _Item] = {}  # given to a pipeline
        self._lock = threading.Lock()
        self._log = delivery_log
        self._progress = _Progress(total, progress_interval)
        self.stopped: BaseException | None = None
        self.active = 0  # sessions still working
        self._left: set[int] = set()  # threads that left
        self._pause_until = 0.0  # the whole run waits until then (HVE throttled it)
        self._pause_began = 0.0
        self._throttle_streak = 0  # throttling pauses since the last accepted message
        self._sent_at: dict[Hashable, float] = {}  # index -> when it was given to a pipeline
        self._stop = threading.Event()
        self._describe_stop: Callable[[], BaseException] | None = None
        report.retry_budget = report.retry_budget_left = retry_budget

    # -- the queue -----------------------------------------------------------------------------------------

    def next(self, *, leave_if_empty: bool = True) -> _Item | None:
        """
        Return the next row to send, or ``None`` when none is left.

        With ``leave_if_empty`` the calling session leaves the run when none is left, in the same step, so
        no row can be queued again for a session that already left: see :meth:`leave_if_others_go_on`.
        """
        with self._lock:
            item = self._next_locked()
            if item is None and leave_if_empty:
                self._leave_locked()
            return item

    def _next_locked(self) -> _Item | None:
        if self._again:
            return self._again.pop()
        now = time.monotonic()
        due = [item for item in self._later if self._not_before.get(item[0], 0.0) <= now]
        if due:
            self._later.remove(due[0])
            return due[0]
        fresh = next(self._iter, None)
        if fresh is not None or not self._later:
            return fresh
        # Only messages waiting out a backoff are left: take the earliest (wait_turn sleeps until then).
        earliest = min(self._later, key=lambda item: self._not_before.get(item[0], 0.0))
        self._later.remove(earliest)
        return earliest

    def leave(self) -> None:
        """The calling session stops working (idempotent)."""
        with self._lock:
            self._leave_locked()

    def leave_if_others_go_on(self) -> bool:
        """Leave if another session is still working (it will take whatever comes back to the queue)."""
        with self._lock:
            if self.active - 1 < 1:
                return False
            self._leave_locked()
            return True

    def _leave_locked(self) -> None:
        thread = threading.get_ident()
        if thread not in self._left:
            self._left.add(thread)
            self.active -= 1

    def sent(self, item: _Item) -> None:
        with self._lock:
            self._items[item[0]] = item
            self._sent_at[item[0]] = time.monotonic()

    def requeue(self, indexes: list[object]) -> None:
        with self._lock:
            self._again.extend(self._items.pop(index) for index in indexes if index in self._items)

    def requeue_item(self, item: _Item) -> None:
        with self._lock:
            self._items.pop(item[0], None)
            self._again.append(item)

    # -- outcomes ------------------------------------------------------------------------------------------

    def completed(self, deliveries: list[Delivery]) -> _Outcome:
        """Record finished messages; return what they mean for the session that read them."""
        from airflow_provider_hve.diagnostics import is_session_wide, smtp_reply_hint

        outcome = _Outcome()
        if not deliveries:
            return outcome
        with self._lock:
            delivered = []
            for delivery in deliveries:
                item = self._items.pop(delivery.key)
                sent_at = self._sent_at.pop(delivery.key, 0.0)
                key = item[2]
                whole = delivery.whole
                # The whole message put off (throttling), as opposed to refused or refused per recipient.
                deferred = whole if whole is not None and 400 <= whole[0] < 500 else None
                if deferred is not None:
                    self._throttled_locked(*deferred, sent_at)
                    outcome.too_many_connections |= deferred[0] == 432 or deferred[1].startswith("4.3.2")
                if self._retry_later(item, delivery):
                    continue
                out_of_retries = self.report.retry_budget_left <= 0 or self.stopped is not None
                if deferred is not None and out_of_retries:
                    # HVE keeps deferring whole messages and the retries are spent: stop rather than grind on. The
                    # message was not accepted and may go later: not sent, not refused.
                    self._again.append(item)

                    def keeps_deferring(deferred: tuple[int, str] = deferred) -> BaseException:
                        return HveConnectionError(
                            f"HVE keeps deferring messages ({deferred[0]} {deferred[1]}) and the run's retry budget "
                            f"({self.report.retry_budget}) is spent, so the run stopped: {self.report.accepted} "
                            f"accepted. Rows not sent are listed in the report (not_sent); a retry of the "
                            f"task later sends them and skips the delivered ones.{smtp_reply_hint(*deferred)}"
                        )

                    self._stop_locked(keeps_deferring(), keeps_deferring)
                    continue
                if delivery.accepted:
                    self.report.accepted += 1
                    outcome.accepted += 1
                    self._throttle_streak = 0
                    delivered.append(key)
                for refused, (code, reply) in delivery.refused.items():
                    self.report.refused[refused] = [code, reply]
                if whole is not None and is_session_wide(*whole) and self.stopped is None:

                    def applies_to_all(
                        delivery: Delivery = delivery, code: int = whole[0], reply: str = whole[1]
                    ) -> BaseException:
                        return HveSendError(
                            f"HVE refused message {delivery.message_id} with {code} {reply}."
                            f"{smtp_reply_hint(code, reply)} This applies to every message, so the run stopped: "
                            f"{self.report.accepted} accepted. "
                            f"Rows not sent are listed in the report (not_sent); a retry of the task sends them and "
                            f"skips the delivered ones.",
                            smtp_code=code,
                        )

                    self._stop_locked(applies_to_all(), applies_to_all)
            self._progress.update(self._done(), len(self.report.refused))
        if self._log is not None and delivered:
            self._log.record(delivered)
        return outcome

    def _throttled_locked(self, code: int, reply: str, sent_at: float) -> None:
        """HVE deferred a whole message (throttling): every session pauses, longer each time in a row."""
        now = time.monotonic()
        if now < self._pause_until or sent_at < self._pause_began:
            return  # sent before the current pause began: no news, the pause already answers it
        self._throttle_streak += 1
        self.report.throttled += 1
        base = min(0.5 * 2 ** (self._throttle_streak - 1), MAX_THROTTLE_PAUSE)
        pause = base / 2 + random.uniform(0, base / 2)
        self._pause_began = now
        self._pause_until = now + pause
        log.warning("HVE throttled the run (%d %s); every session pauses %.1f s.", code, reply, pause)

    def pace(self) -> None:
        """Sleep while the whole run is paused after throttling (wakes up early if the run stops)."""
        with self._lock:
            delay = self._pause_until - time.monotonic()
        self.sleep(delay)

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up as soon as the run stops."""
        if seconds > 0:
            self._stop.wait(seconds)

    def spend_retry(self) -> bool:
        """Take one retry from the run's budget; False when it is spent."""
        with self._lock:
            return self._spend_locked()

    def _spend_locked(self) -> bool:
        if self.report.retry_budget_left <= 0:
            return False
        self.report.retry_budget_left -= 1
        return True

    def _retry_later(self, item: _Item, delivery: Delivery) -> bool:
        """Queue a message refused only with 4xx replies (throttling, temporary failure) to go again later."""
        codes = [code for code, _ in delivery.refused.values()]
        index = item[0]
        tries = self._tries.get(index, 0)
        if delivery.accepted or not codes or not all(400 <= code < 500 for code in codes):
            return False
        if tries >= TRANSIENT_RETRIES or self.stopped is not None or not self._spend_locked():
            return False
        self._tries[index] = tries + 1
        # Exponential backoff with jitter, so sessions that were throttled together do not return together.
        self._not_before[index] = time.monotonic() + 0.5 * 2**tries + random.uniform(0, 0.25)
        self._later.append(item)
        self.report.retried += 1
        return True

    def wait_turn(self, index: int) -> None:
        """Sleep until a message that was refused temporarily may be sent again."""
        with self._lock:
            not_before = self._not_before.pop(index, 0.0)
        self.sleep(not_before - time.monotonic())

    def invalid(self, index: int, reason: str) -> None:
        with self._lock:
            self.report.invalid[f"row {index}"] = reason
            self._progress.update(self._done(), len(self.report.refused))

    def unknown(self, indexes: list[object]) -> None:
        keys = []
        with self._lock:
            for index in indexes:
                if index in self._items:
                    item = self._items.pop(index)
                    self.report.unknown.append(item[3].addr_spec)
                    keys.append(UNKNOWN_MARK + item[2])
        # HVE may have these: a retry must not send them again (reported here, not silently dropped).
        if self._log is not None and keys:
            self._log.record(keys)

    def _done(self) -> int:
        report = self.report
        return report.accepted + len(report.refused) + len(report.invalid) + len(report.unknown) + report.skipped

    def leftover(self) -> list[str]:
        """Addresses of rows never completed: still queued, or given to a pipeline that stopped."""
        with self._lock:
            rest = [*self._again, *self._later, *self._iter, *self._items.values()]
            self._again.clear()
            self._later.clear()
            self._items.clear()
        return [item[3].addr_spec for item in rest]

    def stop(self, error: BaseException) -> None:
        with self._lock:
            self._stop_locked(error)

    def _stop_locked(self, error: BaseException, describe: Callable[[], BaseException] | None = None) -> None:
        """
        Stop the run for ``error`` (the first reason wins) and wake every waiting session.

        :param describe: builds the error again once every session has finished, so the figures it reports
            (accepted so far) count the replies other sessions were still reading when the run stopped.
        """
        if self.stopped is None:
            self.stopped = error
            self._describe_stop = describe
        self._stop.set()

    @property
    def stop_event(self) -> threading.Event:
        """Set once the run stops: sessions wait on it instead of sleeping."""
        return self._stop

    def final_error(self) -> BaseException:
        """Return the error that stopped the run, its figures final (call once every session finished)."""
        assert self.stopped is not None
        if self._describe_stop is None:
            return self.stopped
        with self._lock:
            return self._describe_stop()

    def finish(self) -> None:
        self._progress.done = self._done()
        self._progress.final(len(self.report.refused))


class _Progress:
    """Log sent / total, rate and ETA at a steady cadence."""

    def __init__(self, total: int, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self.interval = interval
        self._clock = clock
        self._start = clock()
        self._last = self._start

    def update(self, done: int, refused: int) -> None:
        self.done = done
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._log(now, refused)

    def final(self, refused: int) -> None:
        self._log(self._clock(), refused)

    def _log(self, now: float, refused: int) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate else 0.0
        log.info(
            "HVE mail merge: %d/%d sent (%.0f%%), %.1f msg/s, ETA %s, %d refused.",
            self.done,
            self.total,
            100.0 * self.done / self.total if self.total else 100.0,
            rate,
            _duration(left),
            refused,
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
