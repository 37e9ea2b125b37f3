"""The fault matrix: each HVE or Entra fault, injected by the sandbox, against a bulk send of 300 messages.

Every scenario checks the same invariant on what the server really received against what the run reported:
every recipient ends exactly once accepted, refused, unknown or not sent; nothing reported as accepted is
missing from the mailbox; nothing reported as refused or not sent is in it; nobody gets a message twice.
Only ``unknown`` (handed over, no final reply) may or may not have arrived, and it is never sent again.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_provider_hve.bulk import BulkReport, MailMerge
from airflow_provider_hve.connection import DEFAULT_BDAT_WINDOW
from airflow_provider_hve.exceptions import HveAuthError, HveConfigError, HveConnectionError, HveError, HveSendError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.smtp_server import (
    AUTH_EXPIRES_SOON,
    AUTH_FAILED,
    INSUFFICIENT_RESOURCES,
    SUBMISSION_QUOTA_EXCEEDED,
    TEMPORARY_FAILURE,
    TOO_BIG,
    TOO_MANY_CONNECTIONS,
)

ROWS = 300
ROW_LIST = [{"email": f"fm{n:04d}@contoso.example", "name": f"Person {n}"} for n in range(ROWS)]
ADDRESSES = [row["email"] for row in ROW_LIST]


@dataclass
class Fault:
    """One row of the matrix: how to break the sandbox, and what the run must then report."""

    inject: Callable[[HveSandbox], None]
    sessions: int = 2
    raises: type[HveError] | None = None
    """The run stops with this error; otherwise it completes."""
    all_accepted: bool = True
    refused: int = 0
    """How many rows end refused (exactly), when it completes."""
    unknown: int = 0
    """How many rows end unknown (exactly), when it completes."""
    accepted: int | None = None
    """How many rows end accepted (exactly), when the run stops early."""
    report_checks: dict[str, Callable[[BulkReport], bool]] = field(default_factory=dict)
    sandbox_check: Callable[[HveSandbox], bool] | None = None
    """Proof from the server's side that the fault really happened."""
    error_match: str = ""
    """A regular expression the error of a stopped run must match (its diagnosis)."""
    timeout: float = 10.0
    """The connection's socket timeout (extra ``timeout``); 1 s for the stall faults."""
    window_unknown: bool = False
    """A reply that never comes leaves a whole BDAT window unknown: with BDAT, ``unknown`` is a lower bound and
    at most one window more may be unknown (the trade-off of ``bdat_window``)."""


def _token_posts(sandbox: HveSandbox) -> int:
    return len([r for r in sandbox.token_requests if r.method == "POST"])


def _refuse_three(sandbox: HveSandbox) -> None:
    for n in (7, 150, 299):
        sandbox.smtp.refuse_recipient(ADDRESSES[n])


MATRIX: dict[str, Fault] = {
    "no fault": Fault(lambda sb: None, report_checks={"no retries": lambda r: r.retried == r.reconnects == 0}),
    "421 and hang-up every 80 messages": Fault(
        lambda sb: sb.smtp.disconnect_after(80, times=3),
        report_checks={"reconnected": lambda r: r.reconnects == 3},
    ),
    "421 from the first command after 100, no pipelining": Fault(
        lambda sb: (setattr(sb.smtp, "pipelining", False), sb.smtp.disconnect_after(100, times=2)),
        report_checks={"reconnected": lambda r: r.reconnects == 2},
    ),
    "432 4.3.2 at MAIL FROM for 1.5 s": Fault(
        lambda sb: sb.smtp.throttle(TOO_MANY_CONNECTIONS, command="MAIL", seconds=1.5, after_messages=50),
        sessions=3,
        report_checks={"paced": lambda r: r.throttled >= 1},
    ),
    "451 4.3.0 after the content for 1 s": Fault(
        lambda sb: sb.smtp.throttle(TEMPORARY_FAILURE, command="content", seconds=1.0, after_messages=100),
        report_checks={"resent": lambda r: r.retried >= 1},
    ),
    "452 4.3.1 to RCPT, 6 times": Fault(
        lambda sb: sb.smtp.throttle(INSUFFICIENT_RESOURCES, command="RCPT", count=6, after_messages=20),
        report_checks={"resent": lambda r: r.retried == 6},
    ),
    "at most 1 session per account (432 to the others)": Fault(
        lambda sb: sb.smtp.limit_sessions(1),
        sessions=4,
        report_checks={"paced": lambda r: r.throttled >= 1},
    ),
    "550 5.1.10 for three recipients": Fault(_refuse_three, all_accepted=False, refused=3),
    # A 5xx to MAIL FROM about the message (too big for this server), not the sender: that row only.
    "552 5.3.4 to MAIL FROM for one message": Fault(
        lambda sb: sb.smtp.throttle(TOO_BIG, command="MAIL", count=1, after_messages=40),
        all_accepted=False,
        refused=1,
        report_checks={"refused as too big": lambda r: [code for code, _ in r.refused.values()] == [552]},
    ),
    "530 5.7.57 at MAIL FROM (the session lost its AUTH)": Fault(
        lambda sb: sb.smtp.throttle(
            "530 5.7.57 Client not authenticated to send mail", command="MAIL", count=1, after_messages=70
        ),
        sessions=1,
        report_checks={"reconnected": lambda r: r.reconnects == 1},
    ),
    "454 4.7.0 to AUTH twice": Fault(
        lambda sb: sb.smtp.throttle("454 4.7.0 Temporary authentication failure", command="AUTH", count=2),
        sessions=1,
        report_checks={"reconnected": lambda r: r.reconnects == 2},
    ),
    "token expires soon (501 5.5.127) at a reconnect": Fault(
        lambda sb: (
            sb.smtp.disconnect_after(120),
            sb.smtp.throttle(AUTH_EXPIRES_SOON, command="AUTH", count=1, after_messages=120),
        ),
        sessions=1,
        report_checks={"fresh token": lambda r: r.token_requests == 2 and r.reconnects == 1},
    ),
    "reply stalled after the content (client times out)": Fault(
        lambda sb: sb.smtp.stall_after(140, 3.0, command="content"),
        sessions=1,
        all_accepted=False,
        unknown=1,
        timeout=1.0,
        window_unknown=True,
    ),
    "reply to MAIL FROM stalled (client times out)": Fault(
        lambda sb: sb.smtp.stall_after(60, 3.0, command="MAIL"),
        report_checks={"reconnected": lambda r: r.reconnects == 1},
        timeout=1.0,
        window_unknown=True,
    ),
    "token endpoint 429 with Retry-After": Fault(
        lambda sb: sb.entra.throttle(2, status=429, retry_after=1),
        sessions=1,
        sandbox_check=lambda sb: sb.entra.next_throttle() is None and _token_posts(sb) == 3,
    ),
    "token endpoint 503 twice": Fault(
        lambda sb: sb.entra.throttle(2, status=503, retry_after=0),
        sessions=1,
        sandbox_check=lambda sb: sb.entra.next_throttle() is None and _token_posts(sb) == 3,
    ),
    # Permanent, for the whole session: stop early with the diagnosis, report what was and was not sent.
    "554 5.2.0 quota used up after 100 messages": Fault(
        lambda sb: sb.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="content", count=10_000, after_messages=100),
        raises=HveSendError,
        accepted=100,
        error_match=r"554 5\.2\.0 .*quota is used up.*the run stopped: 100 accepted",
    ),
    "535 5.7.3 when reconnecting": Fault(
        lambda sb: (
            sb.smtp.disconnect_after(90),
            sb.smtp.throttle(AUTH_FAILED, command="AUTH", count=10, after_messages=90),
        ),
        sessions=1,
        raises=HveAuthError,
        accepted=90,
        error_match=r"refused AUTH XOAUTH2 .*535 5\.7\.3",
    ),
    "HVE keeps hanging up (retries run out)": Fault(
        lambda sb: sb.smtp.disconnect_after(0, times=50),
        raises=HveConnectionError,
        accepted=0,
        error_match=r"answered EHLO with 421 .*Giving up: 4 broken session\(s\) in a row \(max_reconnects=3\)",
    ),
    "token endpoint down (503 beyond the retries)": Fault(
        lambda sb: sb.entra.throttle(20, status=503, retry_after=0),
        raises=HveAuthError,
        accepted=0,
        error_match=r"503",
        sandbox_check=lambda sb: not sb.smtp_sessions,
    ),
}


@pytest.mark.parametrize("mode", ["bdat", "data"])
@pytest.mark.parametrize("name", list(MATRIX))
def test_fault_matrix(name: str, mode: str, sandbox: HveSandbox, hve_connection: Callable[..., str]) -> None:
    """Each fault with BDAT windows (the sandbox offers CHUNKING, as Exchange does) and with DATA (it does not)."""
    fault = MATRIX[name]
    sandbox.smtp.chunking = mode == "bdat"
    hook = HveHook(hve_conn_id=hve_connection(timeout=fault.timeout))
    fault.inject(sandbox)
    merge = MailMerge(
        hook,
        subject="Statement for {{ recipient.name }}",
        text_content="Dear {{ recipient.name }}, this is your statement.",
        sessions=fault.sessions,
        progress_interval=60,
    )
    error: HveError | None = None
    if fault.raises is not None:
        with pytest.raises(fault.raises) as caught:
            merge.run(ROW_LIST)
        error = caught.value
    else:
        merge.run(ROW_LIST)
    report = merge.last_report
    assert report is not None

    check_invariant(report, sandbox)

    if fault.sandbox_check is not None:
        assert fault.sandbox_check(sandbox), "the fault did not happen as planned"
    if error is not None:
        # Stopped early: the error says what happened; rows not tried are listed.
        assert re.search(fault.error_match, str(error), re.DOTALL), str(error)
        assert report.accepted + len(report.refused) + len(report.unknown) + len(report.not_sent) == ROWS
        assert report.not_sent, "a run stopped early must list the rows it did not send"
        assert report.accepted == fault.accepted, report.as_dict()
        return
    assert report.not_sent == []
    assert len(report.refused) == fault.refused, report.refused
    if mode == "bdat" and fault.window_unknown:
        assert fault.unknown <= len(report.unknown) <= max(fault.unknown, 1) * DEFAULT_BDAT_WINDOW, report.unknown
        assert report.accepted + len(report.unknown) == ROWS - fault.refused
    else:
        assert len(report.unknown) == fault.unknown, report.unknown
        if fault.all_accepted:
            assert report.accepted == ROWS
    for what, check in fault.report_checks.items():
        assert check(report), f"{what}: {report.as_dict()}"


def check_invariant(report: BulkReport, sandbox: HveSandbox, addresses: list[str] = ADDRESSES) -> None:
    """Every recipient exactly once accepted or reported; the mailbox agrees; nobody twice."""
    # Give late deliveries (a stalled reply) time to land before judging the mailbox.
    sandbox.wait_for_messages(report.accepted, timeout=10)
    received = Counter(rcpt for message in sandbox.messages for rcpt in message.rcpt_tos)
    twice = sorted(address for address, count in received.items() if count > 1)
    assert not twice, f"delivered more than once: {twice}"

    refused, unknown, not_sent = set(report.refused), set(report.unknown), set(report.not_sent)
    assert len(unknown) == len(report.unknown) and len(not_sent) == len(report.not_sent), "reported twice"
    assert not (refused & unknown or refused & not_sent or unknown & not_sent), "a row in two buckets"
    assert refused | unknown | not_sent <= set(addresses), "a bucket holds an address that was not a row"
    assert report.invalid == {} and report.skipped == 0

    accepted = set(addresses) - refused - unknown - not_sent
    assert len(accepted) == report.accepted, "a row is in no bucket (lost) or accepted twice"
    delivered = set(received)
    assert accepted <= delivered, f"reported accepted, not in the mailbox: {sorted(accepted - delivered)[:5]}"
    assert delivered <= accepted | unknown, f"in the mailbox, reported otherwise: {sorted(delivered - accepted)[:5]}"


def test_a_stalled_reply_is_unknown_and_never_resent(sandbox: HveSandbox, hve_connection: Callable[..., str]) -> None:
    # The hard case for "never twice": HVE took the message but its 250 never came back in time. With DATA only
    # that message is in flight (with BDAT a window is: tests/test_bdat_windows.py).
    sandbox.smtp.chunking = False
    hook = HveHook(hve_conn_id=hve_connection(timeout=1))
    sandbox.smtp.stall_after(3, 2.5, command="content")
    report = MailMerge(hook, subject="x", text_content="y", sessions=1).run(ROW_LIST[:10])
    assert report.unknown == [ADDRESSES[3]]
    assert report.accepted == 9 and report.reconnects == 1
    sandbox.wait_for_messages(10, timeout=10)
    # It did arrive (after the client gave up), once.
    assert Counter(m.rcpt_tos[0] for m in sandbox.messages)[ADDRESSES[3]] == 1


@pytest.mark.parametrize("resend_unknown", [False, True], ids=["kept-unknown", "resend-unknown"])
def test_a_row_unknown_in_one_try_is_resent_only_when_asked_and_under_the_same_message_id(
    sandbox: HveSandbox, hve_connection: Callable[..., str], resend_unknown: bool
) -> None:
    # Try 1: the stalled reply leaves row 3 unknown (it did arrive). Try 2 with the same delivery log: by default
    # row 3 stays unknown and nothing is sent; with resend_unknown it goes again under the same Message-ID (a
    # mailbox store that has it can drop the copy), and nothing else is sent twice.
    from airflow_provider_hve.bulk import TaskStateDeliveryLog

    class Store(dict):  # type: ignore[type-arg]  # task_state_store's get/set/delete, across tries
        def set(self, key: str, value: Any) -> None:
            self[key] = value

        def delete(self, key: str) -> None:
            self.pop(key, None)

    store = Store()
    sandbox.smtp.chunking = False
    hook = HveHook(hve_conn_id=hve_connection(timeout=1))
    sandbox.smtp.stall_after(3, 2.5, command="content")

    def run(**options: Any) -> BulkReport:
        log = TaskStateDeliveryLog(store, prefix="merge")
        merge = MailMerge(hook, subject="x", text_content="y", sessions=1, delivery_log=log, **options)
        return merge.run(ROW_LIST[:10])

    first = run(message_id_seed="dag\0run\0merge\0-1")
    assert first.unknown == [ADDRESSES[3]] and first.accepted == 9
    sandbox.wait_for_messages(10, timeout=10)
    (original,) = [m for m in sandbox.messages if m.rcpt_tos == [ADDRESSES[3]]]
    second = run(message_id_seed="dag\0run\0merge\0-1", resend_unknown=resend_unknown)
    assert second.skipped == 9
    received = Counter(m.rcpt_tos[0] for m in sandbox.messages)
    if not resend_unknown:
        assert second.unknown == [ADDRESSES[3]] and second.accepted == 0
        assert received[ADDRESSES[3]] == 1 and len(sandbox.messages) == 10
        return
    assert second.unknown == [] and second.accepted == 1
    copies = sandbox.wait_for_messages(11, timeout=10)
    resent = [m for m in copies if m.rcpt_tos == [ADDRESSES[3]]]
    assert len(resent) == 2 and {m.message["Message-ID"] for m in resent} == {original.message["Message-ID"]}
    assert all(count == 1 for address, count in received.items() if address != ADDRESSES[3]), received


def test_retry_budget_bounds_the_work_of_a_failing_run(sandbox: HveSandbox, hve_connection: Callable[..., str]) -> None:
    # HVE defers every message for a minute: after two resends the budget is spent and the run stops instead
    # of grinding on; the rows are not_sent (a later retry of the task sends them), none refused or lost.
    hook = HveHook(hve_conn_id=hve_connection())
    sandbox.smtp.throttle(TEMPORARY_FAILURE, command="content", seconds=60)
    merge = MailMerge(hook, subject="x", text_content="y", sessions=1, retry_budget=2)
    with pytest.raises(HveConnectionError, match=r"keeps deferring messages \(451 4\.3\.0.*budget \(2\) is spent"):
        merge.run(ROW_LIST[:6])
    report: Any = merge.last_report
    assert report.retried == 2 and report.retry_budget_left == 0
    assert report.refused == {} and report.accepted == 0
    assert sorted(report.not_sent) == ADDRESSES[:6]
    assert not sandbox.messages


def test_a_row_whose_data_breaks_its_template_is_invalid_and_the_rest_go(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    # Not a template syntax error (caught up front) but a runtime one in row 5: 1 / 0.
    rows = [{**row, "n": 0 if i == 5 else 1} for i, row in enumerate(ROW_LIST[:20])]
    hook = HveHook(hve_conn_id=hve_connection())
    report = MailMerge(hook, subject="x", text_content="{{ 10 / recipient.n }}", sessions=1).run(rows)
    (reason,) = report.invalid.values()
    assert list(report.invalid) == ["row 5"]
    assert reason.startswith("Row 5: the template of argument 'text_content' failed: ZeroDivisionError")
    assert report.accepted == 19 and report.not_sent == [] and report.unknown == []
    delivered = sorted(m.rcpt_tos[0] for m in sandbox.wait_for_messages(19))
    assert delivered == [a for i, a in enumerate(ADDRESSES[:20]) if i != 5]


def test_an_interrupted_run_stops_its_sessions_and_keeps_the_invariant(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    # What execution_timeout or SIGTERM do to a task: an exception in the main thread while the sessions send.
    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    sandbox.latency_ms = 20
    hook = HveHook(hve_conn_id=hve_connection())
    # 20 messages a second: the run is far from done (13 s left) when the 30th arrives, however busy the machine.
    merge = MailMerge(hook, subject="x", text_content="y", sessions=2, rate_per_minute=1200)

    def interrupt_after_some_deliveries() -> None:
        # Interrupt once HVE took 30 messages, however fast or slow this machine is.
        sandbox.wait_for_messages(30, timeout=60)
        os.kill(os.getpid(), signal.SIGALRM)  # the handler runs in the main thread, as Airflow's timeout does

    previous = signal.signal(signal.SIGALRM, interrupt)
    watcher = threading.Thread(target=interrupt_after_some_deliveries, daemon=True)
    watcher.start()
    try:
        with pytest.raises(Interrupted):
            merge.run(ROW_LIST)
    finally:
        watcher.join()
        signal.signal(signal.SIGALRM, previous)
    report = merge.last_report
    assert report is not None
    assert 0 < report.accepted < ROWS and report.not_sent, report.as_dict()
    check_invariant(report, sandbox)
    # The sessions are gone: nothing more arrives after the run returned.
    count = len(sandbox.messages)
    time.sleep(0.5)
    assert len(sandbox.messages) == count


def test_on_kill_stops_the_merge_and_its_operator_keeps_the_report(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    # What Airflow 3 does on SIGTERM: its handler calls the operator's on_kill() in the main thread, no exception.
    # The merge must then hand over nothing more and end with a true report, pushed as XCom hve_summary.
    from airflow_provider_hve.operators.hve import HveMailMergeOperator

    sandbox.latency_ms = 20
    operator = HveMailMergeOperator(
        task_id="merge",
        recipients=ROW_LIST,
        subject="x",
        text_content="y",
        sessions=2,
        rate_per_minute=1200,  # far from done (13 s left) when killed after 30 messages, however busy the machine
        hve_conn_id=hve_connection(),
    )
    pushed: dict[str, Any] = {}

    class TaskInstance:
        def xcom_push(self, key: str, value: Any) -> None:
            pushed[key] = value

    def kill_after_some_deliveries() -> None:
        sandbox.wait_for_messages(30, timeout=60)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: operator.on_kill())
    watcher = threading.Thread(target=kill_after_some_deliveries, daemon=True)
    watcher.start()
    try:
        with pytest.raises(HveError, match="told to stop .* accepted, nothing more handed over"):
            operator.execute({"ti": TaskInstance()})  # type: ignore[arg-type]
    finally:
        watcher.join()
        signal.signal(signal.SIGTERM, previous)
    summary = pushed["hve_summary"]
    assert 0 < summary["accepted"] < ROWS and summary["not_sent"], summary
    assert summary["accepted"] + summary["refused_count"] + len(summary["unknown"]) + len(summary["not_sent"]) == ROWS
    sandbox.wait_for_messages(summary["accepted"], timeout=10)
    count = len(sandbox.messages)
    assert summary["accepted"] <= count <= summary["accepted"] + len(summary["unknown"]), (count, summary)
    time.sleep(0.5)
    assert len(sandbox.messages) == count, "a message was handed over after on_kill"


def test_a_merge_told_to_stop_before_it_connects_sends_nothing(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    # on_kill can come while the rows and templates are still being read: the run must not start sending then.
    merge = MailMerge(HveHook(hve_conn_id=hve_connection()), subject="x", text_content="y", sessions=2)
    merge.stop()
    with pytest.raises(HveError, match="told to stop"):
        merge.run(ROW_LIST[:20])
    assert merge.last_report is not None and len(merge.last_report.not_sent) == 20
    assert len(sandbox.messages) == 0


def test_a_template_that_fails_for_every_row_fails_the_merge_after_a_few_rows(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    from airflow_provider_hve.bulk.merge import FIRST_ROWS_TRIED

    tried: list[int] = []
    merge = MailMerge(HveHook(hve_conn_id=hve_connection()), subject="{{ recipient.nmae }}", text_content="y")
    build = merge._build

    def counting_build(row: Any, **options: Any) -> Any:
        tried.append(row.index)
        return build(row, **options)

    merge._build = counting_build  # type: ignore[method-assign]
    with pytest.raises(HveConfigError, match="'nmae'"):
        merge.run(ROW_LIST)
    assert len(tried) == FIRST_ROWS_TRIED < len(ROW_LIST)
    assert not sandbox.smtp_sessions


def test_no_message_is_handed_over_after_the_run_stops(sandbox: HveSandbox, hve_connection: Callable[..., str]) -> None:
    # One message a second across two sessions, and HVE's quota runs out after two messages. The session that reads
    # the 554 stops the run while the other one waits for its turn (about a second away): it must wake up and hand
    # nothing over, instead of sending one more message into the quota after the run stopped.
    sandbox.smtp.pipelining = False  # each message completes within its turn: the timeline is the limiter's
    sandbox.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="content", count=10_000, after_messages=2)
    hook = HveHook(hve_conn_id=hve_connection())
    merge = MailMerge(hook, subject="x", text_content="y", sessions=2, rate_per_minute=60)
    with pytest.raises(HveSendError, match=r"quota is used up.*the run stopped: 2 accepted"):
        merge.run(ROW_LIST[:10])
    report: Any = merge.last_report
    check_invariant(report, sandbox, ADDRESSES[:10])
    transactions = [t for session in sandbox.smtp_sessions for t in session.transactions]
    assert len(transactions) == 3, [(t.rcpt_tos, t.data_reply) for t in transactions]
    assert report.accepted == 2 and len(report.refused) == 1 and len(report.not_sent) == 7


def test_no_content_is_handed_over_after_the_run_stops_with_pipelining(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    # Pipelined, one session: the 554 to message 3's content is read in the same call that would write message
    # 4's content. The reply must reach the ledger (and stop the run) before that write: message 4's commands may
    # have gone out, its content must not. (The DATA path; with BDAT see test_bdat_windows.py.)
    assert sandbox.smtp.pipelining
    sandbox.smtp.chunking = False
    sandbox.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="content", count=10_000, after_messages=2)
    hook = HveHook(hve_conn_id=hve_connection())
    merge = MailMerge(hook, subject="x", text_content="y", sessions=1)
    with pytest.raises(HveSendError, match=r"quota is used up.*the run stopped: 2 accepted"):
        merge.run(ROW_LIST[:10])
    report: Any = merge.last_report
    check_invariant(report, sandbox, ADDRESSES[:10])
    (session,) = sandbox.smtp_sessions
    with_content = [t.rcpt_tos for t in session.transactions if t.data_reply is not None]
    assert with_content == [[ADDRESSES[0]], [ADDRESSES[1]], [ADDRESSES[2]]], with_content
    assert report.accepted == 2 and len(report.refused) == 1 and len(report.not_sent) == 7


# A session waiting for its turn wakes on the stop: tests/unit/test_shared_ledger.py.


def test_the_stop_error_reports_the_final_figures(sandbox: HveSandbox, hve_connection: Callable[..., str]) -> None:
    # The 6th message is delivered but its 250 comes 2 s late; every later message hits the quota. The other session
    # reads a 554 and stops the run while the 6th's reply is still on its way: the error must count it (6 accepted),
    # as the report does, not the 5 known when the run stopped.
    sandbox.smtp.stall_after(5, 2.0, command="content")
    sandbox.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="content", count=10_000, after_messages=6)
    hook = HveHook(hve_conn_id=hve_connection(timeout=10))
    merge = MailMerge(hook, subject="x", text_content="y", sessions=2)
    with pytest.raises(HveSendError) as caught:
        merge.run(ROW_LIST[:40])
    report: Any = merge.last_report
    check_invariant(report, sandbox, ADDRESSES[:40])
    assert report.accepted == 6 == len(sandbox.messages)
    assert "the run stopped: 6 accepted." in str(caught.value), str(caught.value)
