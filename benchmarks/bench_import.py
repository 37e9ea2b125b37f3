"""What a DAG file pays to import the provider, after Airflow itself (``make bench-import``).

DAG files are parsed again and again, so the import of the operator and the notifier must stay cheap. Each
measurement is a fresh interpreter that imports Airflow's task SDK (and the common.compat layer both providers use)
first, then times the one import in-process; the median of ``--runs`` such processes is reported, the SMTP
provider's operator and notifier beside ours (the target: ours cost no more than theirs). A module that pulls in
``msal``, ``requests`` or ``aiosmtpd`` at import fails the row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PAIRS = [
    ("operator", "airflow_provider_hve.operators.hve", "airflow.providers.smtp.operators.smtp"),
    ("notifier", "airflow_provider_hve.notifications.hve", "airflow.providers.smtp.notifications.smtp"),
]
HEAVY = ("msal", "requests", "aiosmtpd", "airflow_provider_hve.sandbox")
PROBE = """
import json, sys, time
import airflow.sdk, airflow.providers.common.compat.sdk
started = time.perf_counter()
import {module}
elapsed = time.perf_counter() - started
print(json.dumps({{"ms": elapsed * 1000, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def measure(module: str, runs: int) -> tuple[float, list[str]]:
    """Median milliseconds of ``import module`` after Airflow, over ``runs`` fresh processes."""
    times, heavy = [], set()
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        times.append(result["ms"])
        heavy.update(result["heavy"])
    return statistics.median(times), sorted(heavy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per module (median reported)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows, failed = [], False
    print(f"{'import after Airflow':<22}{'ours (ms)':>11}{'smtp (ms)':>11}  verdict")
    for name, ours, theirs in PAIRS:
        ours_ms, heavy = measure(ours, args.runs)
        theirs_ms, _ = measure(theirs, args.runs)
        ok = ours_ms <= theirs_ms and not heavy
        failed |= not ok
        note = f"  (imports {', '.join(heavy)})" if heavy else ""
        print(f"{name:<22}{ours_ms:>11.1f}{theirs_ms:>11.1f}  {'PASS' if ok else 'FAIL'}{note}")
        rows.append({"what": name, "ours_ms": round(ours_ms, 2), "smtp_ms": round(theirs_ms, 2), "pass": ok})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"runs": args.runs, "rows": rows}, handle, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
