"""Mail-merge message building alone, no network: the email package per row against the compiled message.

Run with ``make bench-build`` or ``.venv/bin/python benchmarks/bench_build.py``. Reported:

* build time per row (rendering included) of :class:`~airflow_provider_hve.bulk.MailMerge`'s email-package
  path and of its compiled path, for the same rows and templates as ``bench_bulk.py``, and their ratio;
* peak traced memory (tracemalloc) of streaming rows from a generator through the compiled build function,
  each payload dropped after it is made (as the sessions do), for a small and a large count, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package

SUBJECT = "Your statement, {{ recipient.name }}"
HTML = "<p>Dear {{ recipient.name }},</p><p>your balance is <b>{{ recipient.balance }}</b>.</p>"
TEXT = "Dear {{ recipient.name }},\nyour balance is {{ recipient.balance }}."


def rows(count: int) -> Iterator[Any]:
    from airflow_provider_hve.addresses import Mailbox
    from airflow_provider_hve.bulk.rows import Row

    for n in range(count):
        address = f"user{n:06d}@contoso.example"
        data = {"email": address, "name": f"User {n}", "balance": n * 3}
        yield Row(n, Mailbox(address), f"{n}:{address}", data)


def merge() -> Any:
    from airflow_provider_hve.bulk import MailMerge
    from airflow_provider_hve.hooks.hve import HveHook

    return MailMerge(HveHook(), subject=SUBJECT, html_content=HTML, text_content=TEXT, sessions=1)


def per_row_seconds(build: Callable[[Any], Any], count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for row in rows(count):
            build(row)
        best = min(best, time.perf_counter() - started)
    return best / count


def peak_bytes(build: Callable[[Any], Any], count: int) -> int:
    tracemalloc.start()
    for row in rows(count):
        build(row)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="rows timed per build path")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (the best is kept)")
    parser.add_argument("--memory", default="10000,100000", help="small,large row counts for peak memory")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    small, large = (int(c) for c in args.memory.split(","))

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hve-bench-airflow-"))
    extra = {"tenant_id": "00000000-0000-0000-0000-000000000001", "client_id": "00000000-0000-0000-0000-000000000002"}
    os.environ["AIRFLOW_CONN_HVE_DEFAULT"] = json.dumps(
        {"conn_type": "hve", "login": "hve@contoso.example", "password": "unused", "extra": extra}
    )
    mail_merge = merge()
    first = next(rows(1))
    email_package, compiled = mail_merge._build, mail_merge.row_builder(first)
    compiled(first), email_package(first)  # warm up: imports, template caches

    old = per_row_seconds(email_package, args.rows, args.repeats)
    new = per_row_seconds(compiled, args.rows, args.repeats)
    peaks = {count: peak_bytes(compiled, count) for count in (small, large)}
    results = {
        "rows": args.rows,
        "email_package_ms_per_row": old * 1000,
        "compiled_ms_per_row": new * 1000,
        "speedup": old / new,
        "peak_bytes": peaks,
        "peak_ratio": peaks[large] / peaks[small],
    }
    print(f"build per row over {args.rows:,} rows (rendering included, best of {args.repeats}):")
    print(f"  email package  {old * 1000:.3f} ms")
    print(f"  compiled       {new * 1000:.3f} ms   ({old / new:.1f}x faster)")
    print("peak traced memory streaming rows through the compiled build:")
    for count, peak in peaks.items():
        print(f"  {count:>9,} rows  {peak / 1024:,.0f} KiB")
    print(f"  ratio {large:,} / {small:,}: {results['peak_ratio']:.2f}x (target: at most 1.5x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
