"""The deployment test's DAG: a mail merge of 5,000 rows in 4 mapped shards (tests/deploy/test_deployment.py).

Each run takes its recipients' prefix from its conf (``{"prefix": "a"}``), so what the sandbox received is
attributable per run: ``<prefix>-<n>@contoso.example`` for row n of 0..rows-1, shard k holding rows
k*rows/shards .. (k+1)*rows/shards - 1. Runs on Airflow 2.11 and 3.x alike.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import dag, task

from airflow_provider_hve.operators.hve import HveMailMergeOperator

DAG_ID = "hve_deploy_merge"
ROWS = 5000
SHARDS = 4
SESSIONS = 2
# 3,750 messages a minute per shard: a shard of 1,250 rows takes about 20 s, long enough that the test's SIGKILL
# (Scenario A, once a quarter of the shard is sent) and HVE's 30-s outage (Scenario B) land while every shard is
# sending, short enough for the whole deployment test to stay within its budget. Without a rate a shard is done in
# a few seconds on the 2-core CI machine, before anything could be killed.
RATE_PER_MINUTE = 3750
RESEND_UNKNOWN_FLAG = Path(__file__).with_name("resend_unknown")
"""While this file exists, the merge resends its unknown rows: the test's stand-in for an admin who sets
``resend_unknown=True`` in the DAG and clears the task (docs/reliability.md, "Releasing unknown rows"). A worker
parses the DAG file when it runs a task, so the flag reaches the next try."""


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={
        # A killed worker (A) costs one try; HVE's 30-s outage (B) three to four: each try that meets it fails
        # after its reconnects (max_reconnects=3, about 7 s of backoff), then waits retry_delay. 8 leaves room.
        "retries": 8,
        "retry_delay": timedelta(seconds=2),
    },
    tags=["hve-deployment-test"],
)
def hve_deploy_merge() -> None:
    @task
    def shards(dag_run: Any = None) -> list[list[dict[str, Any]]]:
        conf = dict(dag_run.conf or {})
        prefix, rows, count = str(conf["prefix"]), int(conf.get("rows", ROWS)), int(conf.get("shards", SHARDS))
        recipients = [{"email": f"{prefix}-{n:05d}@contoso.example", "n": n} for n in range(rows)]
        size = -(-rows // count)
        return [recipients[k * size : (k + 1) * size] for k in range(count)]

    HveMailMergeOperator.partial(
        task_id="merge",
        subject="Deployment test, row {{ recipient.n }}",
        text_content="Row {{ recipient.n }} of run {{ run_id }}.",
        sessions=SESSIONS,
        rate_per_minute=RATE_PER_MINUTE,
        progress_interval=5,
        # Rows handed over without HVE's answer (the connection was cut, the worker killed) end "unknown": not
        # resent unless the flag above is set, reported in the summary. fail_on_refused=True (the default) would fail
        # every later try of that shard for them until its retries are spent, by design (a person checks them in
        # the message trace); here the run must finish, and the test reads the unknown rows from the summary.
        fail_on_refused=False,
        resend_unknown=RESEND_UNKNOWN_FLAG.exists(),
    ).expand(recipients=shards())


hve_deploy_merge()
