"""The deployment test's measure of the delivery record's cost (tests/deploy/test_deployment.py, scenario C).

The same 2,000-row mail merge, as fast as the sandbox takes it, with the record (the default: Variables through the
ORM on 2.11, the API server on 3.0-3.2, ``task_state_store`` on 3.3) and without it (``at_least_once=True``),
alternated twice, one task after the other so they never share the machine. Each run's recipients are
``<prefix>-<task>-<n>@contoso.example``.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import dag, task

from airflow_provider_hve.operators.hve import HveMailMergeOperator

DAG_ID = "hve_deploy_record_cost"
ROWS = 2000
SESSIONS = 2
ORDER = ("recorded_1", "unrecorded_1", "recorded_2", "unrecorded_2")


@dag(dag_id=DAG_ID, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def hve_deploy_record_cost() -> None:
    @task(multiple_outputs=True)
    def rows(dag_run: Any = None) -> dict[str, list[dict[str, Any]]]:
        prefix = str(dict(dag_run.conf or {})["prefix"])
        return {
            name: [{"email": f"{prefix}-{name}-{n:05d}@contoso.example", "n": n} for n in range(ROWS)] for name in ORDER
        }

    table = rows()
    previous: Any = table
    for name in ORDER:
        merge = HveMailMergeOperator(
            task_id=name,
            recipients=table[name],
            subject="Record cost, row {{ recipient.n }}",
            text_content="Row {{ recipient.n }}.",
            sessions=SESSIONS,
            at_least_once=name.startswith("unrecorded"),
        )
        previous >> merge
        previous = merge


hve_deploy_record_cost()
