"""What the BDAT window buys and what it risks: throughput at 20 ms RTT against the rows a broken connection
leaves ``unknown``, for each window size, in one run (``make bench-window``).

For each ``bdat_window`` W, one session against the sandbox (in a child process) with its ``latency_ms`` switch
at 20 ms:

* **rate**: a mail merge of ``--count`` rows, no fault; ``--repeat`` rounds over every window in turn (so a slow
  moment of the machine hits one round of each, not every run of one), the median of each window's rounds;
* **unknown per break**: the same merge where, every 97 accepted messages (five times), the server holds a
  reply longer than the client's timeout (1 s): the connection is given up without an answer, as after a reset
  or a dead network path. Every message handed over and not answered is ``unknown`` (never sent again); the
  report says how many, divided by the five breaks. 97 is prime, so the breaks land at different places of a
  window (a single break measures where it lands more than the window). The run goes on over new connections.

Rates are also printed relative to W=1 (the DATA-like, one-in-flight case), so the machine's speed cancels out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))

from scenarios import HTML, SUBJECT, TEXT, recipients  # noqa: E402

RTT_MS = 20.0
BREAK_EVERY = 97
BREAKS = 5


def merge(sandbox: Any, count: int, window: int, *, timeout: float | None = None) -> tuple[float, Any]:
    import time

    from airflow_provider_hve.auth import clear_token_providers
    from airflow_provider_hve.bulk import MailMerge
    from airflow_provider_hve.hooks.hve import HveHook

    extra: dict[str, Any] = {"bdat_window": window}
    if timeout is not None:
        extra["timeout"] = timeout
    os.environ["AIRFLOW_CONN_HVE_DEFAULT"] = json.dumps(sandbox.connection(**extra))
    clear_token_providers()
    sandbox.reset()
    run = MailMerge(HveHook(), subject=SUBJECT, html_content=HTML, text_content=TEXT, sessions=1, progress_interval=1e9)
    started = time.perf_counter()
    report = run.run(recipients(count))
    return time.perf_counter() - started, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="rows per merge (default 1000)")
    parser.add_argument("--windows", default="1,4,8,16,32,64", help="window sizes (default 1,4,8,16,32,64)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of rate runs, median taken (default 3)")
    args = parser.parse_args()
    windows = [int(w) for w in args.windows.split(",")]
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hve-bench-airflow-"))
    logging.getLogger("airflow_provider_hve").setLevel(logging.ERROR)
    from airflow_provider_hve.sandbox.process import SandboxProcess

    rates: dict[int, list[float]] = {window: [] for window in windows}
    unknown: dict[int, float] = {}
    with SandboxProcess(latency_ms=RTT_MS, mailbox_dir=tempfile.mkdtemp(prefix="hve-bench-mailbox-")) as sandbox:
        for round_ in range(1, args.repeat + 1):
            for window in windows:
                seconds, report = merge(sandbox, args.count, window)
                assert report.accepted == args.count, report.as_dict()
                rates[window].append(args.count / seconds)
                print(f"  round {round_}, W={window:<3} {args.count / seconds:7.0f} msg/s")
        for window in windows:
            sandbox.smtp_switch("stall_after", BREAK_EVERY, 3.0, times=BREAKS)
            _, broken = merge(sandbox, args.count, window, timeout=1.0)
            sandbox.smtp_switch("reset_faults")
            unknown[window] = len(broken.unknown) / BREAKS
            print(f"  W={window:<3} unknown per break: {unknown[window]:.1f}")
    median = {window: statistics.median(runs) for window, runs in rates.items()}
    base = median[windows[0]]
    print(
        f"\n| bdat_window | msg/s at {RTT_MS:g} ms (median of {args.repeat}; min-max) | vs W={windows[0]} "
        f"| unknown per break (mean of {BREAKS}) |"
    )
    print("|---:|---:|---:|---:|")
    for window in windows:
        spread = f"{min(rates[window]):,.0f}-{max(rates[window]):,.0f}"
        print(f"| {window} | {median[window]:,.0f} ({spread}) | {median[window] / base:.1f}x | {unknown[window]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
