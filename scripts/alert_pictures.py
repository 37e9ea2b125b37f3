"""Pictures of the alert mails for docs/alerts.md, from mails the sandbox actually received.

Runs the example DAG ``hve_failure_alerts`` with ``airflow dags test`` against the local sandbox (as ``make demo``
does), takes the HTML part of each alert HVE received and photographs it in headless Chromium (Debian's
``chromium``, as ``make test-browser`` installs it). Writes ``docs/images/alerts/<name>.png``.

    .venv/bin/python scripts/alert_pictures.py [--out docs/images/alerts]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from demo import airflow  # noqa: E402  (the same Airflow runner as make demo)

# Subject prefix -> picture name.
PICTURES = {
    "[Airflow] hve_failure_alerts.load failed": "task-failure-alert",
    "[Airflow] DAG hve_failure_alerts failed": "dag-failure-alert",
}


def photograph(html: str, png: Path, width: int = 760, height: int = 470) -> None:
    """Render ``html`` in headless Chromium and save a screenshot to ``png``."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: install it with scripts/browser/install.sh (needs root)")
    with tempfile.TemporaryDirectory(prefix="hve-alert-picture-") as tmp:
        page = Path(tmp) / "alert.html"
        page.write_text(html, encoding="utf-8")
        done = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if done.returncode or not png.is_file():
        sys.exit(f"chromium failed (exit {done.returncode}): {done.stderr[-2000:]}")


def main() -> int:
    from airflow_provider_hve.sandbox import HveSandbox

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "alerts")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="hve-alert-pictures-"))
    log = home / "airflow.log"
    mailbox = tempfile.TemporaryDirectory(prefix="hve-alert-mailbox-")
    with mailbox, HveSandbox(mailbox_dir=mailbox.name) as sandbox:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_HVE_DEFAULT": sandbox.connection_json(),
        }
        airflow("db", "migrate", env=env, log=log)
        # The DAG fails on purpose: its alerts are what we photograph.
        subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "test", "hve_failure_alerts"],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            check=False,
        )
        delivered = sandbox.wait_for_messages(len(PICTURES), timeout=30)
        made = []
        for record in delivered:
            subject = str(record.message["Subject"])
            name = next((n for prefix, n in PICTURES.items() if subject.startswith(prefix)), None)
            part = record.message.get_body(preferencelist=("html",))
            if name is None or part is None:
                continue
            png = args.out / f"{name}.png"
            photograph(part.get_content(), png)
            made.append(f"{png} ({subject})")
    shutil.rmtree(home, ignore_errors=True)
    if len(made) != len(PICTURES):
        sys.exit(f"expected {len(PICTURES)} alerts, photographed {len(made)}: {made}; see {log}")
    print("\n".join(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
