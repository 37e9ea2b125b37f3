"""Run example DAGs with the provider as installed from its wheel: the check behind ``make test-wheel``.

Run by the fresh venv's own Python from a temporary folder (never the checkout), with ``-I`` so neither
PYTHONPATH nor the working directory can put the checkout on ``sys.path``. It checks that the package comes from
the venv, starts the sandbox shipped in the wheel, migrates a throw-away SQLite metadata database and runs each
example DAG with ``airflow dags test``; then it checks what the sandbox received.

Usage: python -I wheel_smoke.py <example_dags folder> <checkout root>
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# dag id -> messages the sandbox must receive (hve_mail_merge: one per person, HVE_MERGE_PEOPLE below).
DAGS = {"hve_daily_report": 1, "hve_mail_merge": 20}


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
    for name in DAGS:
        shutil.copy(examples / f"{name}.py", dags)
    shutil.copytree(examples / "templates", dags / "templates")
    log = work / "airflow.log"
    with HveSandbox() as sandbox:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AIRFLOW"))}
        env.update(
            AIRFLOW_HOME=str(work / "home"),
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW_CONN_HVE_DEFAULT=sandbox.connection_json(),
            HVE_MERGE_PEOPLE=str(DAGS["hve_mail_merge"]),
        )

        def airflow_cli(*args: str) -> None:
            with log.open("ab") as out:
                done = subprocess.run(
                    [sys.executable, "-I", "-m", "airflow", *args], env=env, cwd=work, stdout=out, stderr=out
                )
            if done.returncode:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                sys.exit(f"'airflow {' '.join(args)}' failed (exit {done.returncode}); last lines of {log}:\n{tail}")

        airflow_cli("db", "migrate")
        expected = 0
        for dag_id, messages in DAGS.items():
            airflow_cli("dags", "test", dag_id)
            expected += messages
            delivered = sandbox.wait_for_messages(expected, timeout=30)
            if len(delivered) != expected:
                sys.exit(f"{dag_id}: the sandbox has {len(delivered)} messages, expected {expected}; see {log}")
            print(f"== wheel smoke: {dag_id} delivered {messages} message(s) to the sandbox")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
