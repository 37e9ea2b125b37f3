"""
Failure alerting through HVE, three ways:

* ``HveNotifier`` as a task callback (``on_failure_callback`` / ``on_retry_callback``),
* ``HveNotifier`` as a DAG callback (the run failed, with the failed tasks listed),
* Airflow's own ``email_on_failure`` through the HVE ``[email] email_backend``::

      [email]
      email_backend = airflow_provider_hve.utils.email.send_email
      email_conn_id = hve_default

The ``load`` task fails on purpose, with markup in its message to show that alerts escape it.
"""

from __future__ import annotations

import os

import pendulum
from airflow.providers.common.compat.sdk import dag, task

from airflow_provider_hve.notifications.hve import HveNotifier

ONCALL = os.environ.get("HVE_ONCALL_TO", "data-oncall@contoso.example")


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["hve", "example"],
    on_failure_callback=HveNotifier(to=ONCALL, subject="[Airflow] DAG {{ dag.dag_id }} failed: {{ run_id }}"),
    default_args={
        "retries": 0,
        "on_failure_callback": HveNotifier(to=ONCALL),
    },
)
def hve_failure_alerts():
    @task
    def extract() -> int:
        return 42

    @task(email=[ONCALL], email_on_failure=True)
    def load(rows: int) -> None:
        raise ValueError(f"Load of {rows} rows rejected: column <b>amount</b> has 'N/A' & 3 other bad values")

    load(extract())


hve_failure_alerts()
