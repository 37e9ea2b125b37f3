"""The session threads of a mail merge: each takes a row from the ledger, submits it, applies the replies.

All shared state is in the :class:`~airflow_provider_hve.bulk.ledger.RowLedger`, behind one lock
(:class:`SharedLedger`). Waiting (rate, pause, backoff, reconnect delay) is done on that lock's condition, so
a stop wakes every session at once and no message is handed over after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from airflow_provider_hve.bulk.delivery_log import INTENT_MARK
from airflow_provider_hve.bulk.ledger import RowLedger
from airflow_provider_hve.bulk.rows import Finished, Outcome, Reconnect, Row, RowState, Send, Step, Wait
from airflow_provider_hve.bulk.stops import Raised
from airflow_provider_hve.exceptions import HveConfigError, HveConnectionError
from airflow_provider_hve.transport import MAX_RECIPIENTS_PER_TRANSACTION

if TYPE_CHECKING:
    from airflow_provider_hve.bulk.compiled import MergedMessage
    from airflow_provider_hve.bulk.delivery_log import DeliveryLog
    from airflow_provider_hve.bulk.report import Progress
    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.message import OutgoingMessage
    from airflow_provider_hve.transport import Delivery, Pipeline

log = logging.getLogger(__name__)
T = TypeVar("T")
Build = Callable[[Row], "OutgoingMessage | MergedMessage"]
"""Render and build the message of one row (raises for a row whose data breaks its template)."""

_TOO_MANY_CONNECTIONS = "HVE answered 432 4.3.2 (too many connections)"
_IDLE_RECHECK = 1.0


class SharedLedger:
    """The ledger behind one lock; every change wakes the sessions waiting on it and feeds the delivery log."""

    def __init__(self, ledger: RowLedger, delivery_log: DeliveryLog | None, progress: Progress) -> None:
        self.ledger = ledger
        self._log = delivery_log
        self._progress = progress
        self._changed = threading.Condition()
        self._grown_at_write = 0  # the log's write count when the write-ahead distance last grew

    def change(self, transition: Callable[[RowLedger], T]) -> T:
        """Apply one transition under the lock; wake the waiting sessions; journal what happened to rows."""
        with self._changed:
            try:
                return transition(self.ledger)
            finally:
                # Under the lock, so the journal keeps the ledger's order (an intent before its row's outcome).
                self._record(self.ledger.take_journal())
                self._progress.update(self.ledger.settled(), self.ledger.count(RowState.REFUSED))
                self._changed.notify_all()

    def _record(self, journal: list[str]) -> None:
        # A buffering log (TaskStateDeliveryLog) only queues here; its writer thread writes.
        if journal and self._log is not None:
            self._log.record(journal)

    def wait_recorded(self, row: Row) -> None:
        """
        Return once the row's intent is durable (write-ahead): only then may the row be handed over. A stop of the
        run ends the wait (the row is then not handed over: :meth:`RowLedger.handed_over` refuses it).
        """
        wait = getattr(self._log, "wait_recorded", None)
        if wait is None or not wait(INTENT_MARK + row.key, lambda: self.ledger.stopped is not None):
            return
        writes = getattr(self._log, "writes", 0)

        def fell_behind(ledger: RowLedger) -> int | None:
            # Journal further ahead. Once per write at most: every session that waits during one slow write (a
            # database hiccup) is the same sign, not one each.
            if writes <= self._grown_at_write:
                return None
            self._grown_at_write = writes
            before = ledger.write_ahead
            ledger.intent_was_late()
            return ledger.write_ahead if ledger.write_ahead > before else None

        if (ahead := self.change(fell_behind)) is not None:
            log.info("The delivery record fell behind the sessions: intents now go %d rows ahead.", ahead)

    def next_step(self, session: int) -> Step:
        """
        Take the next row, waiting while nothing may go; return a :class:`Wait` only to a session that must
        first read the replies in its own pipeline.
        """
        with self._changed:
            while True:
                writes = getattr(self._log, "writes", 0)
                if writes:  # the write-ahead distance is sized from the store's speed
                    self.ledger.write_latency = getattr(self._log, "write_seconds", 0.0) / writes
                step = self.ledger.take(session)
                if isinstance(step, Send):
                    self._record(self.ledger.take_journal())  # the intents take() wrote: wait_recorded waits on them
                if not isinstance(step, Wait) or self.ledger.holds(session):
                    return step
                # Woken by any change; the timeout only bounds how long a missed wake-up could last.
                until = time.monotonic() + _IDLE_RECHECK if step.until is None else step.until
                self._changed.wait(max(until - time.monotonic(), 0.0))

    def completed(self, deliveries: Sequence[Delivery]) -> Outcome:
        """Record finished messages; return what they mean for the session that read them."""
        if not deliveries:
            return Outcome(accepted=False, too_many_connections=False)
        outcomes = self.change(lambda ledger: [ledger.completed(delivery) for delivery in deliveries])
        return Outcome(
            accepted=any(outcome.accepted for outcome in outcomes),
            too_many_connections=any(outcome.too_many_connections for outcome in outcomes),
        )

    def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the run stops meanwhile."""
        deadline = time.monotonic() + seconds
        with self._changed:
            while self.ledger.stopped is None and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)

    def stop(self, error: BaseException) -> None:
        self.change(lambda ledger: ledger.stop(Raised(error)))


class SessionWorker:
    """One session thread: connects, sends until the ledger has nothing more for it, reconnects when it breaks."""

    def __init__(self, shared: SharedLedger, hook: HveHook, build: Build) -> None:
        self._shared = shared
        self._hook = hook
        self._build = build
        self.session = shared.change(lambda ledger: ledger.open_session())

    def run(self) -> None:
        try:
            while True:
                ending = self._one_connection()
                if not isinstance(ending, Reconnect):
                    return
                log.warning(
                    "HVE session broke; reconnecting in %.1f s (%d in a row, max_reconnects=%d).",
                    ending.delay,
                    ending.failures,
                    self._shared.ledger.max_reconnects,
                )
                self._shared.pause(ending.delay)
        except BaseException as exc:
            self._shared.stop(exc)
        finally:
            # Whatever is still in this session's pipeline may have been delivered: unknown, never resent.
            self._shared.change(lambda ledger: ledger.withdraw(self.session, ledger.in_pipeline(self.session)))
            self._shared.change(lambda ledger: ledger.leave(self.session))

    def _one_connection(self) -> Reconnect | Finished:
        """Send over one SMTP session; return whether to reconnect."""
        pipeline: Pipeline | None = None
        try:
            with self._hook.smtp_session() as smtp:
                pipeline = smtp.pipeline()
                return self._send_until_done(pipeline)
        except HveConnectionError as exc:
            if exc.permanent:  # no STARTTLS, a bad certificate...: every reconnect would meet it again
                self._give_up(pipeline, exc)
                raise
            # Handed over without a final reply: unknown, never resent (no duplicates). The rest: queued again.
            self._shared.completed(exc.completed)
            cause, handed_over = str(exc), exc.in_flight
            log.warning("HVE session broke: %s", cause)
            return self._shared.change(lambda ledger: ledger.broken(self.session, handed_over, cause))
        except BaseException as exc:
            self._give_up(pipeline, exc)
            raise

    def _give_up(self, pipeline: Pipeline | None, exc: BaseException) -> None:
        """
        Auth refused, sender refused, a permanent connection failure, something unexpected: the outcomes read
        before count, then the run stops. Messages handed over without an answer are unknown (HVE may have
        them), never resent.
        """
        self._shared.completed(getattr(exc, "completed", ()))
        in_flight = [delivery.key for delivery in pipeline.in_flight] if pipeline is not None else []
        self._shared.change(lambda ledger: ledger.withdraw(self.session, in_flight))
        if pipeline is not None:
            pipeline.abort()

    def _send_until_done(self, pipeline: Pipeline) -> Reconnect | Finished:
        """Take, submit, apply: until the ledger says this session is finished."""
        while True:
            step = self._shared.next_step(self.session)
            if isinstance(step, Send):
                if self._send(pipeline, step.row).too_many_connections:
                    return self._too_many_connections(pipeline)
            elif isinstance(step, Wait):
                self._shared.completed(pipeline.flush())  # read our replies before waiting on others
            else:
                # Stopped (quota, sender refused...): read what is on its way, hand over nothing more.
                self._shared.completed(pipeline.drain() if step.stopped else pipeline.flush())
                self._shared.change(lambda ledger: ledger.withdraw(self.session))
                return step

    def _send(self, pipeline: Pipeline, row: Row) -> Outcome:
        try:
            outgoing = self._build(row)
        except Exception as exc:  # the row's data broke its template or message: that row only
            reason = row_error(row.index, exc)
            self._shared.change(lambda ledger: ledger.invalid(row.index, self.session, reason))
            return Outcome(accepted=False, too_many_connections=False)
        # The replies that came while the message was built first: one of them may stop the run (a quota), and
        # then this message, and the content of the one before it, must not be written.
        transactions = -(-len(outgoing.recipients) // MAX_RECIPIENTS_PER_TRANSACTION)
        earlier = self._shared.completed(pipeline.collect(transactions))
        self._shared.wait_recorded(row)  # its intent is in the delivery log before a byte of it is written
        if not self._shared.change(lambda ledger: ledger.handed_over(row.index, self.session)):
            return earlier  # the run stopped meanwhile
        now = self._shared.completed(
            pipeline.submit(row.index, outgoing.payload, outgoing.recipients, outgoing.message_id)
        )
        return Outcome(
            accepted=earlier.accepted or now.accepted,
            too_many_connections=earlier.too_many_connections or now.too_many_connections,
        )

    def _too_many_connections(self, pipeline: Pipeline) -> Reconnect | Finished:
        """HVE answered 432: leave if another session goes on, else reconnect (a retry, with backoff)."""
        self._shared.completed(pipeline.flush())
        if self._shared.change(lambda ledger: ledger.leave_if_others_go_on(self.session)):
            log.warning("HVE has too many connections from this account: one session leaves.")
            return Finished(stopped=False)
        return self._shared.change(lambda ledger: ledger.broken(self.session, [], _TOO_MANY_CONNECTIONS))


def run_sessions(shared: SharedLedger, workers: Sequence[SessionWorker], grace_seconds: float) -> None:
    """
    Run the workers in threads until all finish.

    If the calling thread is interrupted (execution_timeout, SIGTERM), stop the run and give the sessions
    ``grace_seconds`` to read the replies of what they handed over, so the report and the delivery log stay
    true; then go on failing.
    """
    # Waited for through events, not Thread.join(): on Python 3.11 a join() interrupted by an exception (the
    # task's timeout, SIGTERM) marks the thread as stopped while it still runs, and later joins return at
    # once (CPython gh-90882).
    finished = [threading.Event() for _ in workers]
    for n, (worker, done) in enumerate(zip(workers, finished, strict=True)):
        threading.Thread(target=_run_then_set, args=(worker, done), name=f"hve-session-{n}", daemon=True).start()
    try:
        for done in finished:
            done.wait()
    except BaseException as exc:
        shared.stop(exc)
        deadline = time.monotonic() + grace_seconds
        for done in finished:
            done.wait(timeout=max(deadline - time.monotonic(), 0))
        raise


def _run_then_set(worker: SessionWorker, done: threading.Event) -> None:
    try:
        worker.run()
    finally:
        done.set()


def row_error(index: int, exc: Exception) -> str:
    """Why row ``index`` is invalid: its message could not be rendered or built."""
    if isinstance(exc, HveConfigError):
        return str(exc)
    return f"Row {index}: building its message failed: {type(exc).__name__}: {exc}."
