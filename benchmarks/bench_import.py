"""What a DAG file pays to import the provider, after Airflow itself (``make bench-import``).

DAG files are parsed again and again, so the import of the operator and the notifier must stay cheap. Both
providers are timed on the same warm base, the one any DAG file already has: one interpreter imports Airflow's
task SDK and, through the common.compat layer both providers use, ``BaseOperator`` and ``BaseNotifier``. It then
forks a child per measurement (as Airflow 3's DAG processor forks a warm parent to parse each file; the base's
objects frozen with ``gc.freeze()`` first, as Python advises before a fork); the child times the one import and
exits. The time is the child's CPU time (user + system), not the wall clock: on a shared machine the wall clock
also counts the time spent waiting for a core (two to four times the CPU time on a loaded 2-core machine). The
four modules take turns, round after round, so a burst of load falls on all of them alike. The first round is
discarded: it writes the bytecode.

Bytecode: a deployment has ``.pyc`` files (pip compiles them at install; a DAG processor writes them on its
first parse), so both providers are timed reading bytecode, never compiling source. The children write and read
it under a private ``PYTHONPYCACHEPREFIX`` (the checkout and the venv are left as they are), also when the
environment sets ``PYTHONDONTWRITEBYTECODE`` (which would otherwise make every run compile every module).

Verdict: a row fails if ours imports ``msal``, ``requests``, ``aiosmtpd`` or the sandbox, or if the median of ours
exceeds the SMTP provider's by more than the noise: twice the standard error of the difference of the two
medians, each median's standard error estimated from its runs as 1.253 x 1.4826 x MAD / sqrt(runs) (the median
absolute deviation scaled to a normal standard deviation; the median's efficiency). The tolerance is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

PAIRS = [
    ("operator", "airflow_provider_hve.operators.hve", "airflow.providers.smtp.operators.smtp"),
    ("notifier", "airflow_provider_hve.notifications.hve", "airflow.providers.smtp.notifications.smtp"),
]
HEAVY = ("msal", "requests", "aiosmtpd", "airflow_provider_hve.sandbox")
# Runs in one interpreter: the warm base, then one forked child per (round, module).
PROBE = """
import json, os, sys, time
import airflow.sdk
from airflow.providers.common.compat.sdk import BaseNotifier, BaseOperator
import gc
gc.freeze()  # the base's objects: a child's collections would otherwise touch (copy) every page of them
modules, rounds, heavy_names = json.loads(sys.argv[1])
for _ in range(rounds + 1):
    for module in modules:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            started = time.process_time()
            __import__(module)
            elapsed = time.process_time() - started
            heavy = [m for m in heavy_names if m in sys.modules]
            os.write(write, json.dumps({"module": module, "ms": elapsed * 1000, "heavy": heavy}).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            print(pipe.read(), flush=True)
        os.waitpid(pid, 0)
"""


def median_standard_error(times: list[float]) -> float:
    """Standard error of the median of ``times``, from their median absolute deviation."""
    middle = statistics.median(times)
    mad = statistics.median(abs(t - middle) for t in times)
    return 1.253 * 1.4826 * mad / math.sqrt(len(times))


def measure(modules: list[str], runs: int) -> dict[str, dict[str, list]]:
    """Milliseconds of each module's import after the warm base, ``runs`` each (the warm-up round dropped)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="hve-bench-import-pyc-") as pycache:
        env["PYTHONPYCACHEPREFIX"] = pycache
        done = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps([modules, runs, HEAVY])],
            capture_output=True,
            text=True,
            env=env,
        )
    if done.returncode:
        sys.exit(f"the probe failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    results: dict[str, dict[str, list]] = {m: {"ms": [], "heavy": []} for m in modules}
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if len(lines) != len(modules) * (runs + 1):
        sys.exit(f"the probe reported {len(lines)} measurements, expected {len(modules) * (runs + 1)}")
    for line in lines[len(modules) :]:  # the first round wrote the bytecode
        results[line["module"]]["ms"].append(line["ms"])
        results[line["module"]]["heavy"].extend(h for h in line["heavy"] if h not in results[line["module"]]["heavy"])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=31, help="measurements per module (median reported)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    results = measure([module for _, ours, theirs in PAIRS for module in (ours, theirs)], args.runs)
    rows, failed = [], False
    print(f"CPU ms to import after Airflow + BaseOperator/BaseNotifier (bytecode cached), median of {args.runs}")
    print(f"{'':<10}{'ours (ms)':>11}{'smtp (ms)':>11}{'ours/smtp':>11}{'tolerance':>11}  verdict")
    for name, ours, theirs in PAIRS:
        ours_ms, theirs_ms = statistics.median(results[ours]["ms"]), statistics.median(results[theirs]["ms"])
        tolerance = 2 * math.hypot(
            median_standard_error(results[ours]["ms"]), median_standard_error(results[theirs]["ms"])
        )
        heavy = results[ours]["heavy"]
        ok = ours_ms <= theirs_ms + tolerance and not heavy
        failed |= not ok
        note = f"  (imports {', '.join(heavy)})" if heavy else ""
        verdict = "PASS" if ok else "FAIL"
        ratio = ours_ms / theirs_ms
        print(f"{name:<10}{ours_ms:>11.1f}{theirs_ms:>11.1f}{ratio:>11.2f}{tolerance:>10.1f}ms  {verdict}{note}")
        rows.append(
            {
                "what": name,
                "ours_ms": round(ours_ms, 2),
                "smtp_ms": round(theirs_ms, 2),
                "ratio": round(ratio, 3),
                "tolerance_ms": round(tolerance, 2),
                "pass": ok,
            }
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"runs": args.runs, "rows": rows}, handle, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
