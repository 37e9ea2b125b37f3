"""An alert raised during an HVE outage: how late does it arrive after HVE's return, and how many times?
(``make bench-outbox``; ``--outage-minutes 10`` is the issue's measure, about 11 minutes.)

The sandbox refuses every connection for ``--outage-minutes`` (HVE down). ``--raise-after`` seconds into the outage
``HveNotifier`` raises a failure alert: its send retries (the connection's default, 3 within a minute), then keeps it in
the outbox. Meanwhile the maintenance DAG is played as the scheduler runs it: a run of
``outbox_flush_dag()``'s task (``flush_until_empty(seconds=280, poll=20)``) starts at every 5-minute boundary of the
clock (``*/5 * * * *``), one at a time. Printed: when HVE came back, when the alert arrived, the lateness after
HVE's return (the issue asks for under a minute) and after it was raised, and how many copies arrived (1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hve-bench-outbox-"))
os.environ["AIRFLOW__HVE__ALERT_DIR"] = tempfile.mkdtemp(prefix="hve-bench-outbox-alerts-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

PERIOD = 300.0  # the maintenance DAG's schedule, */5 * * * *
KEEP_TRYING = 280.0  # outbox_flush_dag()'s defaults
POLL = 20.0


def scheduler(
    stop: threading.Event, runs: list[dict[str, Any]], period: float, keep_trying: float, poll: float
) -> None:
    """Start a run of the maintenance task at every ``period`` boundary of the clock, one at a time."""
    from airflow_provider_hve.alerts.flush import flush_until_empty

    while not stop.is_set():
        next_start = (time.time() // period + 1) * period
        if stop.wait(max(0.0, next_start - time.time())):
            return
        started = time.time()
        report = flush_until_empty(seconds=keep_trying, poll=poll)
        runs.append({"started": started, "seconds": time.time() - started, "delivered": report.delivered})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--outage-minutes", type=float, default=10.0)
    parser.add_argument("--raise-after", type=float, default=30.0, help="seconds into the outage (default 30)")
    parser.add_argument("--period", type=float, default=PERIOD, help="seconds between maintenance runs (300)")
    parser.add_argument("--poll", type=float, default=POLL, help="seconds between tries within a run (20)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from airflow_provider_hve.notifications.hve import HveNotifier
    from airflow_provider_hve.sandbox import HveSandbox

    outage = args.outage_minutes * 60
    with HveSandbox() as sandbox:
        os.environ["AIRFLOW_CONN_HVE_DEFAULT"] = json.dumps(sandbox.connection())
        stop = threading.Event()
        runs: list[dict[str, Any]] = []
        loop = threading.Thread(
            target=scheduler, args=(stop, runs, args.period, max(0.0, args.period - 20), args.poll), daemon=True
        )
        loop.start()
        sandbox.smtp.refuse_connections(outage)
        down_at = time.time()
        print(
            f"HVE down for {outage:.0f} s; maintenance runs every {args.period:.0f} s, polling every {args.poll:.0f} s"
        )
        time.sleep(args.raise_after)
        ti = SimpleNamespace(dag_id="nightly", task_id="load", run_id="scheduled__bench", map_index=-1, try_number=1,
                             max_tries=0, state="failed")  # fmt: skip
        raised_at = time.time()
        HveNotifier(to="oncall@contoso.example")({"ti": ti, "run_id": ti.run_id, "exception": ValueError("boom")})
        print(f"alert raised {raised_at - down_at:.0f} s into the outage and kept")
        while sandbox.smtp.refusing_connections:
            time.sleep(0.05)
        back_at = time.time()
        print(f"HVE back after {back_at - down_at:.0f} s")
        (alert,) = sandbox.wait_for_messages(1, timeout=args.period + 60)
        arrived_at = time.time()
        time.sleep(args.poll + 5)  # any second copy would arrive by now
        copies = len(sandbox.messages)
        stop.set()
        figures = {
            "outage_seconds": round(back_at - down_at, 1),
            "late_after_return_seconds": round(arrived_at - back_at, 1),
            "late_after_raise_seconds": round(arrived_at - raised_at, 1),
            "copies": copies,
            "late_by_header": str(alert.message["X-HVE-Alert-Late-By"]),
            "maintenance_runs": runs,
        }
    print(json.dumps(figures, indent=2))
    verdict = figures["late_after_return_seconds"] < 60 and copies == 1
    print(
        f"{'PASS' if verdict else 'FAIL'}: arrived {figures['late_after_return_seconds']} s after HVE's return "
        f"(< 60 s), {copies} cop{'y' if copies == 1 else 'ies'} (1)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
