"""DAGs whose data rows hold template syntax (run by tests/test_template_injection.py with dag.test())."""

from __future__ import annotations

import pendulum

# Through the compat layer, as the example DAGs do: this file parses on Airflow 2.11 and 3.x.
from airflow.providers.common.compat.sdk import DAG, task

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


def _rows_from_a_callable(context: object, jinja_env: object) -> list[dict]:
    return [{"called": "yes", "calc": SUM}]


with DAG("hve_case_rows_resolved", schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):

    @task
    def extract() -> list[dict]:
        # None and True: the rows' Python text (what Jinja renders without native objects) is not JSON.
        return [{"name": "Ada", "active": True, "note": None, "calc": SUM}]

    @task
    def count() -> int:
        return 7

    # The documented form: a top-level template string pulling the rows (no render_template_as_native_obj).
    extract() >> HveEmailOperator(
        task_id="report_xcom_pull",
        to="pull@contoso.example",
        subject="Rows pulled by a template string",
        csv_filename="rows.csv",
        data="{{ ti.xcom_pull('extract') }}",
    )
    # An upstream output inside a literal row is resolved; the string next to it is not rendered.
    HveEmailOperator(
        task_id="report_nested_output",
        to="nested@contoso.example",
        subject="An upstream output inside a row",
        csv_filename="rows.csv",
        data=[{"count": count(), "calc": SUM}],
    )
    # A callable field value is called with the context, as Airflow calls it.
    HveEmailOperator(
        task_id="report_callable",
        to="callable@contoso.example",
        subject="Rows from a callable",
        csv_filename="rows.csv",
        data=_rows_from_a_callable,
    )


MAPPED_SUBJECT = f"calc {SUM} secret {HOSTILE}"
MAPPED_TO = f"Calc {SUM} <mapped@contoso.example>"
MAPPED_HEADERS = {"X-Calc": SUM, "X-Secret": HOSTILE}

with DAG("hve_case_mapped_xcom", schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):

    @task
    def subjects() -> list[str]:
        return [MAPPED_SUBJECT]

    @task
    def recipients() -> list[str]:
        return [MAPPED_TO]

    @task
    def headers() -> list[dict[str, str]]:
        return [MAPPED_HEADERS]

    # Values a mapped task gets from XCom are data: Airflow never renders them, and neither may we.
    HveEmailOperator.partial(task_id="mapped", text_content="hi").expand(
        subject=subjects(), to=recipients(), headers=headers()
    )
