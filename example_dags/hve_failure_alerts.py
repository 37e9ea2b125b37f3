"""
Failure alerting through HVE with ``HveNotifier``:

* as a task callback (``on_failure_callback``, here for every task through ``default_args``),
* as a DAG callback (the run failed: a link to the run and the failed tasks).

One notifier instance may serve many callbacks: each alert is rendered on its own copy.

Airflow's own failure e-mails can go through HVE too, with the e-mail backend (no DAG change; the tasks
keep ``email=[...]``, which Airflow 3 deprecates in favour of notifiers such as this one)::

    [email]
    email_backend = airflow_provider_hve.utils.email.send_email
    # optional: Airflow's default smtp_default means hve_default
    email_conn_id = hve_default
    subject_template = /opt/airflow/dags/templates/hve_email_subject.j2

``templates/hve_email_subject.j2`` next to this file is a readable subject for those mails (Airflow's default
prints the whole task instance, about 750 characters).

The ``load`` task fails on purpose, with markup in its message to show that alerts escape it.
"""

from __future__ import annotations

import os

import pendulum
from airflow.providers.common.compat.sdk import dag, task

from airflow_provider_hve.notifications.hve import HveNotifier

ONCALL = os.environ.get("HVE_ONCALL_TO", "data-oncall@contoso.example")

alert_oncall = HveNotifier(to=ONCALL)


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["hve", "example"],
    on_failure_callback=HveNotifier(to=ONCALL, subject="[Airflow] DAG {{ dag.dag_id }} failed: {{ run_id }}"),
    default_args={"retries": 0, "on_failure_callback": alert_oncall},
)
def hve_failure_alerts():
    @task
    def extract() -> int:
        return 42

    @task
    def load(rows: int) -> None:
        raise ValueError(f"Load of {rows} rows rejected: column <b>amount</b> has 'N/A' & 3 other bad values")

    load(extract())


hve_failure_alerts()
