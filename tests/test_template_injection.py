"""Rows are data, not templates: what a row holds reaches the mailbox as written (issue 11, template injection)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_provider_hve.sandbox import HveSandbox

CASES = Path(__file__).parent / "dags" / "hve_template_cases.py"
HOSTILE = "{{ conn.hve_default.password }}"
SUM = "{{ 7*7 }}"


def test_rows_are_never_rendered_as_templates(run_dag: Callable[..., Any], sandbox: HveSandbox) -> None:
    dag_run = run_dag(CASES, "hve_case_literal_rows")
    assert dag_run.state == "success"

    messages = {m.rcpt_tos[0]: m for m in sandbox.wait_for_messages(4)}
    for delivered in messages.values():  # every part, decoded (quoted-printable, base64)
        parts = [p.get_content() for p in delivered.message.walk() if not p.is_multipart()]
        text = "".join(p if isinstance(p, str) else p.decode("utf-8", "replace") for p in parts)
        assert sandbox.client_secret not in text and sandbox.client_secret.encode() not in delivered.data

    # HveEmailOperator, literal data= rows: the report table and the CSV hold the text as written.
    report = messages["report@contoso.example"].message
    html = report.get_body(("html",)).get_content()
    assert HOSTILE in html and SUM in html and ">49<" not in html
    (attachment,) = list(report.iter_attachments())
    (row,) = list(csv.DictReader(io.StringIO(attachment.get_content().lstrip("\ufeff"))))
    assert row["name"] == HOSTILE and row["calc"] == SUM and row["nested"] == '{"deep": ["{{ 7*7 }}"]}'

    # HveMailMergeOperator, literal recipients= rows and rows from XCom: the row's value, not its rendering.
    for address in ("row@contoso.example", "xcom@contoso.example"):
        message = messages[address].message
        assert message["Subject"] == f"Hello {HOSTILE}"
        assert message.get_body(("plain",)).get_content().strip() == f"calc={SUM}"

    # A top-level template string is still a template (an upstream output pulled by Jinja).
    templated = messages["template@contoso.example"].message
    assert dag_run.logical_date.strftime("%Y-%m-%d") in templated.get_body(("html",)).get_content()


def _csv_rows(delivered: Any) -> list[dict[str, str]]:
    (attachment,) = list(delivered.message.iter_attachments())
    return list(csv.DictReader(io.StringIO(attachment.get_content().lstrip("\ufeff"))))


def test_rows_resolve_upstream_outputs_callables_and_the_documented_xcom_pull(
    run_dag: Callable[..., Any], sandbox: HveSandbox
) -> None:
    dag_run = run_dag(CASES, "hve_case_rows_resolved")
    assert dag_run.state == "success"

    messages = {m.rcpt_tos[0]: m for m in sandbox.wait_for_messages(3)}
    # data="{{ ti.xcom_pull('extract') }}" without render_template_as_native_obj: the rows, as the task returned.
    assert _csv_rows(messages["pull@contoso.example"]) == [{"name": "Ada", "active": "True", "note": "", "calc": SUM}]
    # data=[{"count": count(), ...}]: the XComArg inside a literal row is resolved; the string is left alone.
    assert _csv_rows(messages["nested@contoso.example"]) == [{"count": "7", "calc": SUM}]
    # data=<callable>: called with the context, as Airflow does for any templated field.
    assert _csv_rows(messages["callable@contoso.example"]) == [{"called": "yes", "calc": SUM}]


def test_mapped_values_from_xcom_are_not_rendered(run_dag: Callable[..., Any], sandbox: HveSandbox) -> None:
    # .partial(...).expand(subject=upstream(), ...): Airflow keeps the expanded values out of rendering (they
    # are in seen_oids); the subject once went out as "calc 49 secret <the client secret>".
    dag_run = run_dag(CASES, "hve_case_mapped_xcom")
    assert dag_run.state == "success"

    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == ["mapped@contoso.example"]
    assert sandbox.client_secret.encode() not in delivered.data
    message = delivered.message
    assert message["Subject"] == f"calc {SUM} secret {HOSTILE}"
    assert message["To"].addresses[0].display_name == f"Calc {SUM}"
    assert message["X-Calc"] == SUM and message["X-Secret"] == HOSTILE
    assert message.get_body(("plain",)).get_content().strip() == "hi"
