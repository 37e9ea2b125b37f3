"""DAGs that exercise HveMailMergeOperator end to end (run by tests/test_bulk.py with dag.test())."""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_hve.operators.hve import HveMailMergeOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")

with DAG("hve_case_merge_retry", schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):

    @task
    def people() -> list[dict]:
        return [{"email": f"person{n:03d}@contoso.example", "name": f"Person {n}"} for n in range(40)]

    HveMailMergeOperator(
        task_id="merge",
        recipients=people(),
        subject="Hello {{ recipient.name }}",
        text_content="Hi {{ recipient.name }}, run {{ run_id }}.",
        sessions=1,
        max_reconnects=0,  # the first broken connection fails the try: the retry must finish the job
        retries=1,
        retry_delay=dt.timedelta(seconds=0),
        progress_interval=0,
    )
