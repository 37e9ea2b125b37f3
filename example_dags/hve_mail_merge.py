"""
Personalised bulk mail through HVE: one statement per person, fanned out the Airflow way.

* ``HveMailMergeOperator`` renders subject, HTML and text per recipient row and sends them over long-lived,
  pipelined SMTP sessions with one token; delivered rows are remembered across retries (Airflow 3.3+).
* Dynamic task mapping splits the recipients into chunks, so several workers share the load.
* The ``hve_smtp`` pool caps the SMTP sessions of the whole Airflow deployment: HVE limits concurrent
  connections per tenant (``432 4.3.2``). Create it once: ``airflow pools set hve_smtp 8 "HVE SMTP sessions"``.
  Each mapped task takes ``pool_slots`` = its ``sessions``.
"""

from __future__ import annotations

import datetime as dt
import os

import pendulum
from airflow.providers.common.compat.sdk import dag, task

from airflow_provider_hve.operators.hve import HveMailMergeOperator

PEOPLE = int(os.environ.get("HVE_MERGE_PEOPLE", "300"))
CHUNK = 100
SESSIONS = 2


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["hve", "example"])
def hve_mail_merge():
    @task
    def load_people() -> list[dict]:
        # Stand-in for a query: one row per recipient with their own figures.
        return [
            {"email": f"employee{n:04d}@contoso.example", "name": f"Employee {n}", "hours": 30 + n % 15}
            for n in range(PEOPLE)
        ]

    @task
    def chunks(rows: list[dict]) -> list[list[dict]]:
        return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]

    HveMailMergeOperator.partial(
        task_id="timesheets",
        subject="Your hours for {{ ds }}, {{ recipient.name }}",
        html_content="<p>Hello {{ recipient.name }},</p><p>you logged <b>{{ recipient.hours }}</b> hours.</p>",
        text_content="Hello {{ recipient.name }},\nyou logged {{ recipient.hours }} hours.",
        sessions=SESSIONS,
        pool="hve_smtp",
        pool_slots=SESSIONS,
        retries=2,
        retry_delay=dt.timedelta(minutes=1),
    ).expand(recipients=chunks(load_people()))


hve_mail_merge()
