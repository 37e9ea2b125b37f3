"""HveEmailOperator features, run by real Airflow (dag.test()) against the sandbox: tests/dags/."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hve._compat import AIRFLOW_VERSION
from airflow_provider_hve.sandbox import HveSandbox

CASES = Path(__file__).parent / "dags" / "hve_operator_cases.py"


def test_template_file_data_images_files_and_csv(
    run_dag: Callable[..., Any], sandbox: HveSandbox, task_outputs: Callable[..., Any]
) -> None:
    dag_run = run_dag(CASES, "hve_case_template_file")
    assert dag_run.state == "success"

    (delivered,) = sandbox.wait_for_messages(1)
    message = delivered.message
    ds = dag_run.logical_date.strftime("%Y-%m-%d")
    assert message["Subject"] == f"Scores for {ds}"
    assert message["Cc"] == "Lead <lead@contoso.example>"
    assert message["Reply-To"] == "data-team@contoso.example"
    assert sorted(delivered.rcpt_tos) == ["lead@contoso.example", "team@contoso.example"]

    html = message.get_body(("html",)).get_content()
    assert '<img src="cid:logo"' in html
    assert "<li>Ada &lt;admin&gt;: 97</li>" in html and "<li>Linus &amp; co: 88</li>" in html
    assert f"2 rows for {ds}" in html
    text = message.get_body(("plain",)).get_content()
    assert "Ada <admin>: 97" in text  # derived from the HTML, unescaped

    related = [p for p in message.walk() if p.get_content_type() == "multipart/related"]
    assert related, "inline image must sit in multipart/related with the HTML"
    (image,) = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert image["Content-ID"] == "<logo>"
    assert image.get_content() == (CASES.parent / "files" / "logo.png").read_bytes()
    names = sorted(p.get_filename() for p in message.iter_attachments())
    assert names == ["notes.txt", "scores.csv"]

    summary, rendered = task_outputs(dag_run, "mail")
    assert summary["message_id"] == message["Message-ID"]
    assert sorted(summary["accepted"]) == sorted(delivered.rcpt_tos)
    assert summary["refused"] == {}
    # What the UI's rendered-template view shows: the rendered HTML, not the file name.
    assert "<li>Ada &lt;admin&gt;: 97</li>" in rendered["html_content"]
    assert rendered["files"] == [str(CASES.parent / "files" / "notes.txt")]


def test_dry_run_writes_the_eml_and_sends_nothing(
    run_dag: Callable[..., Any],
    task_outputs: Callable[..., Any],
    sandbox: HveSandbox,
    token_posts: Callable[[], list[Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HVE_TEST_DRY_RUN_DIR", str(tmp_path))
    dag_run = run_dag(CASES, "hve_case_text_and_dry_run")
    assert dag_run.state == "success"

    assert not sandbox.smtp_sessions and not token_posts()
    (eml,) = tmp_path.glob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "Dry hve_case_text_and_dry_run"
    assert message["Bcc"] is None
    assert "Hello &lt;team&gt;" in message.get_body(("html",)).get_content()
    assert message.get_body(("plain",)).get_content().strip() == "Hello <team> (plain)"

    assert eml.stat().st_mode & 0o777 == 0o600  # the message may hold personal data

    summary, _ = task_outputs(dag_run, "mail")
    assert summary["dry_run"] is True and summary["eml_path"] == str(eml)
    # Bcc stays out of the XCom (read by more people than the mail): counted, not listed.
    assert summary["recipients"] == ["a@contoso.example", "b@contoso.example"]
    assert summary["bcc_count"] == 1 and "audit" not in str(summary)


def test_non_list_data_fails_before_connecting(
    run_dag: Callable[..., Any],
    sandbox: HveSandbox,
    token_posts: Callable[[], list[Any]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    dag_run = run_dag(CASES, "hve_case_bad_data")
    assert dag_run.state == "failed"
    assert not sandbox.smtp_sessions and not token_posts()
    out, err = capfd.readouterr()
    assert "Argument 'data' is a string, not a list of rows" in out + err


def test_operator_renders_html_as_html_in_the_ui() -> None:
    from airflow_provider_hve.operators.hve import HveEmailOperator

    assert HveEmailOperator.template_fields_renderers["html_content"] == "html"
    assert set(HveEmailOperator.template_ext) == {".html", ".j2", ".jinja2", ".txt"}


def test_retry_after_an_unknown_outcome_does_not_send_twice(
    run_dag: Callable[..., Any],
    sandbox: HveSandbox,
    hve_connection: Callable[..., str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    # HVE takes the message but its 250 comes after the client's 1 s timeout: the first try cannot know.
    hve_connection(timeout=1)
    sandbox.smtp.stall_after(0, 2.5, command="content")
    dag_run = run_dag(CASES, "hve_case_unknown_outcome")
    # Neither a duplicate nor a false success: the retry fails without sending, and says how to check.
    assert dag_run.state == "failed"

    sandbox.wait_for_messages(1, timeout=10)
    assert len(sandbox.messages) == 1, "the retry sent the message a second time"
    assert len(sandbox.smtp_sessions) == 1, "the retry must not even connect"
    out, err = capfd.readouterr()
    message_id = str(sandbox.messages[0].message["Message-ID"])
    assert "outcome is unknown" in out + err  # the first try
    from airflow.utils.session import create_session

    with create_session() as session:
        assert dag_run.get_task_instance("mail", session=session).try_number == 2, "the retry did not run"
    if AIRFLOW_VERSION[:2] != (3, 0):  # 3.0's dag.test() prints no task exception (it is in the task's log)
        assert f"Not sending again: try 1 handed {message_id} to HVE" in out + err  # the retry
        assert "resend_unknown=True" in out + err


def test_resend_unknown_sends_again_on_retry(
    run_dag: Callable[..., Any],
    sandbox: HveSandbox,
    hve_connection: Callable[..., str],
    task_outputs: Callable[..., Any],
) -> None:
    hve_connection(timeout=1)
    sandbox.smtp.stall_after(0, 2.5, command="content")
    dag_run = run_dag(CASES, "hve_case_unknown_outcome_resend")
    assert dag_run.state == "success"
    # The first try's message arrived late, the retry sent it again: two copies, as the DAG chose.
    messages = sandbox.wait_for_messages(2, timeout=10)
    assert [m.rcpt_tos for m in messages] == [["everyone@contoso.example"]] * 2
    assert messages[0].message["Message-ID"] == messages[1].message["Message-ID"]  # the unknown try's
    result, _ = task_outputs(dag_run, "mail")
    assert result["outcome"] == "accepted" and result["accepted"] == ["everyone@contoso.example"]


def test_a_retry_after_a_partly_delivered_try_sends_each_recipient_the_message_once(
    run_dag: Callable[..., Any],
    sandbox: HveSandbox,
    hve_connection: Callable[..., str],
    task_outputs: Callable[..., Any],
) -> None:
    # Try 1: Carol accepted, Alice 452 (temporary), the one retry inside the send meets a 421 at MAIL FROM: the
    # try fails with Carol delivered. Try 2 must send to Alice only, as the same message.
    hve_connection(send_retries=1)
    sandbox.smtp.throttle("452 4.3.1 Insufficient system resources", command="RCPT", count=1)
    sandbox.smtp.throttle("421 4.3.2 Service not available", command="MAIL", count=1, after_messages=1)
    dag_run = run_dag(CASES, "hve_case_partly_delivered")

    assert dag_run.state == "success"
    messages = sandbox.wait_for_messages(2)
    received = sorted(address for message in messages for address in message.rcpt_tos)
    assert received == ["alice@contoso.example", "carol@contoso.example"], "a recipient got it twice, or never"
    assert len({str(message.message["Message-ID"]) for message in messages}) == 1  # one message, in two parts
    result, _ = task_outputs(dag_run, "mail")
    assert sorted(result["accepted"]) == ["alice@contoso.example", "carol@contoso.example"]


def test_mapped_tasks_escape_html_use_the_report_and_keep_every_dry_run(
    run_dag: Callable[..., Any],
    sandbox: HveSandbox,
    task_outputs: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HVE_TEST_DRY_RUN_DIR", str(tmp_path))
    dag_run = run_dag(CASES, "hve_case_mapped")
    assert dag_run.state == "success"

    delivered = sandbox.wait_for_messages(4)
    assert sorted(m.rcpt_tos[0] for m in delivered) == [
        "one@contoso.example",
        "sales@contoso.example",
        "sales@contoso.example",
        "two@contoso.example",
    ]
    messages = {m.rcpt_tos[0]: m.message for m in delivered}
    # .partial().expand(to=...): markup from params and XCom is escaped in the HTML.
    for address in ("one@contoso.example", "two@contoso.example"):
        html = messages[address].get_body(("html",)).get_content()
        assert "Hello &lt;b&gt;team&lt;/b&gt;: &lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<script>" not in html and "<b>team</b>" not in html
    # .expand(data=...): each mapped task mails the packaged report of its rows, escaped.
    reports = [m.message for m in delivered if m.rcpt_tos == ["sales@contoso.example"]]
    htmls = sorted(m.get_body(("html",)).get_content() for m in reports)
    assert len(htmls) == 2
    assert any("Xbox &lt;Series X&gt;" in h and "1 row" in h for h in htmls)
    assert any("Teams &amp; Rooms" in h for h in htmls)
    assert not any("<Series X>" in h for h in htmls)

    # Mapped dry runs: one .eml per map index, owner-only, Bcc not listed in the XCom.
    emls = sorted(tmp_path.glob("*.eml"))
    assert [p.name.rsplit("__", 1)[1] for p in emls] == ["0.eml", "1.eml", "2.eml"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in emls)
    recipients = {email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["To"] for p in emls}
    assert recipients == {"one@contoso.example", "two@contoso.example", "three@contoso.example"}
    from airflow.utils.session import create_session

    with create_session() as session:
        try:
            from airflow.models.xcom import XComModel  # Airflow 3
        except ImportError:  # Airflow 2.11
            from airflow.models.xcom import XCom

            rows = XCom.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids="dry", session=session)
            summaries = {row.map_index: row.value for row in rows if row.key == "return_value"}  # loaded
        else:
            query = XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids="dry", key="return_value"
            )
            summaries = {row.map_index: XComModel.deserialize_value(row) for row in session.scalars(query).all()}
    assert sorted(summaries) == [0, 1, 2]
    for summary in summaries.values():
        assert summary["dry_run"] is True and summary["bcc_count"] == 1
        assert "audit@contoso.example" not in json.dumps(summary)  # the Bcc address: counted, never listed
        assert summary["recipients"] == [email.message_from_bytes(Path(summary["eml_path"]).read_bytes())["To"]]


def test_dry_run_does_not_follow_a_symbolic_link_planted_at_its_path(
    hve_connection: Callable[..., str], tmp_path: Path
) -> None:
    from airflow_provider_hve.exceptions import HveConfigError
    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.operators.hve import _write_eml

    outgoing = HveHook(hve_conn_id=hve_connection()).build_message("one@contoso.example", "Dry", "<p>hi</p>")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = tmp_path / "dry" / "hve_dag__mail__run.eml"
    planted.parent.mkdir()
    planted.symlink_to(victim)

    with pytest.raises(HveConfigError, match="is a symbolic link; it is not followed"):
        _write_eml(outgoing, str(planted))
    assert victim.read_text() == "keep me" and planted.is_symlink()

    # A plain path is still written, owner-only.
    written = Path(_write_eml(outgoing, str(tmp_path / "dry" / "plain.eml")))
    assert b"Subject: Dry" in written.read_bytes() and written.stat().st_mode & 0o777 == 0o600
