"""The alert listener under a real scheduler (Airflow 3.x: + DAG processor and API server; 2.11: scheduler alone).

One Airflow per test run, several assertions: the plugin comes from the provider's ``airflow.plugins`` entry point
(nothing else registers it), configured only through ``AIRFLOW__HVE__*``; a DAG whose task fails on both of its
tries, then a run where it succeeds. The sandbox must receive exactly: one alert for the final try of the task
(none for the retry), one for the failed DAG run, and one "recovered" mail answering the task's alert (In-Reply-To
its stable Message-ID).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_hve._compat import AIRFLOW_V_3_0_PLUS
from airflow_provider_hve.alerts.ids import alert_key, alert_message_id
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.core import free_port
from tests.test_deadline_alert import Airflow

DAG_ID = "hve_listener_e2e"
ONCALL = "listener-oncall@contoso.example"
PARSED_WITHIN = 120
RUN_WITHIN = 120
DAG_FILE = """
from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import dag, task


@dag(
    dag_id="hve_listener_e2e",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,  # the run that succeeds waits for the one that fails
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
)
def hve_listener_e2e():
    @task
    def flaky(**context):
        if not (context["dag_run"].conf or {}).get("ok"):
            raise RuntimeError("flaky failed <on purpose>")

    flaky()


hve_listener_e2e()
"""


@pytest.fixture
def airflow(tmp_path: Path, sandbox: HveSandbox) -> Iterator[Airflow]:
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / f"{DAG_ID}.py").write_text(DAG_FILE)
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "PYTEST_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            # Executors run `airflow tasks run ...` by name: this venv's airflow.
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW_CONN_HVE_DEFAULT": sandbox.connection_json(),
            # The listener, configured only here.
            "AIRFLOW__HVE__ALERT_TO": ONCALL,
            "AIRFLOW__HVE__ALERT_RECOVERED": "True",
            "AIRFLOW__HVE__ALERT_DIR": str(tmp_path / "hve_alerts"),
        }
    )
    if AIRFLOW_V_3_0_PLUS:
        api_port = free_port()
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
                "AIRFLOW__API__PORT": str(api_port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            }
        )
    else:  # 2.11 refuses LocalExecutor on SQLite; the scheduler parses the DAGs itself
        env.update(
            {"AIRFLOW__CORE__EXECUTOR": "SequentialExecutor", "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5"}
        )
    af = Airflow(home, env)
    try:
        af.start_cli()
        af.cli("db", "migrate")
        if AIRFLOW_V_3_0_PLUS:
            af.start("api-server", "api-server", "--port", str(api_port))
            af.start("dag-processor", "dag-processor")
        af.start("scheduler", "scheduler")  # starting up beside the API server: it has no run to schedule yet
        if AIRFLOW_V_3_0_PLUS:
            # The runs are triggered after this: a task started before it is up fails to reach the Execution API (3.0).
            af.wait_for_api(api_port, PARSED_WITHIN)
        yield af
    finally:
        af.stop()


def _wait_for_state(airflow: Airflow, run_id: str, states: tuple[str, ...]) -> str:
    give_up = time.monotonic() + RUN_WITHIN
    while True:
        airflow.assert_running()
        with sqlite3.connect(airflow.home / "airflow.db") as db:
            row = db.execute("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id)).fetchone()
        if row and row[0] in states:
            return str(row[0])
        assert time.monotonic() < give_up, f"{run_id} not {states} in {RUN_WITHIN}s:\n{airflow.log_tail('scheduler')}"
        time.sleep(0.5)  # polling a condition with a bound


@pytest.mark.timeout(400)
def test_the_listener_mails_the_final_try_the_run_and_the_recovery(airflow: Airflow, sandbox: HveSandbox) -> None:
    started = time.monotonic()
    give_up = time.monotonic() + PARSED_WITHIN
    while not airflow.is_serialized(DAG_ID):
        airflow.assert_running()
        assert time.monotonic() < give_up, f"not parsed in {PARSED_WITHIN}s:\n{airflow.log_tail('scheduler')}"
        time.sleep(0.5)
    # Both runs at once (one CLI start each is seconds): max_active_runs=1 runs them in this order.
    airflow.cli("dags", "trigger", DAG_ID, "--run-id", "run_fail")
    if not AIRFLOW_V_3_0_PLUS:
        # 2.11's trigger takes now to the second as the run's execution date, and refuses a second run with the same
        # one (DagRunAlreadyExists): the next trigger goes in the next second.
        time.sleep(1.05 - time.time() % 1.0)
    airflow.cli("dags", "trigger", DAG_ID, "--run-id", "run_ok", "--conf", json.dumps({"ok": True}))
    assert _wait_for_state(airflow, "run_fail", ("success", "failed")) == "failed"
    assert _wait_for_state(airflow, "run_ok", ("success", "failed")) == "success"
    mails = {m.message["Subject"]: m for m in _wait(airflow, sandbox, 3)}
    time.sleep(2)  # a late duplicate (or a retry's alert) would have landed by now
    assert len(sandbox.messages) == 3 == len(mails), [m.message["Subject"] for m in sandbox.messages]
    task_alert = mails[f"[Airflow] {DAG_ID}.flaky failed (try 2 of 2)"]
    dag_alert = mails[f"[Airflow] DAG {DAG_ID} failed"]
    recovered = mails[f"[Airflow] {DAG_ID}.flaky recovered"]

    # One alert for the task: its final try (2 of 2), none for the first try that was retried.
    assert task_alert.rcpt_tos == [ONCALL]
    html = task_alert.message.get_body(("html",)).get_content()
    assert "flaky failed &lt;on purpose&gt;" in html and "run_fail" in html
    domain = str(sandbox.connection()["login"]).rpartition("@")[2]
    key = alert_key(event="failure", dag_id=DAG_ID, run_id="run_fail", task_id="flaky", map_index=-1, try_number=2)
    first_id = alert_message_id(key, domain)
    assert task_alert.message["Message-ID"] == first_id
    assert "run_fail" in dag_alert.message.get_body(("html",)).get_content()

    # The next run succeeded: "recovered", threaded under the first alert.
    assert recovered.message["In-Reply-To"] == first_id and recovered.message["References"] == first_id
    assert "run_ok" in recovered.message.get_body(("html",)).get_content()
    print(f"listener end to end: {time.monotonic() - started:.0f} s after the components started")


def _wait(airflow: Airflow, sandbox: HveSandbox, count: int) -> list:  # type: ignore[type-arg]
    try:
        return sandbox.wait_for_messages(count, timeout=60)
    except TimeoutError:
        airflow.assert_running()
        raise AssertionError(
            f"{len(sandbox.messages)} of {count} mails: {[m.message['Subject'] for m in sandbox.messages]}\n"
            f"scheduler:\n{airflow.log_tail('scheduler', 80)}"
        ) from None
