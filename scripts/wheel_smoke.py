"""Run example DAGs with the provider as installed from its wheel: the check behind ``make test-wheel``.

Run by the fresh venv's own Python from a temporary folder (never the checkout), with ``-I`` so neither
PYTHONPATH nor the working directory can put the checkout on ``sys.path``. It checks that the package comes from
the venv, starts the sandbox shipped in the wheel and migrates a throw-away SQLite metadata database. Then one
child process (this file again, ``--run``) parses every example DAG file with Airflow's DagBag, fails on any
import error or a missing DAG, and runs each example that can run without a scheduler with ``dag.test()``:
``hve_deadline_alert`` is only parsed (its alert is a Deadline callback, which only a triggerer runs; on Airflow
2.11 and 3.0 the file defines no DAG). Last, it checks each run's state and what the sandbox received.

Usage: python -I wheel_smoke.py <example_dags folder> <checkout root>
       python -I wheel_smoke.py --run <dags folder> <results file>   (the child, with AIRFLOW_HOME set)
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Every example DAG file; the dag.test() runs: dag id -> (the run's final state, how many messages the sandbox
# must receive, a recipient pattern that tells them apart). hve_mail_merge: one message per person
# (HVE_MERGE_PEOPLE below); hve_failure_alerts fails on purpose and its notifier mails the on-call team twice
# (task and DAG level); hve_alert_outbox (the outbox's maintenance DAG) finds nothing kept and sends nothing.
FILES = ("hve_alert_outbox", "hve_daily_report", "hve_deadline_alert", "hve_failure_alerts", "hve_mail_merge")
PEOPLE = 20
RUNS = {
    "hve_alert_outbox": ("success", 0, "*"),
    "hve_daily_report": ("success", 1, "sales-team@contoso.example"),
    "hve_failure_alerts": ("failed", 2, "data-oncall@contoso.example"),
    "hve_mail_merge": ("success", PEOPLE, "employee*@contoso.example"),
}


def run_dags(dags: str, results: str) -> int:
    """The child: parse every DAG file with the DagBag, run RUNS with dag.test(), write dag id -> state."""
    from airflow import __version__ as airflow_version

    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.2+
    except ImportError:
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]  # Airflow 2.11 to 3.1

    bag = DagBag(dag_folder=dags)  # [core] load_examples is off in its environment
    if bag.import_errors:
        sys.exit(f"import errors in the example DAGs: {bag.import_errors}")
    expected = set(FILES)
    if tuple(int(part) for part in airflow_version.split(".")[:2]) < (3, 1):
        expected.discard("hve_deadline_alert")  # no Deadline Alerts before Airflow 3.1: the file defines no DAG
    if set(bag.dag_ids) != expected:
        sys.exit(f"the DagBag has {sorted(bag.dag_ids)}, expected {sorted(expected)}")
    states = {}
    for dag_id in RUNS:
        state = bag.get_dag(dag_id).test().state
        states[dag_id] = getattr(state, "value", state)
    import airflow_provider_hve

    outcome = {"dags": sorted(bag.dag_ids), "states": states, "package": airflow_provider_hve.__file__}
    Path(results).write_text(json.dumps(outcome))
    return 0


def main() -> int:
    examples, checkout = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    import airflow

    import airflow_provider_hve
    from airflow_provider_hve.sandbox import HveSandbox

    where = Path(airflow_provider_hve.__file__).resolve()
    venv = Path(sys.prefix).resolve()
    if not where.is_relative_to(venv) or where.is_relative_to(checkout):
        sys.exit(f"airflow_provider_hve was imported from {where}, not from the venv {venv}")
    print(f"== wheel smoke: airflow_provider_hve {airflow_provider_hve.__version__} from {where.parent}")
    print(f"== wheel smoke: apache-airflow {airflow.__version__}, Python {sys.version.split()[0]}")

    work = Path(tempfile.mkdtemp(prefix="hve-wheel-smoke-"))
    dags = work / "dags"
    dags.mkdir()
    for name in FILES:
        shutil.copy(examples / f"{name}.py", dags)
    shutil.copytree(examples / "templates", dags / "templates")
    log, results = work / "airflow.log", work / "results.json"
    with HveSandbox() as sandbox:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AIRFLOW"))}
        env.update(
            AIRFLOW_HOME=str(work / "home"),
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW_CONN_HVE_DEFAULT=sandbox.connection_json(),
            HVE_MERGE_PEOPLE=str(PEOPLE),
        )

        def run(what: str, *args: str) -> None:
            with log.open("ab") as out:
                done = subprocess.run([sys.executable, "-I", *args], env=env, cwd=work, stdout=out, stderr=out)
            if done.returncode:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                sys.exit(f"{what} failed (exit {done.returncode}); last lines of {log}:\n{tail}")

        run("'airflow db migrate'", "-m", "airflow", "db", "migrate")
        run("parsing and running the example DAGs", __file__, "--run", str(dags), str(results))
        outcome = json.loads(results.read_text())
        if Path(outcome["package"]).resolve() != where:
            sys.exit(f"the DAGs ran with airflow_provider_hve from {outcome['package']}, not from {where}")
        print(f"== wheel smoke: the DagBag parsed {len(FILES)} files without errors: {', '.join(outcome['dags'])}")
        expected = sum(messages for _, messages, _ in RUNS.values())
        delivered = sandbox.wait_for_messages(expected, timeout=30)
        for dag_id, (state, messages, recipient) in RUNS.items():
            if outcome["states"][dag_id] != state:
                sys.exit(f"{dag_id}: dag.test() ended {outcome['states'][dag_id]}, expected {state}; see {log}")
            got = messages and sum(1 for message in delivered if fnmatch.filter(message.rcpt_tos, recipient))
            if got != messages:
                sys.exit(f"{dag_id}: the sandbox has {got} messages for {recipient}, expected {messages}; see {log}")
            print(f"== wheel smoke: {dag_id} ran ({state}) and delivered {messages} message(s) to the sandbox")
        if len(delivered) != expected:
            sys.exit(f"the sandbox has {len(delivered)} messages in all, expected {expected}; see {log}")
        if "hve_deadline_alert" in outcome["dags"]:
            print("== wheel smoke: hve_deadline_alert parsed only: its Deadline callback needs a triggerer")
        else:
            print("== wheel smoke: hve_deadline_alert.py parsed: no DAG before Airflow 3.1 (no Deadline Alerts)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_dags(sys.argv[2], sys.argv[3]) if sys.argv[1] == "--run" else main())
