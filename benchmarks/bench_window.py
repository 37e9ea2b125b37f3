"""What the BDAT window's cap buys and what it risks: the rate at 20 ms RTT against the rows a broken connection
leaves ``unknown``, for each ``bdat_window``, in one run (``make bench-window``). It is what chose the default.

For each cap W, one session against the sandbox (in a child process), through ``benchmarks/delay_proxy.py`` at
20 ms RTT, the way ``make bench`` measures issue 18's targets:

* **rate**: a mail merge of ``--count`` rows, no fault; ``--repeat`` rounds over every cap in turn (so a slow
  moment of the machine hits one round of each, not every run of one), the median of each cap's rounds; each round
  also measures the merge at 0 ms, straight to the sandbox and through the proxy at 0 ms (the proxy's own CPU, on a
  small machine, is part of what the 20 ms runs pay), so every rate is also given relative to those;
* **unknown per reset**: a merge sized to be still sending when the proxy resets (a TCP RST) each of its first
  ``--resets`` connections ``--reset-after`` seconds in, as at full speed when a path dies; the rows its report
  calls ``unknown`` (handed over, no final reply, never sent again), per reset, against the rate x RTT the
  merge runs at with that cap. ``make bench``'s target: at most 2x.

With the sliding window a cap above rate x RTT should only add unknown rows, and a cap below it slows the session
to about cap / RTT. On a small machine the proxy, the sandbox and the client share the cores, and the time a
transaction waits for a core adds to its round trip: the rate keeps growing with the cap well past
rate x 20 ms, and so do the unknown rows. The table shows where the two cross.
"""

from __future__ import annotations

import argparse
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

from scenarios import measure, reset_rows, run_hve, run_hve_through_resets, sandbox_endpoint  # noqa: E402

RTT_MS = 20.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="rows per timed merge (default 2000)")
    parser.add_argument("--windows", default="8,16,24,32,48", help="caps (default 8,16,24,32,48)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of rate runs, median taken (default 3)")
    parser.add_argument("--resets", type=int, default=3, help="connections reset per reset run (default 3)")
    parser.add_argument("--reset-after", type=float, default=1.0, help="seconds into a connection (default 1)")
    args = parser.parse_args()
    windows = [int(w) for w in args.windows.split(",")]
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hve-bench-airflow-"))
    logging.getLogger("airflow_provider_hve").setLevel(logging.ERROR)
    from delay_proxy import DelayProxy

    from airflow_provider_hve.sandbox.process import SandboxProcess
    from airflow_provider_hve.transport import DEFAULT_WINDOW

    print(f"# machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; default bdat_window {DEFAULT_WINDOW}")
    rates: dict[Any, list[float]] = {key: [] for key in ["direct 0", "proxy 0", *windows]}
    unknown: dict[int, float] = {}
    with SandboxProcess(latency_ms=0, mailbox_dir=tempfile.mkdtemp(prefix="hve-bench-mailbox-")) as sandbox:

        def rate(where: Any, label: str, window: int) -> float:
            return measure(
                sandbox, where, label, args.count, lambda: run_hve(sandbox, where, args.count, 1, window)
            ).rate

        with (
            DelayProxy("127.0.0.1", sandbox.smtp_port, RTT_MS) as far_proxy,
            DelayProxy("127.0.0.1", sandbox.smtp_port, 0) as near_proxy,
        ):
            far = sandbox_endpoint(sandbox, "delay proxy", RTT_MS, far_proxy.port)
            near = sandbox_endpoint(sandbox, "delay proxy", 0, near_proxy.port)
            direct = sandbox_endpoint(sandbox, "none", 0)
            for round_ in range(1, args.repeat + 1):
                print(f"round {round_} of {args.repeat}", flush=True)
                rates["direct 0"].append(rate(direct, "hve 1 session", DEFAULT_WINDOW))
                rates["proxy 0"].append(rate(near, "hve 1 session", DEFAULT_WINDOW))
                for window in windows:
                    rates[window].append(rate(far, f"hve 1 session W={window}", window))
        median = {key: statistics.median(runs) for key, runs in rates.items()}
        for window in windows:
            count = reset_rows(median[window], args.reset_after, args.resets)
            with DelayProxy(
                "127.0.0.1", sandbox.smtp_port, RTT_MS, reset_after=args.reset_after, resets=args.resets
            ) as proxy:
                far = sandbox_endpoint(sandbox, "delay proxy", RTT_MS, proxy.port)
                run = run_hve_through_resets(sandbox, far, count, proxy, window)
            if run.resets:
                unknown[window] = run.unknown / run.resets
    print(
        f"\n| bdat_window | msg/s at {RTT_MS:g} ms, delay proxy (median of {args.repeat}; min-max) "
        "| / 0 ms, no proxy | / 0 ms, delay proxy | unknown per reset | / (rate x RTT) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for window in windows:
        spread = f"{min(rates[window]):,.0f}-{max(rates[window]):,.0f}"
        lost = unknown.get(window)
        in_flight = median[window] * RTT_MS / 1000
        lost_cells = "n/a | n/a" if lost is None else f"{lost:.1f} | {lost / in_flight:.2f}x"
        print(
            f"| {window} | {median[window]:,.0f} ({spread}) | {median[window] / median['direct 0']:.2f}x "
            f"| {median[window] / median['proxy 0']:.2f}x | {lost_cells} |"
        )
    print(
        f"\n0 ms (default window), median of {args.repeat}: {median['direct 0']:,.0f} msg/s straight to the sandbox, "
        f"{median['proxy 0']:,.0f} through the delay proxy"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
