"""A Deadline Alert through HveNotifier, end to end: real scheduler, triggerer, DAG processor and API server.

A temporary AIRFLOW_HOME on SQLite runs example_dags/hve_deadline_alert.py with a 3-second deadline and a
task that works for minutes: the scheduler sees the deadline missed, the triggerer awaits HveNotifier
(``async_notify``), and the alert must arrive in the sandbox's mailbox. Then a second run: its alert must
arrive within seconds of its own deadline, from a triggerer that is still running (on Airflow 3.1.8 the first
alert killed the triggerer, "Response read out of order", and every later alert waited for a restart).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_hve._compat import AIRFLOW_VERSION, HAS_DEADLINE_ALERTS
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.core import free_port
from airflow_provider_hve.sandbox.records import DeliveredMessage

pytestmark = pytest.mark.skipif(
    not HAS_DEADLINE_ALERTS,
    reason=f"Deadline Alerts arrived in Airflow 3.1; this is Airflow {'.'.join(map(str, AIRFLOW_VERSION))}",
)

EXAMPLE = Path(__file__).resolve().parent.parent / "example_dags" / "hve_deadline_alert.py"
DAG_ID = "hve_deadline_alert"
ONCALL = "deadline-oncall@contoso.example"
# Bounded waits: the whole test gives up well inside pytest's timeout.
SERIALIZED_WITHIN = 120
ALERT_WITHIN = 150
DEADLINE_SECONDS = 3
# How late the second alert may arrive after its deadline: the scheduler notices a missed deadline on its next
# loop (heartbeat 1 s), the triggerer picks the callback up on its next poll, then one SMTP send (token cached).
# Measured on the 2-core CI machine: 1.9-2.7 s; the crash made it minutes.
ON_TIME_WITHIN = 12
# The triggerer died about half a second after the first alert on 3.1.8: the second run is triggered after this.
SETTLE_SECONDS = 3
# How long the components get to exit after SIGTERM before their groups are SIGKILLed. Nothing is checked after
# the stop (the home is a temporary folder): the scheduler would otherwise sit out the whole grace waiting for the
# LocalExecutor's task, which works for minutes (30 s per test on every leg that runs it; 5 s until this was 2).
STOP_GRACE_SECONDS = 2

# `airflow <command>` for every CLI call of a test (`db migrate`, `dags trigger`), run by Airflow's own entry point
# (airflow.__main__) in one interpreter that lives as long as the components: a fresh `python -m airflow` per call
# spent 5-15 s of the 2-core CI machine importing Airflow before it did anything. Protocol: a JSON argv per line on
# stdin; a JSON {"code", "output"} per line on the descriptor that was stdout (stdout itself, and so every log line,
# goes to the log file with stderr).
CLI_SHELL = r"""
import contextlib, io, json, os, sys, traceback
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
from airflow.__main__ import main
for line in sys.stdin:
    output, code = io.StringIO(), 0
    with contextlib.redirect_stdout(output):
        sys.argv = ["airflow", *json.loads(line)]
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            print(traceback.format_exc())
            code = 1
    replies.write(json.dumps({"code": code, "output": output.getvalue()}) + "\n")
    replies.flush()
"""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group; one whose members have all exited already is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class Airflow:
    """Airflow components as child processes of one temporary AIRFLOW_HOME; stopped as a group."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def cli(self, *args: str, timeout: float = 240) -> str:
        """``airflow <args>``: in the CLI shell once :meth:`start_cli` started it, else in a fresh interpreter."""
        shell = self.processes.get("cli")
        if shell is None:
            done = subprocess.run(
                [sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout
            )
            assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
            return done.stdout
        assert shell.stdin is not None and shell.stdout is not None
        shell.stdin.write(json.dumps(args).encode() + b"\n")
        shell.stdin.flush()
        ready, _, _ = select.select([shell.stdout], [], [], timeout)
        line = shell.stdout.readline() if ready else b""
        assert line, f"airflow {' '.join(args)}: no answer in {timeout} s:\n{self.log_tail('cli')}"
        reply = json.loads(line)
        assert reply["code"] == 0, f"airflow {' '.join(args)} failed:\n{reply['output']}\n{self.log_tail('cli')}"
        return str(reply["output"])

    def start_cli(self) -> None:
        """Start the interpreter that runs every later :meth:`cli` call (CLI_SHELL)."""
        log = open(self.home / "cli.log", "wb")  # noqa: SIM115 - closed with the process
        self.processes["cli"] = subprocess.Popen(
            [sys.executable, "-c", CLI_SHELL],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        log.close()

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the executor's workers are stopped with it
        )
        log.close()

    def wait_for_api(self, port: int, within: float = 120) -> None:
        """Wait until the API server answers: a task started before it is up fails to reach the Execution API."""
        import urllib.error
        import urllib.request

        give_up = time.monotonic() + within
        while True:
            self.assert_running()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/version", timeout=5):
                    return
            except urllib.error.HTTPError:  # it answers (3.0 answers this one 500): it listens
                return
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < give_up, f"API server not up in {within}s:\n{self.log_tail('api-server')}"
                time.sleep(0.5)  # polling a condition with a bound

    def assert_running(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"airflow {name} exited with {process.returncode}:\n{self.log_tail(name)}"

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.home / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """
        Stop every process group started, whether or not its leader still runs: a crashed scheduler leaves its
        executor's workers behind in its group. Never raises (it runs in a ``finally``: the test's own failure
        must stay the one reported).
        """
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS  # one grace for all, not one per process
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for process in self.processes.values():  # whatever ignored SIGTERM, leaders and orphans alike
            _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            for pipe in (process.stdin, process.stdout):  # the CLI shell's
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def run_state(self, dag_id: str, run_id: str) -> str:
        with sqlite3.connect(self.home / "airflow.db") as db:
            query = "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?"
            (state,) = db.execute(query, (dag_id, run_id)).fetchone()
        return str(state)

    def queued_at(self, dag_id: str, run_id: str) -> float:
        """When the run was queued, as a POSIX timestamp (what ``DAGRUN_QUEUED_AT`` deadlines count from)."""
        import pendulum

        with sqlite3.connect(self.home / "airflow.db") as db:
            query = "SELECT queued_at FROM dag_run WHERE dag_id = ? AND run_id = ?"
            (queued_at,) = db.execute(query, (dag_id, run_id)).fetchone()
        parsed = pendulum.parse(str(queued_at), tz="UTC")  # SQLite keeps it as text, naive UTC
        return float(parsed.timestamp())  # type: ignore[union-attr]

    def is_serialized(self, dag_id: str) -> bool:
        with sqlite3.connect(self.home / "airflow.db") as db:
            try:
                row = db.execute("SELECT 1 FROM serialized_dag WHERE dag_id = ?", (dag_id,)).fetchone()
            except sqlite3.OperationalError:
                return False
        return row is not None


@pytest.fixture
def airflow(tmp_path: Path, sandbox: HveSandbox) -> Iterator[Airflow]:
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    shutil.copy(EXAMPLE, home / "dags" / EXAMPLE.name)
    api_port = free_port()
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "PYTEST_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW_CONN_HVE_DEFAULT": sandbox.connection_json(),
            "HVE_ONCALL_TO": ONCALL,
            "HVE_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
            "HVE_DEADLINE_WORK_SECONDS": "300",
        }
    )
    af = Airflow(home, env)
    try:
        af.start_cli()
        af.cli("db", "migrate")
        af.start("api-server", "api-server", "--port", str(api_port))
        af.start("dag-processor", "dag-processor")
        af.start("scheduler", "scheduler")
        af.start("triggerer", "triggerer")
        # The run is triggered after this, the moment the DAG is serialized: its task must find the Execution API.
        af.wait_for_api(api_port)
        yield af
    finally:
        af.stop()


@pytest.mark.timeout(600)
def test_missed_deadline_is_mailed_by_the_triggerer(airflow: Airflow, sandbox: HveSandbox) -> None:
    give_up = time.monotonic() + SERIALIZED_WITHIN
    while not airflow.is_serialized(DAG_ID):
        airflow.assert_running()
        assert time.monotonic() < give_up, f"not parsed in {SERIALIZED_WITHIN}s:\n{airflow.log_tail('dag-processor')}"
        time.sleep(1)  # polling a condition with a bound, not waiting for it to happen
    airflow.cli("dags", "trigger", DAG_ID, "--run-id", "deadline_run")

    (alert,) = _wait_for_alerts(airflow, sandbox, 1, ALERT_WITHIN)
    assert alert.rcpt_tos == [ONCALL]
    assert alert.message["Subject"] == f"[Airflow] DAG {DAG_ID} missed its deadline"
    html = alert.message.get_body(("html",)).get_content()
    assert "deadline_run" in html and "Deadline" in html and "Queued at" in html
    # The deadline sent it, not a failure callback: the run is still going (its task works for minutes).
    assert airflow.run_state(DAG_ID, "deadline_run") == "running"

    # The triggerer survives the alert (Airflow 3.1.8 killed it about half a second later) ...
    time.sleep(SETTLE_SECONDS)  # a fixed wait on purpose: the crash came after the alert, not instead of it
    airflow.assert_running()
    # ... and mails the next run's missed deadline on time, not after a restart.
    airflow.cli("dags", "trigger", DAG_ID, "--run-id", "deadline_run_2")
    second = _wait_for_alerts(airflow, sandbox, 2, DEADLINE_SECONDS + ON_TIME_WITHIN + 30)[1]
    assert "deadline_run_2" in second.message.get_body(("html",)).get_content()
    late = second.path.stat().st_mtime - (airflow.queued_at(DAG_ID, "deadline_run_2") + DEADLINE_SECONDS)
    print(f"second deadline alert arrived {late:.1f} s after its deadline")
    assert late < ON_TIME_WITHIN, (
        f"the second alert came {late:.1f} s after its deadline:\n{airflow.log_tail('triggerer')}"
    )
    airflow.assert_running()
    triggerer_log = (airflow.home / "triggerer.log").read_text(errors="replace")
    for crash in ("Response read out of order", "Trigger runner process has died"):
        assert crash not in triggerer_log, f"{crash!r} in the triggerer's log:\n{airflow.log_tail('triggerer')}"
    time.sleep(SETTLE_SECONDS)  # a late duplicate would land by now
    assert len(sandbox.messages) == 2, "one alert per run, no more"
    airflow.assert_running()


def _wait_for_alerts(airflow: Airflow, sandbox: HveSandbox, count: int, within: float) -> list[DeliveredMessage]:
    """Wait for ``count`` alerts in all; on a timeout, say whether a component died and show the logs."""
    try:
        return sandbox.wait_for_messages(count, timeout=within)
    except TimeoutError:
        airflow.assert_running()
        raise AssertionError(
            f"{len(sandbox.messages)} of {count} alert(s) in {within}s.\nscheduler:\n{airflow.log_tail('scheduler')}\n"
            f"triggerer:\n{airflow.log_tail('triggerer')}"
        ) from None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it counts as stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_stop_ends_the_group_of_a_leader_that_already_exited(tmp_path: Path) -> None:
    # As a crashed scheduler: the group leader is gone, the worker it started still runs in its group.
    af = Airflow(tmp_path, dict(os.environ))
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!"], stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    assert leader.stdout is not None
    orphan = int(leader.stdout.readline())
    leader.wait(timeout=30)
    af.processes["scheduler"] = leader  # type: ignore[assignment]
    assert _alive(orphan)

    try:
        af.stop()
        give_up = time.monotonic() + 10
        while _alive(orphan):  # SIGKILL is delivered asynchronously: bounded wait for the kernel to finish it
            assert time.monotonic() < give_up, f"pid {orphan} of the exited leader's group still runs"
            time.sleep(0.05)
    finally:
        _signal_group(leader.pid, signal.SIGKILL)  # leave nothing behind if the assertion failed
