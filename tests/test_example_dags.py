"""The example DAGs, run end to end by real Airflow (dag.test() on a migrated SQLite DB) against the sandbox."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from airflow_provider_hve._compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_VERSION
from airflow_provider_hve.sandbox import DeliveredMessage, HveSandbox
from tests import warm

EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"


def by_subject(messages: list[DeliveredMessage], prefix: str) -> DeliveredMessage:
    (found,) = [m for m in messages if str(m.message["Subject"]).startswith(prefix)]
    return found


def bodies(message: EmailMessage) -> tuple[str, str]:
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    return html.get_content(), text.get_content()


def test_example_dags_parse_without_errors(parse_dags: Callable[[Any], Any]) -> None:
    bag = parse_dags(EXAMPLE_DAGS)
    assert not bag.import_errors
    assert {"hve_daily_report", "hve_failure_alerts", "hve_alert_outbox"} <= set(bag.dag_ids)


def test_daily_report_delivers_table_text_and_csv(run_dag: Callable[..., Any], sandbox: HveSandbox) -> None:
    dag_run = run_dag(EXAMPLE_DAGS / "hve_daily_report.py", "hve_daily_report")
    assert dag_run.state == "success"

    (delivered,) = sandbox.wait_for_messages(1)
    message = delivered.message
    ds = dag_run.logical_date.strftime("%Y-%m-%d")
    assert message["Subject"] == f"Daily sales {ds}"
    assert message["To"] == "sales-team@contoso.example"
    assert message["Bcc"] is None and b"sales-archive" not in delivered.data
    assert sorted(delivered.rcpt_tos) == ["sales-archive@contoso.example", "sales-team@contoso.example"]
    assert message["X-Report"] == "daily-sales"

    html, text = bodies(message)
    assert f"Daily sales by region, {ds}" in html
    assert "Xbox &lt;Series X&gt;" in html and "<Series X>" not in html
    assert "Teams Rooms &amp; Displays" in html
    assert "3 rows" in html
    assert "hve_daily_report" in html  # run details
    assert "Xbox <Series X>" in text and "Surface Laptop" in text

    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == f"sales_{ds.replace('-', '')}.csv"
    rows = list(csv.DictReader(io.StringIO(attachment.get_content().lstrip("\ufeff"))))
    assert [r["region"] for r in rows] == ["EMEA", "Americas", "APAC"]
    assert rows[1]["top_product"] == "Xbox <Series X>"


def test_failure_alerts_by_notifier_at_task_and_dag_level(run_dag: Callable[..., Any], sandbox: HveSandbox) -> None:
    dag_run = run_dag(EXAMPLE_DAGS / "hve_failure_alerts.py", "hve_failure_alerts")
    assert dag_run.state == "failed"

    messages = sandbox.wait_for_messages(2)
    assert len(messages) == 2
    assert all(m.rcpt_tos == ["data-oncall@contoso.example"] for m in messages)
    escaped = "column &lt;b&gt;amount&lt;/b&gt; has &#39;N/A&#39; &amp; 3 other bad values"

    task_alert = by_subject(messages, "[Airflow] hve_failure_alerts.load failed (try 1 of 1)")
    assert len(str(task_alert.message["Subject"])) < 80
    html, text = bodies(task_alert.message)
    # Their dag.test() gives callbacks no exception (3.2.2's run_task_in_process skips the task runner's
    # context["exception"] = error); real runs do.
    if AIRFLOW_VERSION[:2] not in ((3, 0), (3, 1), (3, 2)):
        assert "ValueError" in html and escaped in html and "<b>amount</b>" not in html
        assert "column <b>amount</b> has 'N/A' & 3 other bad values" in text
    facts = ["hve_failure_alerts", dag_run.run_id, "Try", "1 of 1", "Host", "Open the log"]
    if AIRFLOW_V_3_0_PLUS:  # 2.11's dag.test() leaves the task's start_date unset: no duration to show there
        facts.append("Duration")
    for fact in facts:
        assert fact in html, fact

    dag_alert = by_subject(messages, f"[Airflow] DAG hve_failure_alerts failed: {dag_run.run_id}")
    html, text = bodies(dag_alert.message)
    assert "Failed tasks" in html and "<li>load</li>" in html and "Open the run" in html


def test_importing_operator_notifier_and_example_dags_does_not_import_msal() -> None:
    # Airflow 2.11's own BaseOperator imports smtplib: count only what the provider adds on top of Airflow.
    code = (
        "import sys, runpy\n"
        "from airflow.providers.common.compat.sdk import BaseNotifier, BaseOperator, dag, task\n"
        "HEAVY = ('msal', 'aiosmtpd', 'inscriptis', 'email_validator', 'smtplib')\n"
        "airflows_own = {m for m in HEAVY if m in sys.modules}\n"
        "import airflow_provider_hve.operators.hve, airflow_provider_hve.notifications.hve\n"
        "import airflow_provider_hve.utils.email\n"
        f"for name in ('hve_daily_report', 'hve_failure_alerts', 'hve_deadline_alert', 'hve_alert_outbox'):\n"
        f"    runpy.run_path({str(EXAMPLE_DAGS)!r} + '/' + name + '.py')\n"
        "heavy = [m for m in HEAVY if m in sys.modules and m not in airflows_own]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ})


def test_mail_merge_fans_out_over_mapped_tasks(
    run_dag: Callable[..., Any], sandbox: HveSandbox, token_posts: Callable[[], list[Any]]
) -> None:
    # `airflow pools set`, in a process that starts with Airflow imported (tests/warm.py), not a fresh interpreter.
    done = warm.run_module("airflow", "pools", "set", "hve_smtp", "8", "HVE SMTP sessions", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    dag_run = run_dag(EXAMPLE_DAGS / "hve_mail_merge.py", "hve_mail_merge")
    assert dag_run.state == "success"

    delivered = sandbox.wait_for_messages(300, timeout=30)
    assert sorted(m.rcpt_tos[0] for m in delivered) == [f"employee{n:04d}@contoso.example" for n in range(300)]
    sample = {m.rcpt_tos[0]: m.message for m in delivered}["employee0007@contoso.example"]
    ds = dag_run.logical_date.strftime("%Y-%m-%d")
    assert sample["Subject"] == f"Your hours for {ds}, Employee 7"
    assert "you logged <b>37</b> hours." in sample.get_body(("html",)).get_content()
    # dag.test() runs the three mapped tasks in one process: one token for all of them.
    assert len(token_posts()) == 1
    # Three mapped tasks with two sessions each.
    assert len({m.session_id for m in delivered}) <= 6
