"""A real Airflow deployment for ``make test-deploy``: PostgreSQL, Redis, CeleryExecutor, two workers, the sandbox.

PostgreSQL (metadata database and Celery's result backend) and Redis (Celery's broker) are private instances on
loopback (scripts/deploy/instance.py); Airflow runs from a temporary AIRFLOW_HOME as separate processes: scheduler,
API server (the webserver on 2.11), DAG processor, triggerer and two ``airflow celery worker``. Each process runs in
a session of its own, so a worker and every process it started (Celery's pool, the task supervisors, the tasks,
which Airflow puts in process groups of their own) can be killed together, as when its machine dies. The sandbox
(Entra + HVE) runs in the test process; every Airflow process reaches it through ``AIRFLOW_CONN_HVE_DEFAULT``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_hve._compat import AIRFLOW_VERSION
from airflow_provider_hve.sandbox import HveSandbox

HERE = Path(__file__).resolve().parent
AIRFLOW_3 = AIRFLOW_VERSION >= (3, 0)
AIRFLOW_RELEASE = ".".join(map(str, AIRFLOW_VERSION))
DAG_ID = "hve_deploy_merge"
COST_DAG_ID = "hve_deploy_record_cost"
# Mirrors tests/deploy/dags/hve_deploy_merge.py (the test checks the summaries agree).
ROWS = 5000
SHARDS = 4
SESSIONS = 2
BDAT_WINDOW = 16
WORKER_CONCURRENCY = 2
# How soon a task whose worker died is failed (and retried). Its heartbeats come every 2 s (3.x: the supervisor's,
# at most every [workers] min_heartbeat_interval; 2.11: the LocalTaskJob's, [scheduler] job_heartbeat_sec), so a
# healthy task misses seven in a row before this fires, even on a busy machine.
HEARTBEAT_TIMEOUT = 15
HEARTBEAT_SECONDS = 2
DETECTION_INTERVAL = 2
# Bounded waits (the whole leg stays far inside them when healthy).
READY_WITHIN = 180
RUN_WITHIN = 300


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _load_instance_module() -> ModuleType:
    # scripts/ is no package: load the one file by path.
    path = HERE.parents[1] / "scripts" / "deploy" / "instance.py"
    spec = importlib.util.spec_from_file_location("hve_deploy_instance", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


deploy_instance = _load_instance_module()
UNAVAILABLE: str | None = deploy_instance.unavailable()
if UNAVAILABLE is None:
    # Looked up, not imported (importing Airflow's Celery provider here would only slow the start down).
    missing = [name for name in ("celery", "psycopg2", "airflow.providers.celery") if not _installed(name)]
    if missing:
        UNAVAILABLE = f"{', '.join(missing)} not installed here: run the test through `make test-deploy` (its venvs)"
REQUIRED = bool(os.environ.get("HVE_DEPLOY_REQUIRED"))


# -- figures, printed at the end of the run --------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    rows: int = 0
    delivered: int = 0
    duplicates: int = 0
    unknown: int = 0
    lost: int = 0
    tries: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0
    note: str = ""


FIGURES: list[Figures] = []
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES and not TIMINGS:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"deployment test figures, Airflow {AIRFLOW_RELEASE} (CeleryExecutor)")
    header = ("scenario", "Airflow", "rows", "delivered", "duplicates", "unknown", "lost", "tries per shard", "wall")
    lines = [header] + [
        (
            f.scenario,
            AIRFLOW_RELEASE,
            str(f.rows),
            str(f.delivered),
            str(f.duplicates),
            str(f.unknown),
            str(f.lost),
            " ".join(map(str, f.tries)),
            f"{f.wall_seconds:.0f} s",
        )
        for f in FIGURES
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    for f in FIGURES:
        if f.note:
            write(f"{f.scenario}: {f.note}")
    if TIMINGS:
        write("timings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in TIMINGS.items()))


# -- processes ------------------------------------------------------------------------------------------------


def session_members(sid: int) -> list[int]:
    """Return the pids of the processes whose session id is ``sid`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # After the command: state, ppid, pgrp, session...; a zombie is already dead.
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def kill_session(sid: int, timeout: float = 20) -> list[int]:
    """SIGKILL every process of session ``sid`` (those that fork meanwhile too); return the pids killed first."""
    first = session_members(sid)
    deadline = time.monotonic() + timeout
    while members := session_members(sid):
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {members} of session {sid} survive SIGKILL")
        time.sleep(0.05)  # the kernel finishes them asynchronously
    return first


class Deployment:
    """The Airflow processes of one AIRFLOW_HOME, and what the test reads from them (metadata DB, logs)."""

    def __init__(self, home: Path, env: dict[str, str], dsn: str, api_port: int) -> None:
        self.home = home
        self.env = env
        self.dsn = dsn
        self.api_port = api_port
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()
        self._db: Any = None

    # -- life cycle --

    def cli(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - handed to the child, closed here
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env={**self.env, "HVE_DEPLOY_HOSTNAME": name, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.home,
            start_new_session=True,  # a session of its own: kill_session() ends it and all it started
        )
        log.close()

    def start_worker(self, name: str) -> None:
        self.start(
            name,
            "celery", "worker",
            "--celery-hostname", f"{name}@hve-deploy",
            "--concurrency", str(WORKER_CONCURRENCY),
            "--pid", str(self.home / f"{name}.pid"),
            # Task logs are files under AIRFLOW_HOME/logs on this one machine: no log server per worker (each
            # would cost a process on the 2-core CI machine).
            "--skip-serve-logs",
        )  # fmt: skip

    def components(self) -> list[str]:
        """The scheduler and the workers not killed: whose logs tell most when a run goes wrong."""
        return ["scheduler", *self.workers()]

    def workers(self) -> list[str]:
        """The Celery workers started and not killed, oldest first."""
        return [name for name in self.processes if name.startswith("worker-") and name not in self.killed]

    def ensure_two_workers(self) -> list[str]:
        """Start workers (``worker-<n>``, a new name each) until two run; wait until both are ready."""
        while len(self.workers()) < 2:
            self.start_worker(f"worker-{sum(name.startswith('worker-') for name in self.processes) + 1}")
        live = self.workers()[-2:]
        for name in live:
            self.wait_for_log(name, " ready.", READY_WITHIN)
        return live

    def kill(self, name: str) -> list[int]:
        """SIGKILL the process ``name`` and everything in its session; return the pids killed."""
        process = self.processes[name]
        self.killed.add(name)
        killed = kill_session(process.pid)
        process.wait(timeout=30)
        return killed

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL of its whole session); never raises (it runs in a finally)."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for process in self.processes.values():
            with contextlib.suppress(Exception):
                kill_session(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()

    def assert_running(self, *names: str) -> None:
        for name in names or tuple(n for n in self.processes if n not in self.killed):
            process = self.processes[name]
            assert process.poll() is None, f"airflow {name} exited with {process.returncode}:{self.log_tail(name)}"

    # -- logs --

    def log_path(self, name: str) -> Path:
        return self.home / f"{name}.log"

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"
        return f"\n--- last {lines} lines of {path} ---\n{text}"

    def logs(self, *names: str, lines: int = 40) -> str:
        """The paths of every component's log, and the tails of ``names`` (all if none)."""
        paths = "\n".join(f"  {name}: {self.log_path(name)}" for name in self.processes)
        task_logs = self.home / "logs"
        tails = "".join(self.log_tail(name, lines) for name in (names or tuple(self.processes)))
        return f"\ncomponent logs:\n{paths}\ntask logs under {task_logs}{tails}"

    def wait_for_log(self, name: str, text: str, within: float) -> None:
        deadline = time.monotonic() + within
        while text not in self.log_path(name).read_text(errors="replace"):
            self.assert_running(name)
            assert time.monotonic() < deadline, f"{name} did not log {text!r} in {within:.0f} s{self.logs(name)}"
            time.sleep(0.2)

    # -- metadata database --

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg2

        for attempt in (1, 2):
            try:
                if self._db is None or self._db.closed:
                    self._db = psycopg2.connect(self.dsn)
                    self._db.autocommit = True
                with self._db.cursor() as cursor:
                    cursor.execute(sql, params)
                    return list(cursor.fetchall()) if cursor.description else []
            except psycopg2.OperationalError:
                self._db = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def live_jobs(self) -> set[str]:
        """The job types (SchedulerJob, TriggererJob, DagProcessorJob) running with a heartbeat in the last 30 s."""
        try:
            rows = self.query(
                "SELECT job_type FROM job WHERE state = 'running' AND latest_heartbeat > now() - interval '30 seconds'"
            )
        except Exception:  # the table may not exist yet
            return set()
        return {str(row[0]) for row in rows}

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> None:
        """Trigger a run: through the REST API on 3.x (a token of the simple auth manager), the CLI on 2.11."""
        if not AIRFLOW_3:  # 2.11's REST API wants a user with permissions: the CLI needs none
            self.cli("dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf))
            return
        base = f"http://127.0.0.1:{self.api_port}"
        with urllib.request.urlopen(f"{base}/auth/token", timeout=30) as response:
            token = json.load(response)["access_token"]
        url = f"{base}/api/v2/dags/{dag_id}/dagRuns"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status in (200, 201), response.status
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST {url} answered {exc.code}: {exc.read().decode(errors='replace')}") from exc

    def clear(self, dag_id: str, run_id: str, task_id: str, map_indexes: list[int]) -> None:
        """Clear these map indexes of the task, as the UI's Clear does: Airflow runs them once more."""
        script = (
            "import sys\n"
            "from airflow.models.taskinstance import TaskInstance, clear_task_instances\n"
            "from airflow.utils.session import create_session\n"
            "from airflow.utils.state import DagRunState\n"
            "dag_id, run_id, task_id, *indexes = sys.argv[1:]\n"
            "with create_session() as session:\n"
            "    tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id,"
            " TaskInstance.task_id == task_id, TaskInstance.map_index.in_([int(i) for i in indexes])).all()\n"
            "    assert len(tis) == len(indexes), tis\n"
            "    clear_task_instances(tis, session, dag_run_state=DagRunState.QUEUED)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, dag_id, run_id, task_id, *map(str, map_indexes)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"clearing {task_id} {map_indexes} failed:\n{done.stdout}\n{done.stderr}"

    def assert_healthy(self) -> None:
        """Every component still runs, the API server (webserver) answers, the scheduler and co. heartbeat."""
        self.assert_running()
        wait_until(self.api_healthy, READY_WITHIN, lambda: f"the API server does not answer{self.logs('api-server')}")
        wanted = {"SchedulerJob", "TriggererJob", "DagProcessorJob"}
        assert wanted <= self.live_jobs(), f"live jobs {sorted(self.live_jobs())}{self.logs()}"

    def api_healthy(self) -> bool:
        path = "/api/v2/monitor/health" if AIRFLOW_3 else "/health"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}{path}", timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def dag_serialized(self, dag_id: str) -> bool:
        try:
            return bool(self.query("SELECT 1 FROM serialized_dag WHERE dag_id = %s", dag_id))
        except Exception:
            return False

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        return str(rows[0][0]) if rows else None

    def task_instances(self, dag_id: str, run_id: str, task_id: str) -> dict[int, dict[str, Any]]:
        """The task's instances by map index: state, try_number, hostname (the worker of the latest try)."""
        rows = self.query(
            "SELECT map_index, state, try_number, hostname FROM task_instance "
            "WHERE dag_id = %s AND run_id = %s AND task_id = %s",
            dag_id,
            run_id,
            task_id,
        )
        return {int(m): {"state": s, "try_number": int(t or 0), "hostname": h} for m, s, t, h in rows}

    def tries(self, dag_id: str, run_id: str, task_id: str) -> dict[int, list[tuple[int, str | None, str | None]]]:
        """Every try of the task by map index: (try_number, state, hostname), the finished ones from the history."""
        done = self.query(
            "SELECT map_index, try_number, state, hostname FROM task_instance_history "
            "WHERE dag_id = %s AND run_id = %s AND task_id = %s",
            dag_id,
            run_id,
            task_id,
        )
        result: dict[int, list[tuple[int, str | None, str | None]]] = {}
        for map_index, try_number, state, hostname in done:
            result.setdefault(int(map_index), []).append((int(try_number), state, hostname))
        for map_index, ti in self.task_instances(dag_id, run_id, task_id).items():
            result.setdefault(map_index, []).append((ti["try_number"], ti["state"], ti["hostname"]))
        return {m: sorted(set(t)) for m, t in result.items()}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str) -> dict[int, Any]:
        """XCom ``key`` of each map index of the task (what the latest try left), decoded."""
        rows = self.query(
            "SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s AND key = %s",
            dag_id,
            run_id,
            task_id,
            key,
        )
        return {int(map_index): _decode_xcom(value) for map_index, value in rows}


def _decode_xcom(value: Any) -> Any:
    # 3.x keeps XCom as JSON (psycopg2 decodes it); 2.11 as JSON bytes; either may hold a JSON string.
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def wait_until(condition: Callable[[], Any], within: float, what: Callable[[], str], every: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something true; fail with ``what()`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what()}")
        time.sleep(every)


# -- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hve() -> Iterator[HveSandbox]:
    """A sandbox of the deployment's own (nothing else resets its records)."""
    with HveSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, hve: HveSandbox) -> Iterator[Deployment]:
    """PostgreSQL, Redis and Airflow with the CeleryExecutor: every component up and the DAG parsed."""
    if UNAVAILABLE is not None:
        if REQUIRED:
            pytest.fail(f"deployment test unavailable: {UNAVAILABLE}")
        pytest.skip(f"deployment test unavailable: {UNAVAILABLE}")
    from cryptography.fernet import Fernet

    home = tmp_path_factory.mktemp("airflow-deploy")
    (home / "dags").mkdir()
    for dag_file in (DAG_ID, COST_DAG_ID):
        shutil.copy(HERE / "dags" / f"{dag_file}.py", home / "dags")
    started = time.monotonic()
    with deploy_instance.PostgresInstance() as pg, deploy_instance.RedisInstance() as redis:
        TIMINGS["PostgreSQL + Redis up"] = time.monotonic() - started
        api_port = deploy_instance.free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "PYTEST_", "HVE_DEPLOY"))
        }
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE / "site"), env.get("PYTHONPATH")])),
                "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "hve_deploy_hostname.hostname",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url,
                "AIRFLOW__CELERY__BROKER_URL": redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg.url,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW_CONN_HVE_DEFAULT": hve.connection_json(bdat_window=BDAT_WINDOW),
            }
        )
        secret = secrets.token_urlsafe(32)
        if AIRFLOW_3:
            env.update(
                {
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
                    "AIRFLOW__API__HOST": "127.0.0.1",
                    "AIRFLOW__API__PORT": str(api_port),
                    "AIRFLOW__API__SECRET_KEY": secret,
                    "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(DETECTION_INTERVAL),
                    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(HEARTBEAT_SECONDS),
                }
            )
        else:
            env.update(
                {
                    "AIRFLOW__WEBSERVER__SECRET_KEY": secret,
                    "AIRFLOW__WEBSERVER__WEB_SERVER_HOST": "127.0.0.1",
                    "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(api_port),
                    "AIRFLOW__WEBSERVER__WORKERS": "1",
                    "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
                    "AIRFLOW__SCHEDULER__SCHEDULER_ZOMBIE_TASK_THRESHOLD": str(HEARTBEAT_TIMEOUT),
                    "AIRFLOW__SCHEDULER__ZOMBIE_DETECTION_INTERVAL": str(DETECTION_INTERVAL),
                    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": str(HEARTBEAT_SECONDS),
                }
            )
        (home / "environment.json").write_text(
            json.dumps({k: v for k, v in env.items() if k.startswith(("AIRFLOW", "HVE"))}, indent=1)
        )
        af = Deployment(home, env, pg.dsn, api_port)
        try:
            step = time.monotonic()
            af.cli("db", "migrate")
            TIMINGS["airflow db migrate"] = time.monotonic() - step
            step = time.monotonic()
            af.start("api-server", *(("api-server", "--port", str(api_port)) if AIRFLOW_3 else ("webserver",)))
            af.start("scheduler", "scheduler")
            af.start("dag-processor", "dag-processor")
            af.start("triggerer", "triggerer", "--skip-serve-logs")
            af.start_worker("worker-1")
            af.start_worker("worker-2")
            wanted = {"SchedulerJob", "TriggererJob", "DagProcessorJob"}
            # 2.11's webserver has no part in running tasks and is the slowest to start (gunicorn): the scenarios
            # do not wait for it, the test checks it answers at the end (Deployment.assert_healthy).
            checks: dict[str, Callable[[], bool]] = {
                **({"API up": af.api_healthy} if AIRFLOW_3 else {}),
                "DAG parsed": lambda: af.dag_serialized(DAG_ID) and af.dag_serialized(COST_DAG_ID),
                "scheduler, triggerer, DAG processor heartbeating": lambda: wanted <= af.live_jobs(),
            }

            def ready() -> bool:
                af.assert_running()
                for what, check in checks.items():
                    if what not in TIMINGS and check():
                        TIMINGS[what] = time.monotonic() - step
                return all(what in TIMINGS for what in checks)

            wait_until(ready, READY_WITHIN, lambda: f"jobs {sorted(af.live_jobs())}, DAG parsed: "
                       f"{af.dag_serialized(DAG_ID)}, API healthy: {af.api_healthy()}{af.logs()}")  # fmt: skip
            for worker in ("worker-1", "worker-2"):
                af.wait_for_log(worker, " ready.", READY_WITHIN)
            TIMINGS["components up"] = time.monotonic() - step
            yield af
        finally:
            af.stop()
