"""
A Deadline Alert through HVE (Airflow 3.1+): mail the on-call team when a run is still going 10 minutes
after it was queued.

The triggerer runs the callback: ``HveNotifier`` is awaitable there (``async_notify``). Its keyword
arguments go in ``AsyncCallback(..., kwargs=...)``; the alert names the DAG, the run and the deadline it
missed. Before Airflow 3.1 there are no Deadline Alerts and this file defines no DAG (use
``sla_miss_callback`` on 2.11, or an ``HveNotifier`` as ``on_failure_callback`` with a task timeout).

``HVE_DEADLINE_SECONDS`` (default 600) sets the deadline and ``HVE_DEADLINE_WORK_SECONDS`` (default 900)
how long the work takes, so the example misses its deadline on purpose; the test suite shortens both.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pendulum
from airflow.providers.common.compat.sdk import dag, task

try:  # Airflow 3.2+
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference
except ImportError:
    try:  # Airflow 3.1
        from airflow.sdk.definitions.deadline import AsyncCallback, DeadlineAlert, DeadlineReference
    except ImportError:  # Airflow 2.11 and 3.0: no Deadline Alerts
        DeadlineAlert = None

from airflow_provider_hve.notifications.hve import HveNotifier

ONCALL = os.environ.get("HVE_ONCALL_TO", "data-oncall@contoso.example")
DEADLINE = timedelta(seconds=int(os.environ.get("HVE_DEADLINE_SECONDS", "600")))
WORK_SECONDS = int(os.environ.get("HVE_DEADLINE_WORK_SECONDS", "900"))

if DeadlineAlert is not None:

    @dag(
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        tags=["hve", "example"],
        deadline=DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=DEADLINE,
            callback=AsyncCallback(HveNotifier, kwargs={"to": ONCALL}),
        ),
    )
    def hve_deadline_alert():
        @task
        def slow_load() -> None:
            # Stands in for a load that overruns its window.
            time.sleep(WORK_SECONDS)

        slow_load()

    hve_deadline_alert()
