"""DAGs whose data rows hold template syntax (run by tests/test_template_injection.py with dag.test())."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_hve.operators.hve import HveEmailOperator, HveMailMergeOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
HOSTILE = "{{ conn.hve_default.password }}"
SUM = "{{ 7*7 }}"

with DAG("hve_case_literal_rows", schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):

    @task
    def upstream_rows() -> list[dict]:
        return [{"email": "xcom@contoso.example", "name": HOSTILE, "calc": SUM}]

    # Literal rows given in the DAG file: data, never templates.
    HveEmailOperator(
        task_id="report",
        to="report@contoso.example",
        subject="Literal rows",
        data=[{"name": HOSTILE, "calc": SUM, "nested": {"deep": [SUM]}}],
        csv_filename="rows.csv",
    )
    HveMailMergeOperator(
        task_id="merge",
        recipients=[{"email": "row@contoso.example", "name": HOSTILE, "calc": SUM}],
        subject="Hello {{ recipient.name }}",
        text_content="calc={{ recipient.calc }}",
    )
    # Rows from XCom: already safe, and must stay so.
    HveMailMergeOperator(
        task_id="merge_xcom",
        recipients=upstream_rows(),
        subject="Hello {{ recipient.name }}",
        text_content="calc={{ recipient.calc }}",
    )
    # A top-level template string is still rendered (then read as JSON rows).
    HveEmailOperator(
        task_id="report_from_template",
        to="template@contoso.example",
        subject="Rows from a template string",
        data='[{"ds": "{{ ds }}"}]',
    )
