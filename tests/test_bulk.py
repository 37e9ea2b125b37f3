"""Personalised bulk sending (mail merge) against the sandbox: every row once, one token, few connections."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_hve.addresses import parse_mailbox
from airflow_provider_hve.bulk import MailMerge
from airflow_provider_hve.bulk.rows import Row
from airflow_provider_hve.exceptions import HveConfigError, HveConnectionError, HveSendError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.message import Attachment
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.smtp_server import RECIPIENT_NOT_FOUND, SUBMISSION_QUOTA_EXCEEDED

ConnFactory = Callable[..., str]


def rows(count: int) -> list[dict[str, Any]]:
    return [{"email": f"user{n:05d}@contoso.example", "name": f"User <{n}>", "balance": n * 3} for n in range(count)]


@pytest.fixture
def hook(hve_connection: ConnFactory) -> HveHook:
    return HveHook(hve_conn_id=hve_connection())


def test_thousand_personalised_messages_one_token_few_connections(
    sandbox: HveSandbox, hook: HveHook, token_posts: Callable[[], list[Any]]
) -> None:
    merge = MailMerge(
        hook,
        subject="Statement for {{ recipient.name }}",
        html_content="<p>Dear {{ recipient.name }}, your balance is {{ recipient.balance }}.</p>",
        text_content="Dear {{ recipient.name }}, your balance is {{ recipient.balance }}.",
        sessions=3,
    )
    report = merge.run(rows(1000))

    assert (report.accepted, report.refused, report.invalid, report.unknown) == (1000, {}, {}, [])
    assert report.token_requests == 1 and len(token_posts()) == 1
    assert len(sandbox.smtp_sessions) == 3
    delivered = sandbox.wait_for_messages(1000, timeout=30)
    assert len(delivered) == 1000
    by_rcpt = {m.rcpt_tos[0]: m.message for m in delivered}
    assert sorted(by_rcpt) == [r["email"] for r in rows(1000)]  # each exactly once
    sample = by_rcpt["user00042@contoso.example"]
    assert sample["Subject"] == "Statement for User <42>"
    assert "Dear User &lt;42&gt;, your balance is 126." in sample.get_body(("html",)).get_content()
    assert "Dear User <42>, your balance is 126." in sample.get_body(("plain",)).get_content()
    assert len({m["Message-ID"] for m in by_rcpt.values()}) == 1000


def test_bad_rows_are_reported_and_the_rest_sent(sandbox: HveSandbox, hook: HveHook) -> None:
    data = [
        {"email": "ok1@contoso.example", "name": "A"},
        {"email": "not an address", "name": "B"},
        {"name": "no address"},
        {"email": "ok2@contoso.example"},  # no name: the template fails for this row only
        {"email": "outside@gmail.com", "name": "C"},
        "not a dict",
    ]
    report = MailMerge(hook, subject="Hi {{ recipient.name }}", text_content="x", sessions=1).run(data)

    assert report.accepted == 1
    assert set(report.invalid) == {"row 1", "row 2", "row 3", "row 5"}
    assert "has no attribute 'name'" in report.invalid["row 3"]
    assert report.refused["outside@gmail.com"][0] == 550
    assert [m.rcpt_tos for m in sandbox.wait_for_messages(1)] == [["ok1@contoso.example"]]


def test_template_error_on_first_row_fails_before_connecting(
    sandbox: HveSandbox, hook: HveHook, token_posts: Callable[[], list[Any]]
) -> None:
    merge = MailMerge(hook, subject="Hi {{ recipient.nmae }}", text_content="x")
    with pytest.raises(HveConfigError, match="'nmae'"):
        merge.run(rows(10))
    assert not sandbox.smtp_sessions and not token_posts()


def test_progress_is_logged(sandbox: HveSandbox, hook: HveHook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="airflow_provider_hve.bulk")
    MailMerge(hook, subject="x", text_content="y", progress_interval=0.0, sessions=1).run(rows(30))
    lines = [r.getMessage() for r in caplog.records if "HVE mail merge:" in r.getMessage()]
    assert len(lines) >= 2
    assert "30/30 sent (100%)" in lines[-1] and "msg/s" in lines[-1] and "ETA" in lines[-1]


def test_rate_limit_spreads_messages(sandbox: HveSandbox, hook: HveHook) -> None:
    report = MailMerge(hook, subject="x", text_content="y", sessions=2, rate_per_minute=600).run(rows(11))
    # 11 starts at 0.1 s intervals: at least a second.
    assert report.accepted == 11 and report.elapsed_seconds >= 0.95


@pytest.mark.parametrize(("sessions", "rate"), [(0, None), (9, None), (1, 0)], ids=["zero", "too-many", "zero-rate"])
def test_bad_bulk_arguments(hook: HveHook, sessions: int, rate: float | None) -> None:
    with pytest.raises(HveConfigError):
        MailMerge(hook, subject="x", text_content="y", sessions=sessions, rate_per_minute=rate)


MERGE_CASES = __import__("pathlib").Path(__file__).parent / "dags" / "hve_merge_cases.py"


def test_retry_after_a_broken_connection_sends_each_recipient_exactly_once(
    run_dag: Callable[..., Any],
    sandbox: HveSandbox,
    task_outputs: Callable[..., Any],
    capfd: pytest.CaptureFixture[str],
) -> None:
    # HVE closes the connection (421) after 15 messages: the first try fails half-way, the retry finishes.
    sandbox.smtp.disconnect_after(15)
    dag_run = run_dag(MERGE_CASES, "hve_case_merge_retry")
    assert dag_run.state == "success"

    delivered = sandbox.wait_for_messages(40, timeout=10)
    addresses = sorted(m.rcpt_tos[0] for m in delivered)
    assert addresses == [f"person{n:03d}@contoso.example" for n in range(40)]  # each once: none twice, none lost
    out, err = capfd.readouterr()
    assert "The connection to HVE broke" in out + err  # the first try's failure, in the task log
    assert len({m.session_id for m in delivered}) == 2  # two tries, two connections

    summary, _ = task_outputs(dag_run, "merge")
    # The retry skipped what the first try delivered (task_state_store) and sent the rest.
    assert summary["skipped_already_delivered"] == 15
    assert summary["accepted"] == 25 and summary["unknown"] == [] and summary["not_sent"] == []


def test_broken_connection_mid_run_reconnects_and_loses_nothing(sandbox: HveSandbox, hook: HveHook) -> None:
    # A 421 in place of a final reply means "not accepted": those messages go again on a new connection.
    sandbox.smtp.disconnect_after(10)
    report = MailMerge(hook, subject="Hi {{ recipient.name }}", text_content="x", sessions=1).run(rows(50))

    assert (report.accepted, report.unknown, report.not_sent, report.reconnects) == (50, [], [], 1)
    delivered = sandbox.wait_for_messages(50)
    assert sorted(m.rcpt_tos[0] for m in delivered) == [r["email"] for r in rows(50)]
    assert len({m.session_id for m in delivered}) == 2


def test_refused_recipient_is_reported_and_the_run_goes_on(sandbox: HveSandbox, hook: HveHook) -> None:
    sandbox.smtp.refuse_recipient("user00003@contoso.example")
    report = MailMerge(hook, subject="x", text_content="y", sessions=1).run(rows(8))

    assert report.refused == {"user00003@contoso.example": [550, RECIPIENT_NOT_FOUND[4:]]}
    assert report.accepted == 7 and report.not_sent == []
    assert len(sandbox.wait_for_messages(7)) == 7


def test_quota_exhausted_stops_the_run_with_the_diagnosis(sandbox: HveSandbox, hook: HveHook) -> None:
    # 554 5.2.0 (submission quota) holds for every later message too: stop, say why, list what was not sent.
    sandbox.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="content", count=1000)
    merge = MailMerge(hook, subject="x", text_content="y", sessions=2)
    with pytest.raises(HveSendError, match=r"554 5\.2\.0.*quota is used up.*the run stopped") as caught:
        merge.run(rows(30))
    assert caught.value.smtp_code == 554
    report = merge.last_report
    assert report is not None and report.accepted == 0 and not sandbox.messages
    # At most a few messages were refused (those already on their way); every other row is not_sent.
    assert 1 <= len(report.refused) <= 4
    assert sorted([*report.refused, *report.not_sent]) == [r["email"] for r in rows(30)]


def test_without_pipelining_every_message_still_arrives_once(sandbox: HveSandbox, hook: HveHook) -> None:
    sandbox.smtp.pipelining = False
    try:
        report = MailMerge(hook, subject="x", text_content="y", sessions=1).run(rows(20))
    finally:
        sandbox.smtp.pipelining = True
    assert report.accepted == 20
    assert sorted(m.rcpt_tos[0] for m in sandbox.wait_for_messages(20)) == [r["email"] for r in rows(20)]


def test_pipelining_costs_one_round_trip_per_message(sandbox: HveSandbox, hook: HveHook) -> None:
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        assert pipeline.pipelining
        before = sandbox.smtp_round_trips()
        for n in range(30):
            out = hook.build_message(to=f"u{n}@contoso.example", subject="x", text_content="y")
            pipeline.submit(n, out.payload, out.recipients)
        done = pipeline.flush()
        trips = sandbox.smtp_round_trips() - before
    assert done and len(sandbox.wait_for_messages(30)) == 30
    # Unpipelined, each message would cost 4 (MAIL, RCPT, DATA, content); pipelined about 1.
    assert trips <= 30 * 1.5, trips


def test_temporary_refusals_are_retried_with_backoff_and_then_reported(sandbox: HveSandbox, hook: HveHook) -> None:
    # Two 451s: both messages go again after a backoff and arrive; the budget is not exhausted.
    sandbox.smtp.fail_next_data("451 4.3.0 Temporary server error", count=2)
    report = MailMerge(hook, subject="x", text_content="y", sessions=1).run(rows(10))
    assert (report.accepted, report.refused, report.retried) == (10, {}, 2)
    assert sorted(m.rcpt_tos[0] for m in sandbox.wait_for_messages(10)) == [r["email"] for r in rows(10)]


def test_temporary_refusal_budget_is_bounded(sandbox: HveSandbox, hook: HveHook) -> None:
    sandbox.smtp.fail_next_data("452 4.3.1 Insufficient system resources", count=50)
    report = MailMerge(hook, subject="x", text_content="y", sessions=1).run(rows(1))
    # The first try and three more, then reported with the server's reply; nothing delivered, nothing lost.
    assert report.accepted == 0 and report.retried == 3
    assert report.refused == {"user00000@contoso.example": [452, "4.3.1 Insufficient system resources"]}
    assert not sandbox.messages


def test_a_stop_wakes_a_session_waiting_for_the_rate_and_nothing_more_is_handed_over(
    sandbox: HveSandbox, hook: HveHook
) -> None:
    # One message every 10 s across two sessions: the second session waits for its turn when the first
    # message's 554 quota reply stops the run. It must wake up at once and hand over nothing.
    sandbox.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="content", count=1000)
    merge = MailMerge(hook, subject="x", text_content="y", sessions=2, rate_per_minute=6)
    with pytest.raises(HveSendError, match=r"the run stopped: 0 accepted\."):
        merge.run(rows(5))
    report = merge.last_report
    assert report is not None and report.elapsed_seconds < 5, report.as_dict()  # not the 10 s of the next turn
    contents = [t for s in sandbox.smtp_sessions for t in s.transactions if t.data_reply is not None]
    assert len(contents) == 1, contents  # the refused one; no message handed over after the stop
    assert list(report.refused) == ["user00000@contoso.example"]
    assert sorted(report.not_sent) == [r["email"] for r in rows(5)[1:]]


def test_a_server_without_starttls_stops_the_run_without_reconnecting(monkeypatch: pytest.MonkeyPatch) -> None:
    # A permanent set-up failure (no STARTTLS, a certificate that fails verification) would meet every
    # reconnect again: the run stops at once, says why, and lists every row as not sent.
    import json

    with HveSandbox(starttls=False) as plain:
        monkeypatch.setenv("AIRFLOW_CONN_HVE_PLAIN", json.dumps(plain.connection()))
        merge = MailMerge(HveHook(hve_conn_id="hve_plain"), subject="x", text_content="y", sessions=2)
        with pytest.raises(HveConnectionError, match="does not offer STARTTLS, so no token was sent"):
            merge.run(rows(5))
        assert len(plain.smtp_sessions) <= 2  # one connection per session, no reconnect
        assert not any(session.auth_attempts for session in plain.smtp_sessions)
        report = merge.last_report
        assert report is not None and report.accepted == 0 and not plain.messages
        assert sorted(report.not_sent) == [r["email"] for r in rows(5)]


INTERNATIONAL_ROWS = [
    {"email": "ann@contoso.example", "name": "Ann <&>", "note": "Plain ASCII."},
    {"email": "zoe@contoso.example", "name": "Zoë", "note": "Café crème, 中文, 🎉"},
    {"email": "Li Ming <li@contoso.example>", "name": "李明", "note": "长" * 200},
    {"email": "long@contoso.example", "name": "Long " * 30, "note": "All work and no play. " * 20},
]


@pytest.mark.parametrize("eight_bit_mime", [True, False], ids=["8bitmime", "no-8bitmime"])
def test_compiled_messages_arrive_as_the_email_package_builds_them(
    sandbox: HveSandbox, hook: HveHook, eight_bit_mime: bool
) -> None:
    sandbox.smtp.eight_bit_mime = eight_bit_mime
    attachment = Attachment("summary é.csv", "name,city\nZoë,Zürich\n".encode(), "text/csv")
    merge = MailMerge(
        hook,
        subject="Statement for {{ recipient.name }}",
        html_content="<p>Dear {{ recipient.name }},</p><p>{{ recipient.note }}</p>",
        text_content="Dear {{ recipient.name }},\n{{ recipient.note }}",
        attachments=[attachment],
        headers={"X-Campaign": "spring"},
        sessions=2,
    )
    report = merge.run(INTERNATIONAL_ROWS)

    assert report.accepted == len(INTERNATIONAL_ROWS)
    delivered = {m.rcpt_tos[0]: m for m in sandbox.wait_for_messages(len(INTERNATIONAL_ROWS), timeout=10)}
    for index, data in enumerate(INTERNATIONAL_ROWS):
        mailbox = parse_mailbox(data["email"])
        reference = merge._build(Row(index, mailbox, f"{index}:{mailbox.addr_spec}", data)).message
        message = delivered[mailbox.addr_spec].message
        assert message["Subject"] == reference["Subject"] == f"Statement for {' '.join(data['name'].split())}"
        assert [str(message[h]) for h in ("From", "To", "X-Campaign")] == [
            str(reference[h]) for h in ("From", "To", "X-Campaign")
        ]
        assert [p.get_content_type() for p in message.walk()] == [p.get_content_type() for p in reference.walk()]
        for kind in ("plain", "html"):
            got, want = message.get_body((kind,)), reference.get_body((kind,))
            assert got is not None and want is not None
            assert got.get_content().replace("\r\n", "\n") == want.get_content().replace("\r\n", "\n")
        (got_attachment,) = message.iter_attachments()
        assert (got_attachment.get_filename(), got_attachment.get_content()) == (
            "summary é.csv",
            "name,city\nZoë,Zürich\n",
        )
    assert "Dear Ann &lt;&amp;&gt;," in delivered["ann@contoso.example"].message.get_body(("html",)).get_content()
    assert all(m.data.isascii() for m in delivered.values()) is not eight_bit_mime
    # Built by the compiled message: one boundary for the whole run (the email package draws one per message).
    assert len({m.message.get_boundary() for m in delivered.values()}) == 1


def test_a_first_row_whose_data_breaks_the_template_is_invalid_and_the_rest_go(
    sandbox: HveSandbox, hook: HveHook
) -> None:
    # The same data makes row 1 invalid and the run goes on; as row 0 it must not abort the whole merge.
    data = [{"email": "nobody@contoso.example"}, *rows(3)]  # no "name": the subject's template fails for row 0
    report = MailMerge(hook, subject="Hi {{ recipient.name }}", text_content="x", sessions=1).run(data)
    assert list(report.invalid) == ["row 0"] and "has no attribute 'name'" in report.invalid["row 0"]
    assert report.accepted == 3
    assert sorted(m.rcpt_tos[0] for m in sandbox.wait_for_messages(3)) == [r["email"] for r in rows(3)]


def test_two_rows_refused_at_one_address_count_twice_and_the_buckets_add_up(sandbox: HveSandbox, hook: HveHook) -> None:
    sandbox.smtp.refuse_recipient("user00001@contoso.example")
    data = [*rows(4), rows(2)[1]]  # row 4 is row 1 again: two rows, one address
    summary = MailMerge(hook, subject="x", text_content="y", sessions=1).run(data).as_dict()
    assert summary["refused"] == {"user00001@contoso.example": [550, RECIPIENT_NOT_FOUND[4:]]}
    assert summary["refused_count"] == 2 and summary["accepted"] == 3
    buckets = ("invalid", "unknown", "not_sent")
    total = summary["accepted"] + summary["refused_count"] + summary["skipped_already_delivered"]
    assert total + sum(len(summary[bucket]) for bucket in buckets) == summary["total"] == 5
