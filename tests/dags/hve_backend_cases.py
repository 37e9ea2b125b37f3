"""A DAG that uses Airflow's own failure e-mail (email_on_failure) through the HVE e-mail backend."""

from __future__ import annotations

import pendulum

# Through the compat layer, as the example DAGs do: this file parses on Airflow 2.11 and 3.x.
from airflow.providers.common.compat.sdk import DAG, task

with DAG("hve_case_email_backend", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):

    @task(email=["oncall@contoso.example"], email_on_failure=True, email_on_retry=False)
    def load() -> None:
        raise ValueError("column <b>amount</b> rejected: disk <full> & broken")

    load()
