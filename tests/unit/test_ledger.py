"""The row ledger's transitions, one by one, with a hand-moved clock (no threads, no sockets)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from airflow_provider_hve.addresses import Mailbox
from airflow_provider_hve.bulk.delivery_log import UNKNOWN_MARK, delivery_key
from airflow_provider_hve.bulk.ledger import TRANSIENT_RETRIES, RowLedger
from airflow_provider_hve.bulk.rows import Finished, LedgerError, Reconnect, Row, RowState, Send, Settled, Wait
from airflow_provider_hve.bulk.stops import (
    DeferralsOutlastBudget,
    ReconnectsExhausted,
    SessionWideRefusal,
    stop_error,
)
from airflow_provider_hve.transport import Delivery

QUOTA = (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException")
TOO_BIG = (552, "5.3.4 Message size exceeds fixed maximum message size")
BUSY = (451, "4.3.0 Temporary server error")
THROTTLED = (432, "4.3.2 STOREDRV; mailbox server is too busy")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def address(index: int) -> str:
    return f"row{index}@contoso.example"


def source(count: int) -> Iterator[Row | Settled]:
    for index in range(count):
        mailbox = Mailbox(address(index))
        yield Row(index, mailbox, delivery_key(index, mailbox.addr_spec), {"email": mailbox.addr_spec})


def ledger(count: int = 3, **kwargs: object) -> tuple[RowLedger, Clock]:
    clock = Clock()
    options: dict = {"retry_budget": 10, "max_reconnects": 3, "clock": clock, "rng": random.Random(7)}
    options.update(kwargs)
    return RowLedger(count, source(count), **options), clock


def accepted(index: int) -> Delivery:
    return Delivery(key=index, message_id=f"<m{index}>", accepted=[address(index)])


def refused(index: int, code_reply: tuple[int, str], *, whole: bool = False) -> Delivery:
    return Delivery(
        key=index,
        message_id=f"<m{index}>",
        refused={address(index): code_reply},
        whole=code_reply if whole else None,
    )


def send(book: RowLedger, session: int) -> int:
    step = book.take(session)
    assert isinstance(step, Send), step
    assert book.handed_over(step.row.index, session)
    return step.row.index


def test_a_row_goes_queued_taken_in_pipeline_accepted_and_is_logged_once() -> None:
    book, _ = ledger(1)
    session = book.open_session()
    step = book.take(session)
    assert isinstance(step, Send) and book.state(0) == RowState.TAKEN
    assert book.handed_over(0, session) and book.state(0) == RowState.IN_PIPELINE
    assert book.completed(accepted(0)).accepted
    assert book.take_journal() == [delivery_key(0, address(0))]
    assert book.take(session) == Finished(stopped=False)
    tally = book.finish()
    assert (tally.accepted, tally.not_sent, tally.unknown) == (1, [], [])


def test_completing_a_row_twice_or_from_another_state_raises() -> None:
    book, _ = ledger(2)
    session = book.open_session()
    index = send(book, session)
    book.completed(accepted(index))
    with pytest.raises(LedgerError, match="not in a pipeline"):
        book.completed(accepted(index))
    step = book.take(session)
    assert isinstance(step, Send)
    with pytest.raises(LedgerError, match="not TAKEN by session"):
        book.handed_over(step.row.index, session + 1)
    with pytest.raises(LedgerError, match="not in a pipeline"):
        book.completed(accepted(step.row.index))


def test_a_temporary_refusal_waits_its_backoff_spends_the_budget_then_is_refused() -> None:
    book, clock = ledger(1, retry_budget=10)
    session = book.open_session()
    for attempt in range(TRANSIENT_RETRIES):
        send(book, session)
        book.completed(refused(0, (452, "4.3.1 Insufficient system resources")))
        assert book.state(0) == RowState.WAITING
        wait = book.take(session)
        assert isinstance(wait, Wait) and wait.until is not None and wait.until > clock.now
        clock.now = wait.until
        assert book.retried == attempt
    send(book, session)
    book.completed(refused(0, (452, "4.3.1 Insufficient system resources")))
    assert book.state(0) == RowState.REFUSED
    assert (book.retried, book.retry_budget_left) == (TRANSIENT_RETRIES, 10 - TRANSIENT_RETRIES)
    assert book.finish().refused == {address(0): [452, "4.3.1 Insufficient system resources"]}


def test_without_budget_a_temporary_refusal_is_refused_and_not_sent_again() -> None:
    book, clock = ledger(1, retry_budget=0)
    session = book.open_session()
    send(book, session)
    book.completed(refused(0, BUSY))
    clock.now += 60
    assert book.take(session) == Finished(stopped=False)
    assert book.state(0) == RowState.REFUSED and book.retried == 0


def test_whole_deferrals_beyond_the_budget_stop_the_run_and_the_row_is_not_sent() -> None:
    book, clock = ledger(3, retry_budget=0)
    session = book.open_session()
    send(book, session)
    book.completed(refused(0, BUSY, whole=True))
    assert book.throttled == 1
    clock.now += 60
    assert book.take(session) == Finished(stopped=True)
    assert book.stopped == DeferralsOutlastBudget(*BUSY, budget=0)
    tally = book.finish()
    assert tally.refused == {} and tally.not_sent == [address(0), address(1), address(2)]


def test_a_whole_deferral_pauses_every_session_once_per_pause() -> None:
    book, clock = ledger(4)
    first, second = book.open_session(), book.open_session()
    a, b = send(book, first), send(book, second)
    outcome = book.completed(refused(a, THROTTLED, whole=True))
    assert outcome.too_many_connections and book.throttled == 1
    pause = book.take(second)
    assert isinstance(pause, Wait) and pause.until is not None and pause.until > clock.now
    book.completed(refused(b, BUSY, whole=True))  # handed over before the pause began: no second pause
    assert book.throttled == 1 and book.take(first) == pause
    clock.now = pause.until
    assert isinstance(book.take(first), Send)


def test_a_broken_connection_makes_the_handed_over_unknown_and_requeues_the_rest() -> None:
    book, _ = ledger(3)
    session = book.open_session()
    first, second = send(book, session), send(book, session)
    action = book.broken(session, [first], "421 closing")
    assert isinstance(action, Reconnect) and book.reconnects == 1 and book.retry_budget_left == 9
    assert book.state(first) == RowState.UNKNOWN and book.state(second) == RowState.QUEUED
    assert book.take_journal() == [UNKNOWN_MARK + delivery_key(first, address(first))]
    step = book.take(session)
    assert isinstance(step, Send) and step.row.index == second  # sent again first
    tally = book.finish()
    assert tally.unknown == [address(first)] and tally.not_sent == [address(1), address(2)]


def test_broken_sessions_in_a_row_give_up_after_max_reconnects() -> None:
    book, _ = ledger(2, max_reconnects=1)
    session = book.open_session()
    assert isinstance(book.broken(session, [], "EHLO 421"), Reconnect)
    assert book.broken(session, [], "EHLO 421") == Finished(stopped=True)
    assert book.stopped == ReconnectsExhausted("EHLO 421", 2, 1)
    assert "Giving up: 2 broken session(s) in a row (max_reconnects=1)" in str(stop_error(book.stopped, 0))


def test_after_a_stop_nothing_is_taken_or_handed_over() -> None:
    book, _ = ledger(3)
    first, second = book.open_session(), book.open_session()
    step = book.take(second)
    assert isinstance(step, Send)
    a = send(book, first)
    book.completed(refused(a, QUOTA, whole=True))
    assert book.stopped == SessionWideRefusal(*QUOTA, f"<m{a}>")
    assert book.take(first) == Finished(stopped=True)
    assert not book.handed_over(step.row.index, second)  # the last check before a write
    assert book.finish().not_sent == [address(step.row.index), address(2)]


def test_the_stop_error_counts_replies_read_after_the_stop() -> None:
    # Session A's quota refusal stops the run while session B's message is on its way and then accepted:
    # the error is composed at the end, so it counts that one too.
    book, _ = ledger(3)
    first, second = book.open_session(), book.open_session()
    b = send(book, second)
    a = send(book, first)
    book.completed(refused(a, QUOTA, whole=True))
    book.completed(accepted(b))
    tally = book.finish()
    assert book.stopped is not None
    assert "the run stopped: 1 accepted." in str(stop_error(book.stopped, tally.accepted))


def test_a_refusal_of_one_message_at_mail_from_does_not_stop_the_run() -> None:
    book, _ = ledger(2)
    session = book.open_session()
    index = send(book, session)
    book.completed(refused(index, TOO_BIG, whole=True))
    assert book.state(index) == RowState.REFUSED and book.stopped is None
    assert isinstance(book.take(session), Send)


def test_the_rate_spaces_hand_outs_across_sessions() -> None:
    book, clock = ledger(3, rate_interval=0.5)
    first, second = book.open_session(), book.open_session()
    send(book, first)
    assert book.take(second) == Wait(clock.now + 0.5)
    clock.now += 0.5
    assert isinstance(book.take(second), Send)


def test_an_idle_session_waits_while_another_holds_rows() -> None:
    book, _ = ledger(1)
    first, second = book.open_session(), book.open_session()
    send(book, first)
    assert book.take(second) == Wait(None)
    assert book.holds(first) and not book.holds(second)


def test_finish_makes_rows_still_in_a_pipeline_unknown_and_ignores_late_replies() -> None:
    book, _ = ledger(2)
    session = book.open_session()
    index = send(book, session)
    tally = book.finish()
    assert tally.unknown == [address(index)] and tally.not_sent == [address(1)]
    assert UNKNOWN_MARK + delivery_key(index, address(index)) in book.take_journal()
    assert not book.completed(accepted(index)).accepted
    assert book.state(index) == RowState.UNKNOWN


def test_verdicts_of_the_plan_are_settled_as_they_are_read() -> None:
    verdicts: list[Row | Settled] = [
        Settled(0, RowState.INVALID, reason="has no 'email'"),
        Settled(1, RowState.SKIPPED, address(1)),
        Settled(2, RowState.UNKNOWN, address(2)),
    ]
    book = RowLedger(3, iter(verdicts), retry_budget=0, max_reconnects=0, clock=Clock())
    assert book.take(book.open_session()) == Finished(stopped=False)
    tally = book.finish()
    assert (tally.invalid, tally.skipped, tally.unknown) == ({"row 0": "has no 'email'"}, 1, [address(2)])


def test_a_session_cannot_leave_holding_rows() -> None:
    book, _ = ledger(1)
    session = book.open_session()
    send(book, session)
    with pytest.raises(LedgerError, match="left holding rows"):
        book.leave(session)
    book.withdraw(session, [0])
    book.leave(session)
    assert book.state(0) == RowState.UNKNOWN


def test_a_session_that_outlives_the_report_hands_nothing_over() -> None:
    # execution_timeout: the run ends after its grace time while a session still renders a row.
    book, _ = ledger(1)
    session = book.open_session()
    step = book.take(session)
    assert isinstance(step, Send)
    assert book.finish().not_sent == [address(0)]
    assert not book.handed_over(step.row.index, session)
    assert book.state(0) == RowState.NOT_SENT


def key(index: int) -> str:
    return delivery_key(index, address(index))


def test_with_write_ahead_a_rows_intent_and_those_of_the_next_rows_come_before_it_is_handed_out() -> None:
    from airflow_provider_hve.bulk.delivery_log import INTENT_MARK, RELEASED_MARK, replay

    book, _ = ledger(6, write_ahead=2)
    session = book.open_session()
    step = book.take(session)
    assert isinstance(step, Send) and step.row.index == 0
    # Row 0 and the two queued after it: written ahead, before row 0 may go.
    assert book.take_journal() == [INTENT_MARK + key(0), INTENT_MARK + key(1), INTENT_MARK + key(2)]
    assert book.handed_over(0, session)
    book.completed(accepted(0))
    assert book.take_journal() == [key(0)]
    index = send(book, session)  # row 1: intended already; row 3 now is
    assert index == 1 and book.take_journal() == [INTENT_MARK + key(3)]
    book.completed(refused(1, TOO_BIG))  # refused for good: released (a retry sends it)
    assert book.take_journal() == [RELEASED_MARK + key(1)]
    journal = [INTENT_MARK + key(i) for i in range(4)] + [key(0), RELEASED_MARK + key(1)]
    # Killed now: row 0 delivered, row 1 to send again, rows 2 and 3 (announced) unknown, 4 and 5 untouched.
    assert replay(journal) == {key(0), UNKNOWN_MARK + key(2), UNKNOWN_MARK + key(3)}
    book.finish()  # an orderly end instead: every announced row not delivered is released
    assert sorted(book.take_journal()) == sorted([RELEASED_MARK + key(2), RELEASED_MARK + key(3)])


def test_with_write_ahead_a_deferred_or_requeued_row_keeps_its_intent_and_is_not_announced_twice() -> None:
    from airflow_provider_hve.bulk.delivery_log import INTENT_MARK

    book, clock = ledger(2, write_ahead=1)
    session = book.open_session()
    assert send(book, session) == 0
    assert book.take_journal() == [INTENT_MARK + key(0), INTENT_MARK + key(1)]
    book.completed(refused(0, BUSY))  # 451: waits, then goes again
    assert book.take_journal() == []
    clock.now += 10
    assert send(book, session) == 0
    assert book.take_journal() == []  # intended already
    book.broken(session, [], "reset")  # not handed over for certain: queued again, intent kept
    assert book.take_journal() == []
    assert book.state(0) == RowState.QUEUED


def test_the_write_ahead_distance_shrinks_while_the_log_keeps_up_and_doubles_when_a_session_waited() -> None:
    from airflow_provider_hve.bulk.delivery_log import INTENT_MARK

    book, _ = ledger(400, write_ahead=32)
    session = book.open_session()

    def send_and_settle(n: int) -> int:
        """Send ``n`` rows; return how many intents were journaled ahead of the last row taken."""
        for _ in range(n):
            index = send(book, session)
            book.completed(accepted(index))
        intents = [entry for entry in book.take_journal() if entry.startswith(INTENT_MARK)]
        return max(int(entry.split(":")[0][1:]) for entry in intents) - index if intents else 0

    assert book.write_ahead == 32
    send_and_settle(320)  # nobody waited for an intent: the distance comes down, a quarter at a time
    assert book.write_ahead < 8
    assert send_and_settle(1) <= book.write_ahead
    for expected in (2 * book.write_ahead, 4 * book.write_ahead):
        book.intent_was_late()  # a session waited for its row's intent: twice as far ahead
        assert book.write_ahead == min(expected, 32)
    for _ in range(5):
        book.intent_was_late()
    assert book.write_ahead == 32  # never past the cap
    assert send_and_settle(1) == 32  # the next take journals up to the new distance


def test_the_write_ahead_distance_never_shrinks_below_what_the_rate_and_the_stores_write_time_need() -> None:
    # 200 rows a second (one every 5 ms) against a store that takes 50 ms a write: an intent can take two writes
    # to be durable, so about 200 x 0.1 = 20 rows must be ahead, with half as much again to spare: about 31.
    book, clock = ledger(600, write_ahead=64)
    book.write_latency = 0.05
    session = book.open_session()
    for _ in range(600):
        index = send(book, session)
        book.completed(accepted(index))
        clock.now += 0.005
    assert 30 <= book.write_ahead <= 33
    slow, clock = ledger(600, write_ahead=64)  # 20 rows a second: the distance comes down to about 4
    slow.write_latency = 0.05
    session = slow.open_session()
    for _ in range(600):
        slow.completed(accepted(send(slow, session)))
        clock.now += 0.05
    assert 3 <= slow.write_ahead <= 6


def test_without_write_ahead_nothing_but_outcomes_is_journaled() -> None:
    book, _ = ledger(2)
    session = book.open_session()
    send(book, session)
    assert book.take_journal() == []
