"""DAGs for the failure alerts (run by tests/test_alerts.py with dag.test())."""

from __future__ import annotations

import time

import pendulum

# Through the compat layer, as the example DAGs do: this file parses on Airflow 2.11 and 3.x.
from airflow.providers.common.compat.sdk import DAG, BaseSensorOperator, task

from airflow_provider_hve.notifications.hve import HveNotifier

START = pendulum.datetime(2026, 1, 1, tz="UTC")
ONCALL = "oncall@contoso.example"

# One notifier instance for two tasks and the DAG: Airflow's DAG processor runs every callback of a parsed DAG
# against the same objects, so an instance must not keep what it rendered for the previous alert.
SHARED = HveNotifier(to=ONCALL)

with DAG(
    "hve_case_shared_notifier",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["hve-tests"],
    on_failure_callback=SHARED,
):

    @task(on_failure_callback=SHARED)
    def first() -> None:
        raise ValueError("first <b>boom</b>")

    @task(on_failure_callback=SHARED, trigger_rule="all_done")
    def second() -> None:
        time.sleep(2.2)  # the alert must show the task's real duration, not 0m 00s
        raise RuntimeError("second boom")

    first() >> second()


class NeverReady(BaseSensorOperator):
    """A sensor that never sees its condition: it times out."""

    def poke(self, context: object) -> bool:
        return False


with DAG("hve_case_rescheduled_sensor", schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):
    # In reschedule mode every poke starts the task instance again: its start_date is the last poke's, so an
    # alert computed from it said "0m 00s" for a sensor that waited for its whole timeout.
    NeverReady(
        task_id="wait",
        mode="reschedule",
        poke_interval=1,
        timeout=3,
        on_failure_callback=HveNotifier(to=ONCALL),
    )
