"""Demo: run the example DAG ``hve_daily_report`` in real Airflow against the local HVE sandbox.

``make demo`` runs this. No Microsoft tenant is needed: the sandbox plays Entra ID (HTTPS token endpoint)
and HVE (STARTTLS + XOAUTH2 SMTP) on localhost and writes each delivered message to ./mailbox. Airflow
gets a throw-away AIRFLOW_HOME with a migrated SQLite database, and ``airflow dags test`` runs the DAG.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "hve_daily_report"


def airflow(*args: str, env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        done = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, stdout=out, stderr=out)
    if done.returncode:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        sys.exit(
            f"'airflow {' '.join(args)}' failed (exit {done.returncode}); last lines of {log}:\n" + "\n".join(tail)
        )


def main() -> int:
    from airflow_provider_hve.sandbox import HveSandbox

    home = Path(tempfile.mkdtemp(prefix="hve-demo-airflow-"))
    log = home / "demo.log"
    with HveSandbox(mailbox_dir=ROOT / "mailbox") as sandbox:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_HVE_DEFAULT": sandbox.connection_json(),
        }
        print(f"Sandbox: Entra at {sandbox.authority_host}, HVE SMTP at localhost:{sandbox.smtp_port} (STARTTLS)")
        print(f"Airflow home: {home} (log: {log})")
        print("Migrating the Airflow metadata database (SQLite)...")
        airflow("db", "migrate", env=env, log=log)
        print(f"Running 'airflow dags test {DAG_ID}'...")
        airflow("dags", "test", DAG_ID, env=env, log=log)
        (delivered,) = sandbox.wait_for_messages(1, timeout=10)

    message = delivered.message
    attachments = [part.get_filename() for part in message.iter_attachments()]
    print()
    print(f"Delivered: {message['Subject']!r} from {message['From']}")
    print(f"  envelope recipients: {', '.join(delivered.rcpt_tos)} (Bcc is not in the headers)")
    print(f"  parts: {', '.join(p.get_content_type() for p in message.walk() if not p.is_multipart())}")
    print(f"  attachments: {', '.join(a for a in attachments if a) or 'none'}")
    print(f"Delivered message: {delivered.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
