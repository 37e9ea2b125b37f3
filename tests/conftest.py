"""Fixtures shared by the whole suite: an isolated AIRFLOW_HOME and a live local HVE sandbox."""

from __future__ import annotations

import functools
import os
import sys
import tempfile

# Airflow reads its home when first imported: isolate it before anything imports airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hve-tests-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Airflow's own failure e-mails (email_on_failure) go through the HVE backend, as a user would configure.
os.environ["AIRFLOW__EMAIL__EMAIL_BACKEND"] = "airflow_provider_hve.utils.email.send_email"
os.environ["AIRFLOW__EMAIL__EMAIL_CONN_ID"] = "hve_default"

from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pytest

from airflow_provider_hve import connection as hve_connection_module
from airflow_provider_hve.auth import clear_token_providers
from airflow_provider_hve.sandbox import HveSandbox


def _airflow_under_test() -> str:
    import airflow

    try:
        sdk = f", apache-airflow-task-sdk {version('apache-airflow-task-sdk')}"
    except PackageNotFoundError:
        sdk = ""
    return f"apache-airflow {airflow.__version__}{sdk}"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Name the Airflow (and Task SDK) under test in the session header, so CI logs show which one ran."""
    return [_airflow_under_test()]


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """`make test` runs with -q, which hides the header: print the same line there anyway."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.get_verbosity() < 0:
        reporter.write_line(_airflow_under_test())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Kill the tests/warm.py children still running: started by a test that failed before waiting for them."""
    warm = sys.modules.get("tests.warm")
    killed = warm.stop_all() if warm is not None else 0
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if killed and reporter is not None:
        reporter.write("\n")  # after the progress line
        reporter.write_line(f"tests/warm.py: killed {killed} command(s) still running at the end of the session")


def dag_bag(dag_folder: Any) -> Any:
    """Parse ``dag_folder`` (a folder or one file) with the DagBag of the Airflow under test."""
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.2+
    except ImportError:
        from airflow.models.dagbag import DagBag  # Airflow 2.11 to 3.1

    return DagBag(dag_folder=str(dag_folder))  # [core] load_examples is off for the suite


@pytest.fixture
def parse_dags(airflow_db: None) -> Callable[[Any], Any]:
    """Return :func:`dag_bag`: parse a folder or a file with the DagBag of the Airflow under test."""
    return dag_bag


@pytest.fixture(scope="session")
def sandbox() -> Iterator[HveSandbox]:
    """One sandbox (HTTPS token endpoint + STARTTLS SMTP server) for the session; records reset per test."""
    with HveSandbox() as sb:
        yield sb


@pytest.fixture(autouse=True)
def _fresh_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with no cached MSAL app or token, no unknown-extras warning given, empty server records."""
    clear_token_providers()
    _reset_secrets_maskers()  # the first time: what the masker holds before any test
    hve_connection_module._warned_unknown_extras.clear()
    if "sandbox" in request.fixturenames:
        sb = request.getfixturevalue("sandbox")
        sb.reset_records()
        sb.smtp.reset_faults()
        sb.entra.reset_faults()
        lifetime = sb.token_lifetime
        yield
        sb.token_lifetime = lifetime
        sb.smtp.reset_faults()
        sb.smtp.pipelining = True
        sb.latency_ms = 0
    else:
        yield
    clear_token_providers()
    _reset_secrets_maskers()


_MASKERS = ("airflow.sdk._shared.secrets_masker", "airflow._shared.secrets_masker", "airflow.utils.log.secrets_masker")
_MASKER_START: dict[int, frozenset[str]] = {}


def _reset_secrets_maskers() -> None:
    """
    Forget the secrets masked by the test that ended. Airflow's masker keeps every secret of the process and
    compiles one pattern of them all at each new one: across a suite (new tokens each test, ~2 patterns a test)
    each mask and each log line got slower with every test (O(n^2): hundreds of milliseconds a call by the end).
    A task process starts with a fresh masker; so does each test: the patterns the masker held when first seen
    here (2.11 masks its database URL and Fernet key at start) are kept, the rest are dropped.
    """
    import re

    for name in _MASKERS:
        module = sys.modules.get(name)
        get = getattr(module, "_secrets_masker", None)
        if get is None:
            continue
        try:
            masker = get()
        except Exception:  # no masker configured in this process: nothing to forget
            continue
        initial = _MASKER_START.setdefault(id(masker), frozenset(masker.patterns))
        if masker.patterns != initial:
            masker.patterns = set(initial)
            masker.replacer = re.compile("|".join(initial)) if initial else None


@pytest.fixture(autouse=True)
def alert_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    """
    Each test has its own ``[hve] alert_dir`` (the alert outbox): an alert one test kept while HVE was down never
    reaches the mailbox of another test (a successful send flushes the outbox).
    """
    path = tmp_path_factory.mktemp("hve_alerts")
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIR", str(path))
    return path


@pytest.fixture
def hve_connection(sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """
    Define an ``hve`` connection pointing at the sandbox through ``AIRFLOW_CONN_<ID>``.

    Call it as ``hve_connection(conn_id="hve_default", auth_mode="client_secret", password=..., **extra)``;
    it returns the connection id.
    """

    def make(conn_id: str = "hve_default", auth_mode: str = "client_secret", **overrides: Any) -> str:
        conn = sandbox.connection(auth_mode=auth_mode)
        for field in ("host", "port", "login", "password"):
            if field in overrides:
                conn[field] = overrides.pop(field)
        for key, value in overrides.items():
            if value is None:
                conn["extra"].pop(key, None)
            else:
                conn["extra"][key] = value
        import json

        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id

    return make


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """
    Migrate the metadata DB (SQLite) of the test AIRFLOW_HOME once, as a user would: ``airflow db migrate``, in a
    process of its own that starts with Airflow imported (tests/warm.py: the session's forkserver, which the
    command-line tests use too), not a fresh interpreter importing it again.
    """
    from tests import warm

    done = warm.run_module("airflow", "db", "migrate", timeout=300)
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="session")
def _one_in_process_execution_api() -> None:
    """
    Let ``dag.test()`` keep one in-process Execution API for the session, as Airflow 3.3 does.

    On Airflow 3.0-3.2 ``dag.test()`` builds a new Execution API app for every task it runs (FastAPI + Cadwyn
    generate every versioned route again on its first request: 3-6 s of CPU per task on the 2-core CI machine,
    most of the 3.1 and 3.2 legs' time). Airflow 3.3 keeps one: ``functools.lru_cache`` on
    ``supervisor.in_process_api_server``, and ``_api_client`` drops the DAG bag override when it runs a trigger
    without a DAG. The same two changes here, on the releases without them; the app, its routes, its database and
    what each task asks of it are Airflow's own, as before (a real API server also serves every task from one app).
    """
    try:
        from airflow.sdk.execution_time import supervisor
    except ImportError:  # Airflow 2.11 runs dag.test() without an Execution API
        return
    if hasattr(supervisor.in_process_api_server, "cache_info"):  # Airflow 3.3+ keeps one already
        return
    supervisor.in_process_api_server = functools.lru_cache(maxsize=1)(supervisor.in_process_api_server)
    api_client = supervisor.InProcessTestSupervisor._api_client

    def _api_client(dag: Any = None) -> Any:
        if dag is None:  # as 3.3: no DAG bag left over from the previous task's DAG
            from airflow.api_fastapi.common.dagbag import dag_bag_from_app

            supervisor.in_process_api_server().app.dependency_overrides.pop(dag_bag_from_app, None)
        return api_client(dag)

    supervisor.InProcessTestSupervisor._api_client = staticmethod(_api_client)


@pytest.fixture
def run_dag(
    airflow_db: None, _one_in_process_execution_api: None, hve_connection: Callable[..., str]
) -> Callable[..., Any]:
    """Return ``run(dag_file, dag_id)``: parse the file with a DagBag and run the DAG with ``dag.test()``."""
    hve_connection()

    def run(dag_file: Any, dag_id: str) -> Any:
        bag = dag_bag(dag_file)
        assert not bag.import_errors, bag.import_errors
        return bag.get_dag(dag_id).test()

    return run


@pytest.fixture
def task_outputs(airflow_db: None) -> Callable[..., tuple[Any, dict[str, Any]]]:
    """Return ``outputs(dag_run, task_id)``: the task's XCom return value and rendered fields, as the UI reads them."""

    def outputs(dag_run: Any, task_id: str) -> tuple[Any, dict[str, Any]]:
        from airflow.models.renderedtifields import RenderedTaskInstanceFields
        from airflow.utils.session import create_session

        with create_session() as session:
            ti = dag_run.get_task_instance(task_id, session=session)
            rendered = RenderedTaskInstanceFields.get_templated_fields(ti, session=session)
            try:
                from airflow.models.xcom import XComModel  # Airflow 3
            except ImportError:  # Airflow 2.11
                from airflow.models.xcom import XCom

                value = XCom.get_one(
                    run_id=dag_run.run_id, dag_id=dag_run.dag_id, task_id=task_id, key="return_value", session=session
                )
            else:
                query = XComModel.get_many(
                    run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value"
                )
                row = session.scalars(query).first()
                value = XComModel.deserialize_value(row) if row is not None else None
        return value, rendered

    return outputs


@pytest.fixture
def token_posts(sandbox: HveSandbox) -> Callable[[], list[Any]]:
    """Return the token requests (POSTs) the sandbox's Entra saw so far; discovery GETs excluded."""
    return lambda: [r for r in sandbox.token_requests if r.method == "POST"]
