"""The row ledger of a mail merge: what state each row is in, and the only code that may change it.

Every row index has exactly one :class:`RowState`. A row goes ``QUEUED -> TAKEN -> IN_PIPELINE`` and then to
a final state (``ACCEPTED``, ``REFUSED``, ``UNKNOWN``), back to ``QUEUED`` (not accepted, safe to send again),
or to ``WAITING`` (refused for now with a 4xx: sent again after a backoff). Rows never sent end
``INVALID``, ``SKIPPED`` (delivered by an earlier try) or ``NOT_SENT`` (the run stopped first).

The ledger is pure: no threads, sockets or clocks (the clock and the random source are injected). The
session threads call it under one lock (:mod:`airflow_provider_hve.bulk.sessions`). Each transition checks
that the row is where it should be and raises :class:`LedgerError` otherwise, so a bug that would send a row
twice or lose it stops the run instead. :meth:`RowLedger.take` is the one place that decides whether a
message may go now: not after a stop, not during a pause, not before the rate allows it, not beyond the
retry budget.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from airflow_provider_hve.bulk.delivery_log import INTENT_MARK, RELEASED_MARK, UNKNOWN_MARK
from airflow_provider_hve.bulk.rows import (
    NO_NEWS,
    OPEN_STATES,
    Finished,
    Holding,
    LedgerError,
    Outcome,
    Reconnect,
    Reply,
    RetryWait,
    Row,
    RowState,
    Send,
    SessionRecord,
    Settled,
    Step,
    Tally,
    Wait,
)
from airflow_provider_hve.bulk.stops import (
    DeferralsOutlastBudget,
    ReconnectBudgetSpent,
    ReconnectsExhausted,
    SessionWideRefusal,
    StopReason,
)

TRANSIENT_RETRIES = 3
"""How many more times a message refused with a 4xx (temporary) reply is sent, with backoff, before it is
reported as refused."""
MAX_THROTTLE_PAUSE = 30.0
"""Longest pause of the whole run, in seconds, after HVE throttled it (432, or a 4xx to a whole message)."""
MAX_RECONNECT_DELAY = 8.0


RATE_SPAN = 1.0
"""Seconds over which the rate of takes is measured (to size the write-ahead distance)."""


class RowLedger:
    """
    One state per row, and the rules that move it.

    :param total: the number of rows (indexes ``0 .. total - 1``).
    :param source: the rows in order, each a :class:`Row` to send or a :class:`Settled` verdict; read lazily.
    :param retry_budget: resends after a 4xx and reconnects the whole run may spend.
    :param max_reconnects: broken sessions in a row (without an accepted message) before the run gives up.
    :param rate_interval: seconds between two hand-overs across sessions; 0: no limit.
    :param clock: monotonic seconds (``time.monotonic``).
    :param rng: jitter for backoffs and pauses.
    :param session_wide: tells a permanent refusal that stops the run (quota) from one of a single message.
    :param write_ahead: with a delivery log: journal an intent for a row before it is handed out, and for up to
        this many rows queued after it (so the log can write them before they are needed); 0: no intents. The
        distance adapts (:meth:`intent_was_late`): it starts here, doubles (up to ``write_ahead_cap``) when a
        session had to wait for its row's intent, and shrinks while none waits, so that a killed worker leaves
        few rows whose intent was written but which were never handed over.
    :param write_ahead_cap: the farthest the distance may grow; default ``write_ahead``.
    """

    def __init__(
        self,
        total: int,
        source: Iterator[Row | Settled],
        *,
        retry_budget: int,
        max_reconnects: int,
        rate_interval: float = 0.0,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        session_wide: Callable[[int, str], bool] | None = None,
        write_ahead: int = 0,
        write_ahead_cap: int | None = None,
    ) -> None:
        if session_wide is None:
            from airflow_provider_hve.diagnostics import is_session_wide

            session_wide = is_session_wide
        self.total = total
        self.retry_budget = self.retry_budget_left = retry_budget
        self.max_reconnects = max_reconnects
        self.retried = self.reconnects = self.throttled = 0
        self.stopped: StopReason | None = None
        self._source = source
        self._rate_interval = rate_interval
        self._clock = clock
        self._rng = rng or random.Random()
        self._session_wide: Callable[[int, str], bool] = session_wide
        self._states = bytearray(total)  # every row starts QUEUED (0), in the source or in _queue
        self._counts: Counter[RowState] = Counter({RowState.QUEUED: total})
        self._queue: deque[Row] = deque()
        self._retries: dict[int, RetryWait] = {}
        self._holdings: dict[int, Holding] = {}  # TAKEN and IN_PIPELINE rows
        self._tries: dict[int, int] = {}  # temporary refusals so far, while the row is open
        self._addresses: dict[int, str] = {}  # rows settled other than accepted
        self._refusals: dict[int, dict[str, tuple[int, str]]] = {}
        self._reasons: dict[int, str] = {}
        self._journal: list[str] = []
        self._journaling = write_ahead > 0
        self._write_ahead = self.write_ahead_max = write_ahead
        self._write_ahead_cap = max(write_ahead, write_ahead_cap or 0)
        self._on_time = 0  # rows taken since a session last had to wait for an intent
        self._recent_takes: deque[float] = deque()  # when rows were taken, over the last RATE_SPAN seconds
        self.write_latency = 0.0
        """The delivery log's time per write (seconds), as its owner last measured it: how far ahead intents must go."""
        self._intended: dict[int, str] = {}  # rows with an intent in the journal and no final entry yet
        self._sessions: dict[int, SessionRecord] = {}
        self._next_session = 0
        self._next_start = self._pause_until = self._pause_began = float("-inf")
        self._throttle_streak = 0
        self._closed = False

    # -- sessions ------------------------------------------------------------------------------------------

    def open_session(self) -> int:
        """Register a session thread; return its id."""
        self._next_session += 1
        self._sessions[self._next_session] = SessionRecord()
        return self._next_session

    def leave(self, session: int) -> None:
        """The session stopped working (idempotent); it must hold no row."""
        if self._owned(session):
            raise LedgerError(f"session {session} left holding rows {sorted(self._owned(session))}")
        self._sessions.pop(session, None)

    def leave_if_others_go_on(self, session: int) -> bool:
        """Leave if another session is still working (it takes what comes back to the queue)."""
        if len(self._sessions) < 2:
            return False
        self.leave(session)
        return True

    def holds(self, session: int) -> bool:
        """Tell whether the session has messages in its pipeline (it must read their replies before waiting)."""
        return bool(self.in_pipeline(session))

    def in_pipeline(self, session: int) -> list[int]:
        """The rows the session gave to its pipeline and has no final reply for yet."""
        return sorted(i for i in self._owned(session) if self._states[i] == RowState.IN_PIPELINE)

    # -- handing rows out ----------------------------------------------------------------------------------

    def take(self, session: int) -> Step:
        """Return the next row this session may send now, or when to ask again, or that it is finished."""
        while True:
            if self.stopped is not None or self._closed:
                return Finished(stopped=True)
            now = self._clock()
            if now < self._pause_until:
                return Wait(self._pause_until)
            retry = self._due_retry(now)
            if retry is None and not self._queue:
                self._pull()
            if retry is None and not self._queue:
                return self._nothing_due()
            if now < self._next_start:
                return Wait(self._next_start)
            if retry is not None and not self._spend_on(retry):
                continue  # the row settled (or the run stopped) instead: look again
            row = retry.row if retry is not None else self._queue.popleft()
            self._next_start = now + self._rate_interval
            self._retries.pop(row.index, None)
            self._move(row.index, (RowState.QUEUED, RowState.WAITING), RowState.TAKEN)
            self._holdings[row.index] = Holding(row, session)
            if self._journaling:
                self._intend(row)
                self._shorten_write_ahead(now)
                self._intend_ahead()
            return Send(row)

    def handed_over(self, index: int, session: int) -> bool:
        """
        The session is about to give the row to its pipeline: True if it may (the last check before a write).

        After a stop it may not: the row goes back to the queue and ends ``NOT_SENT``. Nor after the report was
        made (a session that outlived the run's grace time): the row is already reported.
        """
        if self._closed:
            return False
        holding = self._holding_of(index, session, RowState.TAKEN)
        if self.stopped is not None:
            self._requeue(holding.row)
            return False
        self._move(index, (RowState.TAKEN,), RowState.IN_PIPELINE)
        holding.handed_over_at = self._clock()
        return True

    @property
    def write_ahead(self) -> int:
        """How many queued rows get their intent journaled ahead of the row taken, now."""
        return self._write_ahead

    def intent_was_late(self) -> None:
        """A session had to wait for its row's intent to become durable: journal twice as far ahead (up to the cap)."""
        self._write_ahead = min(self._write_ahead_cap, 2 * self._write_ahead)
        self.write_ahead_max = max(self.write_ahead_max, self._write_ahead)
        self._on_time = 0

    def put_back(self, index: int, session: int) -> None:
        """A taken row was not given to a pipeline (the session ended first): queue it again."""
        if not self._closed:
            self._requeue(self._holding_of(index, session, RowState.TAKEN).row)

    def invalid(self, index: int, session: int, reason: str) -> None:
        """The row's data broke its template or message: ``INVALID``, never sent."""
        if not self._closed:
            row = self._holding_of(index, session, RowState.TAKEN).row
            self._settle(row.index, RowState.INVALID, row.address, reason=reason)

    # -- replies -------------------------------------------------------------------------------------------

    def completed(self, reply: Reply) -> Outcome:
        """Record a message's final outcome; return what it means for the session that read it."""
        if self._closed:
            return NO_NEWS  # a late reply after the report was made: the row stays as reported (unknown)
        holding = self._holdings.get(int(reply.key))
        if holding is None or self._states[holding.row.index] != RowState.IN_PIPELINE:
            raise LedgerError(f"row {reply.key} completed but it is not in a pipeline (completed twice?)")
        row = holding.row
        code, text = reply.whole if reply.whole is not None else (0, "")
        # The whole message put off (HVE throttling), as opposed to refused, or refused per recipient.
        deferred = (code, text) if 400 <= code < 500 else None
        too_many = deferred is not None and (code == 432 or text.startswith("4.3.2"))
        # Deferred with others already on their way when an earlier deferral paused the run (a BDAT window):
        # one throttling event, so its resends spend the retry budget once, not once per message in the window.
        echo = deferred is not None and holding.handed_over_at < self._pause_began
        if deferred is not None:
            self._throttle(holding.handed_over_at)
        codes = [code for code, _ in reply.refused.values()]
        if not reply.accepted and codes and all(400 <= code < 500 for code in codes):
            self._temporary(row, reply, deferred, free=echo)
            return Outcome(accepted=False, too_many_connections=too_many)
        if reply.refused:
            self._refusals[row.index] = dict(reply.refused)
        if reply.accepted:
            self._settle(row.index, RowState.ACCEPTED, row.address, journal=row.key)
            self._sessions.get(holding.session, SessionRecord()).progressed = True
            self._throttle_streak = 0
            return Outcome(accepted=True, too_many_connections=too_many)
        self._settle(row.index, RowState.REFUSED, row.address)
        if code and self._session_wide(code, text):
            self.stop(SessionWideRefusal(code, text, reply.message_id))
        return Outcome(accepted=False, too_many_connections=too_many)

    def broken(self, session: int, in_flight: Sequence[Any], cause: str) -> Reconnect | Finished:
        """
        The session's connection broke: messages handed over without a final reply are ``UNKNOWN`` (never
        sent again), the session's other rows go back to the queue. Return whether to reconnect.
        """
        self.withdraw(session, in_flight)
        state = self._sessions.setdefault(session, SessionRecord())
        state.failures = 1 if state.progressed else state.failures + 1
        state.progressed = False
        if self.stopped is not None:
            return Finished(stopped=True)
        if state.failures > self.max_reconnects:
            self.stop(ReconnectsExhausted(cause, state.failures, self.max_reconnects))
            return Finished(stopped=True)
        if self.retry_budget_left <= 0:
            self.stop(ReconnectBudgetSpent(cause, self.retry_budget))
            return Finished(stopped=True)
        self.retry_budget_left -= 1
        self.reconnects += 1
        base = min(2.0 ** (state.failures - 1), MAX_RECONNECT_DELAY)
        # Jitter: sessions that broke together spread out.
        return Reconnect(delay=base / 2 + self._rng.uniform(0, base / 2), failures=state.failures)

    def withdraw(self, session: int, in_flight: Sequence[Any] = ()) -> None:
        """The session lets go of its rows: those in ``in_flight`` are ``UNKNOWN``, the others queued again."""
        unknown = {int(key) for key in in_flight}
        for index in sorted(self._owned(session)):
            row = self._holdings[index].row
            if index in unknown and self._states[index] == RowState.IN_PIPELINE:
                self._settle(index, RowState.UNKNOWN, row.address, journal=UNKNOWN_MARK + row.key)
            else:
                self._requeue(row)

    def stop(self, reason: StopReason) -> None:
        """Stop the run: no row is handed out or over from now on. The first reason is the one reported."""
        if self.stopped is None:
            self.stopped = reason

    # -- the end -------------------------------------------------------------------------------------------

    def finish(self) -> Tally:
        """
        Close the ledger and settle every open row: never handed over, ``NOT_SENT``; still in a pipeline (a
        session that did not end in time), ``UNKNOWN``. Check the invariant; return the outcome of every row.
        """
        if not self._closed:
            self._pull(everything=True)
            for index, holding in list(self._holdings.items()):
                if self._states[index] == RowState.IN_PIPELINE:
                    self._settle(index, RowState.UNKNOWN, holding.row.address, journal=UNKNOWN_MARK + holding.row.key)
                else:
                    self._settle(index, RowState.NOT_SENT, holding.row.address)
            for row in [*self._queue, *(retry.row for retry in self._retries.values())]:
                self._settle(row.index, RowState.NOT_SENT, row.address)
            self._queue.clear()
            self._retries.clear()
            self._closed = True
        self.verify()
        return self.tally()

    def tally(self) -> Tally:
        """The settled rows by bucket, in row order."""
        tally = Tally(
            accepted=self._counts[RowState.ACCEPTED],
            skipped=self._counts[RowState.SKIPPED],
            refused_rows=self._counts[RowState.REFUSED],
        )
        for index in sorted(self._refusals):
            for address, (code, reply) in self._refusals[index].items():
                tally.refused[address] = [code, reply]
        for index in sorted(self._addresses):
            state = self._states[index]
            if state == RowState.INVALID:
                tally.invalid[f"row {index}"] = self._reasons[index]
            elif state == RowState.UNKNOWN:
                tally.unknown.append(self._addresses[index])
            elif state == RowState.NOT_SENT:
                tally.not_sent.append(self._addresses[index])
        return tally

    def settled(self) -> int:
        """How many rows reached a final state."""
        return self.total - sum(self._counts[state] for state in OPEN_STATES)

    def count(self, state: RowState) -> int:
        return self._counts[state]

    def state(self, index: int) -> RowState:
        return RowState(self._states[index])

    def take_journal(self) -> list[str]:
        """Return (and forget) the delivery-log keys written since the last call."""
        journal, self._journal = self._journal, []
        return journal

    def verify(self) -> None:
        """Check the invariant: each row in exactly one state, each open row in exactly one holding place."""
        actual = Counter(RowState(state) for state in self._states)
        if +actual != +self._counts:
            raise LedgerError(f"state counts drifted: {dict(actual)} != {dict(self._counts)}")
        places = [row.index for row in self._queue] + list(self._retries) + list(self._holdings)
        if len(places) != len(set(places)):
            raise LedgerError("a row is held in two places at once")
        expected = {
            RowState.WAITING: set(self._retries),
            RowState.TAKEN: {i for i in self._holdings if self._states[i] == RowState.TAKEN},
            RowState.IN_PIPELINE: {i for i in self._holdings if self._states[i] == RowState.IN_PIPELINE},
        }
        for state, indexes in expected.items():
            if len(indexes) != actual[state] or any(self._states[i] != state for i in indexes):
                raise LedgerError(f"the rows in state {state.name} are not where that state keeps them")
        if any(self._states[row.index] != RowState.QUEUED for row in self._queue):
            raise LedgerError("a queued row is in another state")
        if self._closed and any(actual[state] for state in OPEN_STATES):
            raise LedgerError("the ledger closed with open rows")

    # -- inside --------------------------------------------------------------------------------------------

    def _pull(self, *, everything: bool = False) -> None:
        """Read the source up to its next row to send (to its end with ``everything``), settling verdicts."""
        for planned in self._source:
            if isinstance(planned, Settled):
                self._settle(planned.index, planned.state, planned.address, reason=planned.reason)
                continue
            self._queue.append(planned)
            if not everything:
                return

    def _intend(self, row: Row) -> None:
        if row.index not in self._intended:
            self._intended[row.index] = row.key
            self._journal.append(INTENT_MARK + row.key)

    def _shorten_write_ahead(self, now: float) -> None:
        # No session waited for an intent while two distances' worth of rows were taken: the log may keep up with
        # less. A quarter shorter each time, never below what the sessions need at their rate: an intent is durable
        # at most two writes after it is journaled, so ~ rate x 2 writes, with half as much again to spare. Doubled
        # back when a session waits all the same (intent_was_late).
        takes = self._recent_takes
        takes.append(now)
        while now - takes[0] > RATE_SPAN:
            takes.popleft()
        self._on_time += 1
        if self._on_time < 2 * self._write_ahead:
            return
        self._on_time = 0
        rate = len(takes) / RATE_SPAN
        needed = math.ceil(3 * rate * self.write_latency) + 1
        if self._write_ahead > needed:
            self._write_ahead = max(needed, self._write_ahead - max(1, self._write_ahead // 4))

    def _intend_ahead(self) -> None:
        """Journal intents for the next ``write_ahead`` rows of the queue, so they are durable when taken."""
        while len(self._queue) < self._write_ahead:
            before = len(self._queue)
            self._pull()
            if len(self._queue) == before:
                break
        for row in itertools.islice(self._queue, self._write_ahead):
            self._intend(row)

    def _nothing_due(self) -> Wait | Finished:
        if self._retries:
            return Wait(min(retry.not_before for retry in self._retries.values()))
        if self._holdings:
            return Wait(None)  # rows in other sessions' pipelines may come back
        return Finished(stopped=False)

    def _due_retry(self, now: float) -> RetryWait | None:
        due = [retry for retry in self._retries.values() if retry.not_before <= now]
        return min(due, key=lambda retry: retry.not_before) if due else None

    def _spend_on(self, retry: RetryWait) -> bool:
        """Spend one retry on sending this row again; without budget it is refused, or the run stops."""
        if retry.free:
            self.retried += 1
            return True
        if self.retry_budget_left > 0:
            self.retry_budget_left -= 1
            self.retried += 1
            return True
        del self._retries[retry.row.index]
        if retry.deferred is not None:
            # HVE keeps deferring whole messages: stop rather than grind on. Not refused: a later try sends it.
            self._move(retry.row.index, (RowState.WAITING,), RowState.QUEUED)
            self._queue.appendleft(retry.row)
            self.stop(DeferralsOutlastBudget(*retry.deferred, budget=self.retry_budget))
        else:
            self._refusals[retry.row.index] = retry.refused
            self._settle(retry.row.index, RowState.REFUSED, retry.row.address)
        return False

    def _temporary(self, row: Row, reply: Reply, deferred: tuple[int, str] | None, *, free: bool = False) -> None:
        """A 4xx only: wait and send again (backoff with jitter), refuse after too many, queue after a stop."""
        tries = self._tries.get(row.index, 0)
        if self.stopped is not None:
            self._requeue(row)  # certainly not accepted: a later try of the task sends it
        elif tries >= TRANSIENT_RETRIES:
            self._refusals[row.index] = dict(reply.refused)
            self._settle(row.index, RowState.REFUSED, row.address)
        else:
            self._tries[row.index] = tries + 1
            del self._holdings[row.index]
            self._move(row.index, (RowState.IN_PIPELINE,), RowState.WAITING)
            # Jitter, so sessions that were throttled together do not return together.
            not_before = self._clock() + 0.5 * 2**tries + self._rng.uniform(0, 0.25)
            self._retries[row.index] = RetryWait(row, not_before, dict(reply.refused), deferred, free)

    def _throttle(self, handed_over_at: float) -> None:
        """HVE deferred a whole message: every session pauses, longer each time in a row."""
        now = self._clock()
        if now < self._pause_until or handed_over_at < self._pause_began:
            return  # sent before the current pause began: no news, the pause already answers it
        self._throttle_streak += 1
        self.throttled += 1
        base = min(0.5 * 2 ** (self._throttle_streak - 1), MAX_THROTTLE_PAUSE)
        self._pause_began = now
        self._pause_until = now + base / 2 + self._rng.uniform(0, base / 2)

    def _requeue(self, row: Row) -> None:
        self._holdings.pop(row.index, None)
        self._move(row.index, (RowState.TAKEN, RowState.IN_PIPELINE), RowState.QUEUED)
        self._queue.appendleft(row)

    def _settle(self, index: int, state: RowState, address: str, *, reason: str = "", journal: str = "") -> None:
        self._move(index, OPEN_STATES, state)
        self._holdings.pop(index, None)
        self._tries.pop(index, None)
        if state != RowState.ACCEPTED:
            self._addresses[index] = address
        if reason:
            self._reasons[index] = reason
        key = self._intended.pop(index, None)
        if journal:
            self._journal.append(journal)
        elif key is not None and state != RowState.ACCEPTED:
            self._journal.append(RELEASED_MARK + key)  # announced, certainly not delivered: a retry sends it

    def _move(self, index: int, allowed: Collection[RowState], to: RowState) -> None:
        if not 0 <= index < self.total:
            raise LedgerError(f"row {index} is not a row of this run (0..{self.total - 1})")
        now = RowState(self._states[index])
        if now not in allowed:
            raise LedgerError(f"row {index} cannot go from {now.name} to {to.name}")
        self._states[index] = to
        self._counts[now] -= 1
        self._counts[to] += 1

    def _holding_of(self, index: int, session: int, state: RowState) -> Holding:
        holding = self._holdings.get(index)
        if holding is None or holding.session != session or self._states[index] != state:
            raise LedgerError(f"row {index} is not {state.name} by session {session}")
        return holding

    def _owned(self, session: int) -> set[int]:
        return {index for index, holding in self._holdings.items() if holding.session == session}
