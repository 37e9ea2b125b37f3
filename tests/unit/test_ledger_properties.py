"""The ledger's invariant under random event orders (hypothesis state machine): takes, hand-overs, replies
(accepted, refused, 4xx, whole-message deferrals, quota), breaks with messages in flight and unsent, stops,
pauses, the clock moving, budget running out, and the end of the run.

Checked after every step: each row in exactly one state and one holding place (``RowLedger.verify``),
nothing accepted twice, nothing handed over after a stop, each session's pipeline as the model has it; at
the end, every row in exactly one bucket of the report.
"""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from airflow_provider_hve.bulk.ledger import RowLedger
from airflow_provider_hve.bulk.rows import Finished, Reconnect, RowState, Send, Wait
from airflow_provider_hve.bulk.stops import Raised
from airflow_provider_hve.transport import Delivery

from .test_ledger import Clock, address, source

REPLIES = {
    "accepted": None,
    "5xx recipient": (550, "5.1.10 RESOLVER.ADR.RecipientNotFound"),
    "4xx recipient": (452, "4.3.1 Insufficient system resources"),
    "4xx whole": (451, "4.3.0 Temporary server error"),
    "432 whole": (432, "4.3.2 STOREDRV; mailbox server is too busy"),
    "552 whole": (552, "5.3.4 Message size exceeds fixed maximum message size"),
    "quota whole": (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"),
}


class LedgerMachine(RuleBasedStateMachine):
    @initialize(
        rows=st.integers(0, 8),
        sessions=st.integers(1, 3),
        budget=st.integers(0, 4),
        max_reconnects=st.integers(0, 2),
        rate=st.sampled_from([0.0, 0.5]),
        seed=st.integers(0, 2**16),
    )
    def start(self, rows: int, sessions: int, budget: int, max_reconnects: int, rate: float, seed: int) -> None:
        self.clock = Clock()
        self.total = rows
        self.ledger = RowLedger(
            rows,
            source(rows),
            retry_budget=budget,
            max_reconnects=max_reconnects,
            rate_interval=rate,
            clock=self.clock,
            rng=random.Random(seed),
        )
        self.sessions = [self.ledger.open_session() for _ in range(sessions)]
        self.taken: dict[int, list[int]] = {session: [] for session in self.sessions}
        self.pipelines: dict[int, list[int]] = {session: [] for session in self.sessions}
        self.accepted: Counter[int] = Counter()
        self.finished = False

    # -- the events --------------------------------------------------------------------------------------

    @precondition(lambda self: not self.finished)
    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        session = data.draw(st.sampled_from(self.sessions))
        step = self.ledger.take(session)
        if isinstance(step, Send):
            assert self.ledger.stopped is None, "a row was handed out after the stop"
            self.taken[session].append(step.row.index)
        elif isinstance(step, Finished):
            assert step.stopped == (self.ledger.stopped is not None)
        else:
            assert isinstance(step, Wait)

    @precondition(lambda self: not self.finished and any(self.taken.values()))
    @rule(data=st.data(), what=st.sampled_from(["hand over", "put back", "invalid"]))
    def use_a_taken_row(self, data: st.DataObject, what: str) -> None:
        session = data.draw(st.sampled_from([s for s in self.sessions if self.taken[s]]))
        index = self.taken[session].pop(0)
        if what == "put back":
            self.ledger.put_back(index, session)
        elif what == "invalid":
            self.ledger.invalid(index, session, "the template failed")
        elif self.ledger.handed_over(index, session):
            self.pipelines[session].append(index)
        else:
            assert self.ledger.stopped is not None and self.ledger.state(index) == RowState.QUEUED

    @precondition(lambda self: not self.finished and any(self.pipelines.values()))
    @rule(data=st.data(), reply=st.sampled_from(sorted(REPLIES)))
    def reply(self, data: st.DataObject, reply: str) -> None:
        session = data.draw(st.sampled_from([s for s in self.sessions if self.pipelines[s]]))
        index = self.pipelines[session].pop(0)  # replies come back in order
        code_reply = REPLIES[reply]
        delivery = Delivery(key=index, message_id=f"<m{index}>")
        if code_reply is None:
            delivery.accepted.append(address(index))
        else:
            delivery.refused[address(index)] = code_reply
            delivery.whole = code_reply if reply.endswith("whole") else None
        outcome = self.ledger.completed(delivery)
        if outcome.accepted:
            self.accepted[index] += 1
        assert self.ledger.state(index) != RowState.IN_PIPELINE

    @precondition(lambda self: not self.finished)
    @rule(data=st.data())
    def break_connection(self, data: st.DataObject) -> None:
        session = data.draw(st.sampled_from(self.sessions))
        pipeline = self.pipelines[session]
        in_flight = data.draw(st.integers(0, len(pipeline)))  # the oldest were handed over, the rest unsent
        for index in self.taken[session]:
            self.ledger.put_back(index, session)
        action = self.ledger.broken(session, pipeline[:in_flight], "421 4.3.2 closing")
        for index in pipeline[:in_flight]:
            assert self.ledger.state(index) == RowState.UNKNOWN
        self.taken[session], self.pipelines[session] = [], []
        if isinstance(action, Finished):
            assert self.ledger.stopped is not None
        else:
            assert isinstance(action, Reconnect) and action.delay >= 0

    @precondition(lambda self: not self.finished)
    @rule()
    def stop(self) -> None:
        self.ledger.stop(Raised(KeyboardInterrupt()))

    @precondition(lambda self: not self.finished)
    @rule(seconds=st.sampled_from([0.1, 0.5, 2.0, 60.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: not self.finished)
    @rule()
    def finish(self) -> None:
        tally = self.ledger.finish()
        self.finished = True
        buckets = [*tally.refused, *tally.invalid, *tally.unknown, *tally.not_sent]
        assert tally.accepted + tally.skipped + len(buckets) == self.total, "a row in no bucket or in two"
        assert len(set(buckets)) == len(buckets)
        assert tally.accepted == sum(self.accepted.values())

    @precondition(lambda self: self.finished)
    @rule()
    def late_replies(self) -> None:
        # A session that did not end in time reads its replies after the report: they change nothing.
        for session in self.sessions:
            for index in self.pipelines[session]:
                assert self.ledger.state(index) == RowState.UNKNOWN
                assert not self.ledger.completed(Delivery(key=index, message_id="", accepted=[address(index)])).accepted
            self.pipelines[session] = []

    # -- what always holds -------------------------------------------------------------------------------

    @invariant()
    def every_row_in_exactly_one_place(self) -> None:
        self.ledger.verify()

    @invariant()
    def nothing_accepted_twice(self) -> None:
        assert all(count == 1 for count in self.accepted.values())
        assert self.ledger.count(RowState.ACCEPTED) == len(self.accepted)

    @invariant()
    def pipelines_are_what_the_sessions_hold(self) -> None:
        if not self.finished:
            for session in self.sessions:
                assert self.ledger.in_pipeline(session) == sorted(self.pipelines[session])

    @invariant()
    def budget_is_never_overspent(self) -> None:
        assert 0 <= self.ledger.retry_budget_left <= self.ledger.retry_budget
        assert self.ledger.retried + self.ledger.reconnects == self.ledger.retry_budget - self.ledger.retry_budget_left


LedgerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLedgerProperties = LedgerMachine.TestCase
