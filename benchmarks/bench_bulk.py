"""Bulk sending benchmark: this provider against the alternatives, in one run, against the local sandbox.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_bulk.py --help``). The sandbox runs in a
child process (its own GIL) and emulates network latency per round trip (``--latencies``, ms). For each
latency, side by side:

* ``hve 1 session`` / ``hve N sessions``: :class:`~airflow_provider_hve.bulk.MailMerge`, personalised
  subject, HTML and text per recipient, one token, pipelined sessions;
* ``smtp provider``: what users have today, apache-airflow-providers-smtp's ``SmtpHook(auth_type="oauth2")``
  used once per message the way ``EmailOperator`` does. Its MSAL authority is hard-coded to
  login.microsoftonline.com: the benchmark wraps ``msal.ConfidentialClientApplication`` to point it at the
  sandbox (nothing else of the provider is changed);
* ``bare smtplib``: the floor, one pre-authenticated connection and messages built before timing.

Slow alternatives are measured on a sample (``--sample``) and reported as rates; the table says how many
messages each row measured. Reported: messages/second, SMTP round trips per message (counted by the
server), token requests, SMTP connections, and the ratios the project targets. Then peak Python memory of a
merge of 1,000 and 10,000 rows (tracemalloc, untimed), and the import cost of the operator modules in fresh
interpreters (DAG parse cost).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

SUBJECT = "Your statement, {{ recipient.name }}"
HTML = "<p>Dear {{ recipient.name }},</p><p>your balance is <b>{{ recipient.balance }}</b>.</p>"
TEXT = "Dear {{ recipient.name }},\nyour balance is {{ recipient.balance }}."


@dataclass
class Row:
    scenario: str
    latency_ms: float
    messages: int
    seconds: float
    round_trips_per_message: float
    token_requests: int
    smtp_connections: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def recipients(count: int) -> list[dict[str, Any]]:
    return [{"email": f"user{n:05d}@contoso.example", "name": f"User {n}", "balance": n * 3} for n in range(count)]


def measure(sandbox: Any, scenario: str, latency: float, count: int, prepare: Callable[[], Callable[[], None]]) -> Row:
    """Reset the counters, prepare (untimed: e.g. the floor's connection and pre-built messages), time the run.

    Round trips are those of the timed run only; token requests and connections include the preparation.
    """
    sandbox.reset()
    run = prepare()
    before = sandbox.stats()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    delivered = sandbox.wait_for_messages(count, timeout=60)
    stats = sandbox.stats()
    if delivered < count:
        raise SystemExit(f"{scenario}: only {delivered} of {count} messages arrived")
    return Row(
        scenario=scenario,
        latency_ms=latency,
        messages=count,
        seconds=seconds,
        round_trips_per_message=(stats.smtp_round_trips - before.smtp_round_trips) / count,
        token_requests=stats.token_posts,
        smtp_connections=stats.smtp_sessions,
    )


def run_hve(count: int, sessions: int) -> Callable[[], None]:
    from airflow_provider_hve.auth import clear_token_providers
    from airflow_provider_hve.bulk import MailMerge
    from airflow_provider_hve.hooks.hve import HveHook

    rows = recipients(count)

    def run() -> None:
        clear_token_providers()
        merge = MailMerge(
            HveHook(), subject=SUBJECT, html_content=HTML, text_content=TEXT, sessions=sessions, progress_interval=1e9
        )
        report = merge.run(rows)
        assert report.accepted == count, report.as_dict()

    return run


def run_smtp_provider(sandbox: Any, count: int) -> Callable[[], None]:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    rows = recipients(count)

    def run() -> None:
        with msal_pointed_at(sandbox):
            send_all()

    def send_all() -> None:
        for row in rows:
            # What EmailOperator does for every message: a new hook, a new MSAL app, a new connection.
            with SmtpHook(smtp_conn_id="bench_smtp", auth_type="oauth2") as hook:
                hook.send_email_smtp(
                    to=row["email"],
                    subject=f"Your statement, {row['name']}",
                    html_content=f"<p>Dear {row['name']},</p><p>your balance is <b>{row['balance']}</b>.</p>",
                )

    return run


def run_bare_smtplib(sandbox: Any, count: int) -> Callable[[], None]:
    from email.message import EmailMessage

    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.smtp import tls_context, xoauth2_string

    payloads = []
    for row in recipients(count):  # built before timing: the floor does no work per message
        message = EmailMessage()
        message["From"] = sandbox.account
        message["To"] = row["email"]
        message["Subject"] = f"Your statement, {row['name']}"
        message.set_content(f"Dear {row['name']},\nyour balance is {row['balance']}.")
        payloads.append((row["email"], message.as_bytes()))
    token = HveHook().get_access_token()
    client = smtplib.SMTP("localhost", sandbox.smtp_port, timeout=30)
    client.ehlo()
    client.starttls(context=tls_context(sandbox.ca_bundle))
    client.ehlo()
    client.auth("XOAUTH2", lambda _=None: xoauth2_string(sandbox.account, token), initial_response_ok=False)

    def run() -> None:
        for address, payload in payloads:
            client.sendmail(sandbox.account, [address], payload)
        client.quit()

    return run


@contextlib.contextmanager
def msal_pointed_at(sandbox: Any) -> Iterator[None]:
    """Make apache-airflow-providers-smtp's hard-coded MSAL authority use the sandbox (benchmark only)."""
    import msal
    import requests

    original = msal.ConfidentialClientApplication
    session_ca = sandbox.ca_bundle

    class SandboxAuthority(original):  # type: ignore[misc, valid-type]
        def __init__(self, client_id: str, client_credential: Any = None, authority: Any = None, **kwargs: Any):
            http = requests.Session()
            http.verify = session_ca
            http.trust_env = False
            super().__init__(
                client_id,
                client_credential=client_credential,
                authority=sandbox.authority,
                instance_discovery=False,
                http_client=http,
                **kwargs,
            )

    msal.ConfidentialClientApplication = SandboxAuthority  # type: ignore[misc]
    try:
        yield
    finally:
        msal.ConfidentialClientApplication = original  # type: ignore[misc]


def configure(sandbox: Any) -> None:
    os.environ["AIRFLOW_CONN_HVE_DEFAULT"] = sandbox.connection_json()
    conn = sandbox.connection()
    os.environ["AIRFLOW_CONN_BENCH_SMTP"] = json.dumps(
        {
            "conn_type": "smtp",
            "host": "localhost",
            "port": sandbox.smtp_port,
            "login": sandbox.account,
            "extra": {
                "client_id": conn["extra"]["client_id"],
                "client_secret": conn["password"],
                "tenant_id": conn["extra"]["tenant_id"],
                "scope": "https://outlook.office365.com/.default",
                "from_email": sandbox.account,
                "disable_ssl": True,
                "retry_limit": 0,
            },
        }
    )
    # The SMTP provider's STARTTLS context uses the default trust store: add the sandbox CA there.
    os.environ["SSL_CERT_FILE"] = sandbox.ca_bundle


def peak_memory(count: int) -> int:
    from airflow_provider_hve.auth import clear_token_providers
    from airflow_provider_hve.bulk import MailMerge
    from airflow_provider_hve.hooks.hve import HveHook

    rows = recipients(count)
    clear_token_providers()
    merge = MailMerge(
        HveHook(), subject=SUBJECT, html_content=HTML, text_content=TEXT, sessions=1, progress_interval=1e9
    )
    tracemalloc.start()
    merge.run(rows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def import_seconds(modules: list[str], runs: int) -> dict[str, tuple[float, float]]:
    """Median (total, own) import seconds per module in fresh interpreters, runs interleaved.

    ``total`` includes Airflow's Task SDK, which any DAG file imports anyway; ``own`` is what the module adds
    once ``airflow.sdk`` is imported.
    """
    code = (
        "import time; t0 = time.perf_counter(); import airflow.sdk; t1 = time.perf_counter(); import {m}; "
        "t2 = time.perf_counter(); print(t2 - t0, t2 - t1)"
    )
    samples: dict[str, list[tuple[float, float]]] = {m: [] for m in modules}
    for _ in range(runs):
        for module in modules:
            out = subprocess.run(
                [sys.executable, "-c", code.format(m=module)], capture_output=True, text=True, check=True
            )
            total, own = out.stdout.strip().splitlines()[-1].split()
            samples[module].append((float(total), float(own)))
    return {m: (statistics.median(t for t, _ in s), statistics.median(o for _, o in s)) for m, s in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1000,10000", help="messages per run of this provider")
    parser.add_argument("--latencies", default="0,20", help="emulated latency per round trip, ms")
    parser.add_argument("--sessions", type=int, default=4, help="sessions for the parallel run")
    parser.add_argument("--sample", type=int, default=300, help="messages measured for the slow alternatives")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    latencies = [float(x) for x in args.latencies.split(",")]

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hve-bench-airflow-"))
    from airflow_provider_hve.sandbox.process import SandboxProcess

    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    rows: list[Row] = []
    results: dict[str, Any] = {"rows": [], "ratios": [], "memory": {}, "import": {}}
    mailbox = tempfile.mkdtemp(prefix="hve-bench-mailbox-")
    for latency in latencies:
        with SandboxProcess(latency_ms=latency, mailbox_dir=mailbox) as sandbox:
            configure(sandbox)
            sample = min(args.sample, min(counts))
            base = {
                "smtp": measure(
                    sandbox, "smtp provider", latency, sample, lambda n=sample: run_smtp_provider(sandbox, n)
                ),
                "bare": measure(
                    sandbox, "bare smtplib", latency, sample, lambda n=sample: run_bare_smtplib(sandbox, n)
                ),
            }
            rows += base.values()
            for count in counts:
                one = measure(sandbox, "hve 1 session", latency, count, lambda c=count: run_hve(c, 1))
                many = measure(
                    sandbox, f"hve {args.sessions} sessions", latency, count, lambda c=count: run_hve(c, args.sessions)
                )
                rows += [one, many]
                results["ratios"].append(
                    {
                        "latency_ms": latency,
                        "messages": count,
                        "hve1_vs_smtp_provider": one.rate / base["smtp"].rate,
                        "hve1_vs_bare": one.rate / base["bare"].rate,
                        f"hve{args.sessions}_vs_hve1": many.rate / one.rate,
                    }
                )
            if latency == latencies[0]:
                results["memory"] = {str(c): peak_memory(c) for c in counts}

    print()
    print("| scenario | latency ms | messages | msg/s | round trips/msg | token requests | SMTP connections |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.scenario} | {row.latency_ms:g} | {row.messages} | {row.rate:,.0f} | "
            f"{row.round_trips_per_message:.2f} | {row.token_requests} | {row.smtp_connections} |"
        )
    print()
    print(
        "| latency ms | messages | hve 1 session / smtp provider | hve 1 session / bare smtplib | "
        f"hve {args.sessions} sessions / hve 1 session |"
    )
    print("|---:|---:|---:|---:|---:|")
    for ratio in results["ratios"]:
        values = list(ratio.values())
        print(f"| {values[0]:g} | {values[1]} | {values[2]:.1f}x | {values[3]:.2f}x | {values[4]:.2f}x |")
    print()
    for count, peak in results["memory"].items():
        print(f"peak traced memory of a {int(count):,}-row merge (1 session): {peak / 1024:,.0f} KiB")
    ours_mod, theirs_mod = "airflow_provider_hve.operators.hve", "airflow.providers.smtp.operators.smtp"
    imports = import_seconds([ours_mod, theirs_mod], 7)
    (ours_total, ours_own), (theirs_total, theirs_own) = imports[ours_mod], imports[theirs_mod]
    results["import"] = {
        "ours_total_s": ours_total,
        "ours_own_s": ours_own,
        "smtp_provider_total_s": theirs_total,
        "smtp_provider_own_s": theirs_own,
        "own_ratio": ours_own / theirs_own,
    }
    print(
        f"import in a fresh interpreter (median of 7, interleaved): our operator module {ours_own * 1000:.0f} ms "
        f"on top of airflow.sdk ({ours_total * 1000:.0f} ms in all), the SMTP provider's {theirs_own * 1000:.0f} ms "
        f"({theirs_total * 1000:.0f} ms in all): ratio {ours_own / theirs_own:.2f}"
    )
    results["rows"] = [{**asdict(r), "rate": r.rate} for r in rows]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
