"""Bulk sending benchmark: this provider against a bare smtplib loop (and apache-airflow-providers-smtp), in one
run, with a PASS/FAIL row per target of issue 18 (sending at the physical limit: a sliding BDAT window).

Run with ``make bench`` (``make bench BENCH_ARGS="--quick"`` for a short run; ``python benchmarks/bench_bulk.py
--help`` for the options). Every target is a ratio of two rates measured side by side in the same run, on the
same machine, so the machine's speed (and the load of other jobs on it) cancels out as far as it can. Where a
target compares two runs of the merge that should come out close (a ratio near 1), the two are alternated for
``--rounds`` rounds and the best run of each side counts, so that a slow moment of the machine does not land on
one side only; every round is printed.

Senders:

* ``hve``: :class:`~airflow_provider_hve.bulk.MailMerge`, personalised subject, HTML and text per recipient,
  one token, the connection's default BDAT window (no ``bdat_window`` extra: the window slides, sized from the
  measured RTT and rate, capped by the default ``bdat_window``) unless a row says ``W=...``;
* ``bare smtplib``: the floor, ``smtplib.sendmail`` per message on one connection opened, secured and
  authenticated before timing, messages built before timing;
* ``smtp provider``: apache-airflow-providers-smtp's ``SmtpHook(auth_type="oauth2")`` used once per message the
  way ``EmailOperator`` does (a sample; its MSAL authority is pointed at the sandbox, nothing else changed).

Servers: the sandbox (``airflow_provider_hve.sandbox``, in a child process with its own GIL; it advertises
Exchange Online's EHLO, PIPELINING and CHUNKING included, and counts SMTP round trips: replies the client had
to wait for), and, for one target, a private Postfix + Dovecot (``scripts/mta/instance.py``; needs root and
``scripts/mta/install.sh``, else that row says SKIP).

How latency is emulated:

* ``delay proxy`` (every target): ``benchmarks/delay_proxy.py``, an independent asyncio TCP proxy in a child
  process that holds every chunk of bytes for RTT/2 in each direction, in order, and knows nothing of SMTP.
  The client connects to it at 127.0.0.1 (a name the sandbox's certificate holds; STARTTLS passes through as
  bytes), the sandbox itself runs at 0 ms. Postfix is only ever reached through this proxy. On demand it
  resets a connection (a TCP RST) a set time after accepting it;
* ``sandbox switch`` (context rows only): the sandbox's ``latency_ms``: every reply the client waits for
  reaches the wire that long after the command that asked for it. It is the server's own model of a round
  trip, and the sandbox counts the round trips the client waited for.

Targets (issue 18), all at one session and the default window unless said:

1. 20 ms through the delay proxy: the rate >= 0.9x the rate at 0 ms (straight to the sandbox, no proxy; as in
   issue 13). Also printed for context: the rate through the proxy at 0 ms, which separates what the proxy
   itself costs from what the RTT costs;
2. one session >= 40x the bare loop at 20 ms (both through the delay proxy), and >= 1.5x at 0 ms over 1,000 and
   over 10,000 messages (each measured in full);
3. Postfix + Dovecot through the delay proxy at 10 ms >= 0.95x the merge's own rate against Postfix through
   the same proxy at 0 ms;
4. 20 ms through the delay proxy: 4 sessions >= 3.5x one session, both with the default (sliding) window; the
   4 sessions send 4x the messages, so both runs last about as long if the sessions scale;
5. a reset at full speed leaves at most 2 x rate x RTT messages unknown: a one-session merge through the
   delay proxy at 20 ms, the proxy resetting each of the first ``--resets`` connections ``--reset-after``
   seconds after accepting it; the rows the merge's report calls ``unknown`` (handed over, no final reply)
   divided by the resets, against the rate of target 1 x 20 ms. The merge's rows are sized from that rate so
   that it is still sending at every reset. A context row does the same with ``bdat_window=64``, a cap far above
   rate x RTT: the window's own sizing, not its cap, is what bounds the unknown rows;
6. memory: the growth of peak RSS during a 100,000-row merge <= 1.5x that during a 10,000-row merge, each in
   a fresh interpreter sending to the sandbox at 0 ms in one session (``scenarios.memory_child``: the peak mark
   is reset after imports, hook and the rows list are made, so the rows, which the caller holds as a sequence,
   are not counted; allocator slack is).

Context rows (no threshold): the 20 ms rows with the sandbox switch (round trips per message), the durable
delivery log against none (issue 13's target 5), the SMTP provider, and two rows beside target 4: 4 sessions at
20 ms against 4 sessions at 0 ms (near 1.0x, the machine's CPU and not the RTT limits them: a sandbox in one
process on a small machine cannot give 4 sessions 3.5x what one session at full speed gets), and 4 sessions
against one with ``bdat_window=1`` (one message in flight each: every session waits on the RTT, so they can
scale; issue 13's reading).

The slow senders (the bare loop and the SMTP provider at 20 ms, the bare loop against Postfix) are measured on
a sample (``--sample-slow``) and compared as rates; every row says how many messages it measured.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# This checkout's package first (also for the child processes: the sandbox, the import-cost interpreters).
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))

from report import Target, print_report, write_json  # noqa: E402
from scenarios import (  # noqa: E402
    ResetRun,
    Row,
    configure_smtp_provider,
    measure,
    peak_memory,
    reset_rows,
    run_bare_smtplib,
    run_hve,
    run_hve_through_resets,
    run_smtp_provider,
    sandbox_endpoint,
)

RTT_MS = 20.0
POSTFIX_RTT_MS = 10.0
LARGE_WINDOW = 64


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts (a few minutes): for development only")
    parser.add_argument("--counts", default=None, help="0 ms message counts, default 1000,10000 (quick: 1000)")
    parser.add_argument("--latency-count", type=int, default=None, help="hve messages at 20 ms (default 2000)")
    parser.add_argument("--sample-slow", type=int, default=None, help="messages for slow senders (default 150)")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds of close ratios (default 2)")
    parser.add_argument("--reset-after", type=float, default=1.0, help="seconds into a connection it is reset (1)")
    parser.add_argument("--resets", type=int, default=None, help="connections reset (default 3, quick: 2)")
    parser.add_argument("--memory-counts", default=None, help="rows of the memory target (default 10000,100000)")
    parser.add_argument("--no-postfix", action="store_true", help="skip the Postfix target")
    parser.add_argument("--no-smtp-provider", action="store_true", help="skip apache-airflow-providers-smtp")
    parser.add_argument("--no-import", action="store_true", help="skip the import-cost comparison")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = args.quick
    args.counts = [int(c) for c in (args.counts or ("1000" if quick else "1000,10000")).split(",")]
    args.latency_count = args.latency_count or (500 if quick else 2000)
    args.sample_slow = args.sample_slow or (40 if quick else 150)
    args.rounds = args.rounds or 2
    args.resets = args.resets or (2 if quick else 3)
    args.memory_counts = [
        int(c) for c in (args.memory_counts or ("1000,10000" if quick else "10000,100000")).split(",")
    ]
    if len(args.memory_counts) != 2:
        parser.error("--memory-counts takes two counts: SMALL,LARGE")
    return args


def best(rows: list[Row]) -> Row:
    return max(rows, key=lambda r: r.rate)


def zero_ms_targets(sandbox: Any, args: argparse.Namespace, rows: list[Row]) -> list[Target]:
    """Target 2 at 0 ms (hve against the bare loop, each over the full count), and the context rows at 0 ms."""
    local = sandbox_endpoint(sandbox, "none", 0)
    targets = []
    for count in args.counts:
        bare = measure(sandbox, local, "bare smtplib", count, lambda c=count: run_bare_smtplib(sandbox, local, c))
        one = measure(sandbox, local, "hve 1 session", count, lambda c=count: run_hve(sandbox, local, c, 1, None))
        rows += [bare, one]
        targets.append(Target(f"0 ms, {count:,} msgs each: hve 1 session / bare smtplib", one.rate / bare.rate, 1.5))
    # Context (issue 13's target 5): the durable delivery log (write-ahead, as a retried task needs it) against
    # none, 2 sessions (the operator's default), alternated twice, the better run of each.
    count = args.latency_count
    plain, logged = [], []
    for _ in range(2):
        plain.append(
            measure(sandbox, local, "hve 2 sessions, no log", count, lambda: run_hve(sandbox, local, count, 2, None))
        )
        logged.append(
            measure(
                sandbox,
                local,
                "hve 2 sessions, durable log",
                count,
                lambda: run_hve(sandbox, local, count, 2, None, durable_log=True),
            )
        )
    rows += [best(plain), best(logged)]
    targets.append(
        Target(
            f"0 ms, {count:,} msgs each: hve 2 sessions with the durable log / without",
            best(logged).rate / best(plain).rate,
            None,
        )
    )
    if not args.no_smtp_provider:
        sample = args.sample_slow * 2
        rows.append(measure(sandbox, local, "smtp provider", sample, lambda: run_smtp_provider(sandbox, sample)))
    return targets


def proxy_targets(sandbox: Any, args: argparse.Namespace, rows: list[Row]) -> tuple[list[Target], float]:
    """Targets 1, 2 (20 ms) and 4: rounds of hve at 0 ms straight, 1 and 4 sessions through the proxy at 20 ms,
    1 session through the proxy at 0 ms, alternated; then the bare loop at 20 ms, and the context of target 4
    (4 sessions at 0 ms; 1 and 4 sessions with W=1 at 20 ms). Return them and the best one-session rate at
    20 ms (target 5's rate)."""
    from delay_proxy import DelayProxy

    count, rounds = args.latency_count, args.rounds
    local = sandbox_endpoint(sandbox, "none", 0)
    runs: dict[str, list[Row]] = {"direct 0": [], "proxy 0": [], "one": [], "four": []}
    with (
        DelayProxy("127.0.0.1", sandbox.smtp_port, RTT_MS) as far_proxy,
        DelayProxy("127.0.0.1", sandbox.smtp_port, 0) as near_proxy,
    ):
        far = sandbox_endpoint(sandbox, "delay proxy", RTT_MS, far_proxy.port)
        near = sandbox_endpoint(sandbox, "delay proxy", 0, near_proxy.port)
        for n in range(1, rounds + 1):
            tag = f" (round {n}/{rounds})"
            runs["direct 0"].append(
                measure(sandbox, local, "hve 1 session" + tag, count, lambda: run_hve(sandbox, local, count, 1, None))
            )
            runs["one"].append(
                measure(sandbox, far, "hve 1 session" + tag, count, lambda: run_hve(sandbox, far, count, 1, None))
            )
            runs["four"].append(
                measure(
                    sandbox, far, "hve 4 sessions" + tag, 4 * count, lambda: run_hve(sandbox, far, 4 * count, 4, None)
                )
            )
            runs["proxy 0"].append(
                measure(sandbox, near, "hve 1 session" + tag, count, lambda: run_hve(sandbox, near, count, 1, None))
            )
        sample = args.sample_slow
        bare = measure(sandbox, far, "bare smtplib", sample, lambda: run_bare_smtplib(sandbox, far, sample))
        # Context for target 4: how far 4 sessions can go on this machine at all (at 0 ms nothing waits: the
        # limit is CPU, the client's and the sandbox's), and how sessions scale where each one waits on the
        # RTT (W=1: one message in flight per session; issue 13's reading).
        quarter = max(count // 4, 1)
        ceiling = measure(
            sandbox, local, "hve 4 sessions", 4 * count, lambda: run_hve(sandbox, local, 4 * count, 4, None)
        )
        one_w1 = measure(sandbox, far, "hve 1 session W=1", quarter, lambda: run_hve(sandbox, far, quarter, 1, 1))
        four_w1 = measure(sandbox, far, "hve 4 sessions W=1", count, lambda: run_hve(sandbox, far, count, 4, 1))
    for kind in ("direct 0", "one", "four", "proxy 0"):
        rows += runs[kind]
    rows += [bare, ceiling, one_w1, four_w1]
    direct, one, four, proxied = (best(runs[k]) for k in ("direct 0", "one", "four", "proxy 0"))
    machine = max(direct.rate, ceiling.rate)  # the CPU's limit: nothing waits at 0 ms without the proxy
    where = f"{RTT_MS:g} ms (delay proxy)"
    each = f"{count:,} msgs each, best of {rounds}"
    targets = [
        Target(
            f"{where} / 0 ms (no proxy), {each}: hve 1 session, default window",
            one.rate / direct.rate,
            0.9,
            limit=proxied.rate / direct.rate,
            limit_why="the delay proxy's own cost, 0 ms through it / no proxy",
        ),
        Target(f"{where} / 0 ms (delay proxy), {each}: hve 1 session, default window", one.rate / proxied.rate, None),
        Target(
            f"0 ms: delay proxy / no proxy, {each}: hve 1 session (the proxy's own cost)",
            proxied.rate / direct.rate,
            None,
        ),
        Target(
            f"{where}: hve 1 session ({count:,} msgs, best of {rounds}) / bare smtplib ({sample:,} msgs)",
            one.rate / bare.rate,
            40.0,
        ),
        Target(
            f"{where}: hve 4 sessions ({4 * count:,} msgs) / hve 1 session ({count:,} msgs), both default window, "
            f"best of {rounds}",
            four.rate / one.rate,
            3.5,
            limit=machine / one.rate,
            limit_why="the most it sent at 0 ms, no proxy, 1 or 4 sessions / hve 1 session at 20 ms",
        ),
    ]
    targets += [
        Target(
            f"{where} / 0 ms (no proxy): hve 4 sessions, {4 * count:,} msgs each, default window (near 1.0x: "
            "CPU, not the RTT, limits them)",
            four.rate / ceiling.rate,
            None,
        ),
        Target(
            f"{where}: hve 4 sessions W=1 ({count:,} msgs) / hve 1 session W=1 ({quarter:,} msgs)",
            four_w1.rate / one_w1.rate,
            None,
        ),
    ]
    return targets, one.rate


def reset_target(
    sandbox: Any, args: argparse.Namespace, rate: float, window: int | None = None
) -> tuple[Target, ResetRun]:
    """Target 5: rows left unknown per reset at full speed, against rate x RTT (the bound is 2x); ``window``: a
    ``bdat_window`` cap other than the default (a context row: the window, not its cap, bounds what is unknown)."""
    from delay_proxy import DelayProxy

    count = reset_rows(rate, args.reset_after, args.resets)
    with DelayProxy("127.0.0.1", sandbox.smtp_port, RTT_MS, reset_after=args.reset_after, resets=args.resets) as proxy:
        far = sandbox_endpoint(sandbox, "delay proxy", RTT_MS, proxy.port)
        run = run_hve_through_resets(sandbox, far, count, proxy, window)
    in_flight = rate * RTT_MS / 1000
    cap = "default cap" if window is None else f"bdat_window={window}"
    name = (
        f"{RTT_MS:g} ms (delay proxy), {cap}, resets {args.reset_after:g} s into the first {args.resets} connections "
        f"of a {count:,}-row merge: unknown per reset / (rate x RTT = {in_flight:.1f} msgs)"
    )
    threshold = 2.0 if window is None else None
    if run.unknown_per_reset is None:
        return Target(name, None, threshold, "<=", skipped="the merge ended before the proxy reset a connection"), run
    return Target(name, run.unknown_per_reset / in_flight, threshold, "<="), run


def sandbox_switch_context(sandbox: Any, args: argparse.Namespace, rows: list[Row], rate_0ms: float) -> list[Target]:
    """Context: the 20 ms rows with the sandbox's latency switch (it counts the round trips waited for)."""
    count, sample = args.latency_count, args.sample_slow
    sandbox.set_latency(RTT_MS)
    try:
        far = sandbox_endpoint(sandbox, "sandbox switch", RTT_MS)
        bare = measure(sandbox, far, "bare smtplib", sample, lambda: run_bare_smtplib(sandbox, far, sample))
        one = measure(sandbox, far, "hve 1 session", count, lambda: run_hve(sandbox, far, count, 1, None))
        rows += [bare, one]
        if not args.no_smtp_provider:
            rows.append(measure(sandbox, far, "smtp provider", sample, lambda: run_smtp_provider(sandbox, sample)))
    finally:
        sandbox.set_latency(0)
    where = f"{RTT_MS:g} ms (sandbox switch)"
    return [
        Target(f"{where}: hve 1 session / bare smtplib", one.rate / bare.rate, None),
        Target(f"{where}: hve 1 session, round trips per message", one.round_trips_per_message or 0.0, None),
        Target(f"{where} / 0 ms (no proxy, best above): hve 1 session, {count:,} msgs", one.rate / rate_0ms, None),
    ]


def main() -> int:
    args = parse_args()
    if args.memory_child:
        from scenarios import memory_child

        logging.getLogger("airflow_provider_hve").setLevel(logging.ERROR)
        memory_child(args.memory_child)
        return 0
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hve-bench-airflow-"))
    # The sandbox's "not a Microsoft host" warnings and the merges' progress lines would drown the rows.
    logging.getLogger("airflow_provider_hve").setLevel(logging.ERROR)
    from airflow_provider_hve.sandbox.process import SandboxProcess

    print(
        f"# machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    rows: list[Row] = []
    targets: list[Target] = []
    context: list[Target] = []
    memory: list[dict[str, float]] = []
    mailbox = tempfile.mkdtemp(prefix="hve-bench-mailbox-")
    with SandboxProcess(latency_ms=0, mailbox_dir=mailbox) as sandbox:
        configure_smtp_provider(sandbox)

        print("0 ms", flush=True)
        targets += zero_ms_targets(sandbox, args, rows)

        print(f"{RTT_MS:g} ms and 0 ms, delay proxy, {args.rounds} alternated rounds", flush=True)
        proxied, rate_20ms = proxy_targets(sandbox, args, rows)
        targets += proxied

        print(f"{RTT_MS:g} ms, delay proxy, resets", flush=True)
        reset, resets = reset_target(sandbox, args, rate_20ms)
        targets.append(reset)
        # Context: a cap far above rate x RTT; the window's own sizing, not the cap, bounds what a reset leaves.
        targets.append(reset_target(sandbox, args, rate_20ms, window=LARGE_WINDOW)[0])

        print(f"Postfix, 0 ms and {POSTFIX_RTT_MS:g} ms, delay proxy", flush=True)
        from postfix import postfix_rows

        postfix, why_not = postfix_rows(
            sandbox, args.latency_count, args.sample_slow, POSTFIX_RTT_MS, args.rounds, args.no_postfix
        )
        name = (
            f"Postfix, {POSTFIX_RTT_MS:g} ms / 0 ms (delay proxy), {args.latency_count:,} msgs each, best of "
            f"{args.rounds}: hve 1 session, default window"
        )
        if postfix:
            rows += postfix
            near = best([r for r in postfix if r.scenario.startswith("hve") and r.rtt_ms == 0])
            far = best([r for r in postfix if r.scenario.startswith("hve") and r.rtt_ms == POSTFIX_RTT_MS])
            bare = next(r for r in postfix if r.scenario == "bare smtplib")
            targets.append(Target(name, far.rate / near.rate, 0.95))
            context.append(
                Target(
                    f"Postfix, {POSTFIX_RTT_MS:g} ms (delay proxy): hve 1 session / bare smtplib "
                    f"({bare.messages} msgs)",
                    far.rate / bare.rate,
                    None,
                )
            )
        else:
            targets.append(Target(name, None, 0.95, skipped=why_not))

        print(f"{RTT_MS:g} ms, sandbox switch (context)", flush=True)
        zero = best(
            [
                r
                for r in rows
                if r.latency == "none" and r.scenario.startswith("hve 1 session") and r.messages == args.latency_count
            ]
        )
        context += sandbox_switch_context(sandbox, args, rows, zero.rate)

        print("memory", flush=True)
        small, large = args.memory_counts
        local = sandbox_endpoint(sandbox, "none", 0)
        memory = [peak_memory(sandbox, local, small), peak_memory(sandbox, local, large)]
        targets.append(
            Target(
                f"peak RSS growth, {large:,}-row merge / {small:,}-row merge",
                memory[1]["peak_growth_kib"] / memory[0]["peak_growth_kib"],
                1.5,
                "<=",
            )
        )

    imports = None
    if not args.no_import:
        from report import import_costs

        imports = import_costs()
    # Targets first, then the context ratios (no threshold).
    ordered = [t for t in targets if t.threshold is not None] + [t for t in targets if t.threshold is None] + context
    print_report(rows, ordered, memory, imports, args, resets)
    if args.json:
        write_json(args.json, rows, ordered, memory, imports, args, resets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
