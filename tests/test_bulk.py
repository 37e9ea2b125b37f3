"""Personalised bulk sending (mail merge) against the sandbox: every row once, one token, few connections."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_hve.bulk import MailMerge
from airflow_provider_hve.exceptions import HveConfigError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox

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
