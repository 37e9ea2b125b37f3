"""What the bulk benchmark times: the senders (this provider, a bare smtplib loop, apache-airflow-providers-smtp)
and the measurement around them. ``bench_bulk.py`` decides which run where and prints the targets."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUBJECT = "Your statement, {{ recipient.name }}"
HTML = "<p>Dear {{ recipient.name }},</p><p>your balance is <b>{{ recipient.balance }}</b>.</p>"
TEXT = "Dear {{ recipient.name }},\nyour balance is {{ recipient.balance }}."


@dataclass
class Row:
    scenario: str
    server: str  # "sandbox" or "postfix"
    latency: str  # how latency was emulated: "none", "sandbox switch" or "delay proxy"
    rtt_ms: float
    messages: int
    seconds: float
    round_trips_per_message: float | None  # counted by the sandbox; None against Postfix
    token_requests: int | None
    smtp_connections: int | None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


@dataclass
class Endpoint:
    """Where the client connects and how latency is emulated on the way."""

    server: str
    latency: str
    rtt_ms: float
    host: str
    port: int
    ca_bundle: str
    account: str


def sandbox_endpoint(sandbox: Any, latency: str, rtt_ms: float, port: int | None = None) -> Endpoint:
    """The sandbox, straight (``port`` None) or through a proxy listening on 127.0.0.1:``port``."""
    host = "localhost" if port is None else "127.0.0.1"
    return Endpoint("sandbox", latency, rtt_ms, host, port or sandbox.smtp_port, sandbox.ca_bundle, sandbox.account)


def reset_rows(rate: float, reset_after: float, resets: int) -> int:
    """
    Rows for a merge that is still sending when the proxy's last reset comes: a connection of ``reset_after``
    seconds per reset at ``rate``, and as much again to spare (the reconnects pause; the merge also slows down
    after each reset while the window grows again).
    """
    return max(200, int(rate * reset_after * (resets + 1) * 1.5))


def recipients(count: int) -> list[dict[str, Any]]:
    return [{"email": f"user{n:06d}@contoso.example", "name": f"User {n}", "balance": n * 3} for n in range(count)]


def use_connection(sandbox: Any, endpoint: Endpoint, **extra: Any) -> None:
    """Point ``hve_default`` at the endpoint (tokens always come from the sandbox's Entra)."""
    conn = sandbox.connection(**extra)
    conn["host"], conn["port"] = endpoint.host, endpoint.port
    os.environ["AIRFLOW_CONN_HVE_DEFAULT"] = json.dumps(conn)


def measure(
    sandbox: Any, endpoint: Endpoint, scenario: str, count: int, prepare: Callable[[], Callable[[], None]]
) -> Row:
    """Reset the counters, prepare (untimed: e.g. the floor's connection and pre-built messages), time the run.

    Round trips are those of the timed run only; token requests and connections include the preparation.
    Against the sandbox the run counts only once the sandbox holds every message.
    """
    sandbox.reset()
    run = prepare()
    before = sandbox.stats()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    round_trips: float | None = None
    tokens = connections = None
    if endpoint.server == "sandbox":
        delivered = sandbox.wait_for_messages(count, timeout=60)
        if delivered < count:
            raise SystemExit(f"{scenario}: only {delivered} of {count} messages arrived")
        stats = sandbox.stats()
        round_trips = (stats.smtp_round_trips - before.smtp_round_trips) / count
        tokens, connections = stats.token_posts, stats.smtp_sessions
    row = Row(
        scenario, endpoint.server, endpoint.latency, endpoint.rtt_ms, count, seconds, round_trips, tokens, connections
    )
    trips = "" if round_trips is None else f", {round_trips:.2f} round trips/msg"
    print(
        f"  {scenario:<28} {endpoint.server:>7} {endpoint.latency:>14} {endpoint.rtt_ms:>3g} ms  {count:>6} msgs  "
        f"{row.rate:8,.0f} msg/s{trips}",
        flush=True,
    )
    return row


def run_hve(
    sandbox: Any, endpoint: Endpoint, count: int, sessions: int, window: int | None, *, durable_log: bool = False
) -> Callable[[], None]:
    """A mail merge; with ``durable_log``, its delivery log (write-ahead) in a fresh :class:`SqliteStore`."""
    from airflow_provider_hve.auth import clear_token_providers
    from airflow_provider_hve.bulk import MailMerge, TaskStateDeliveryLog
    from airflow_provider_hve.hooks.hve import HveHook

    extra = {} if window is None else {"bdat_window": window}
    use_connection(sandbox, endpoint, **extra)
    rows = recipients(count)
    log = TaskStateDeliveryLog(SqliteStore(tempfile.mkdtemp(prefix="hve-bench-log-") + "/state.sqlite"), "merge")

    def run() -> None:
        clear_token_providers()
        merge = MailMerge(
            HveHook(),
            subject=SUBJECT,
            html_content=HTML,
            text_content=TEXT,
            sessions=sessions,
            progress_interval=1e9,
            delivery_log=log if durable_log else None,
        )
        report = merge.run(rows)
        assert report.accepted == count, report.as_dict()

    return run


@dataclass
class ResetRun:
    """A one-session merge through a proxy that reset its connection: what the merge's report says."""

    rows: int
    seconds: float
    accepted: int
    unknown: int  # rows the report calls unknown: handed over, no final reply before the connection broke
    reconnects: int
    resets: int  # resets the proxy reported

    @property
    def unknown_per_reset(self) -> float | None:
        return self.unknown / self.resets if self.resets else None


def run_hve_through_resets(
    sandbox: Any, endpoint: Endpoint, count: int, proxy: Any, window: int | None = None
) -> ResetRun:
    """A one-session merge of ``count`` rows through ``proxy``, which resets connections; ``window``: the
    ``bdat_window`` extra (default: none, the default cap).

    Nothing is waited for at the server: a message whose reply the reset dropped may or may not have arrived.
    """
    from airflow_provider_hve.auth import clear_token_providers
    from airflow_provider_hve.bulk import MailMerge
    from airflow_provider_hve.hooks.hve import HveHook

    use_connection(sandbox, endpoint, **({} if window is None else {"bdat_window": window}))
    rows = recipients(count)
    sandbox.reset()
    clear_token_providers()
    merge = MailMerge(
        HveHook(), subject=SUBJECT, html_content=HTML, text_content=TEXT, sessions=1, progress_interval=1e9
    )
    started = time.perf_counter()
    report = merge.run(rows)
    seconds = time.perf_counter() - started
    run = ResetRun(count, seconds, report.accepted, len(report.unknown), report.reconnects, proxy.resets_done)
    label = "hve 1 session, resets" + ("" if window is None else f" W={window}")
    print(
        f"  {label:<28} {endpoint.server:>7} {endpoint.latency:>14} {endpoint.rtt_ms:>3g} ms  "
        f"{count:>6} rows  {run.accepted} accepted, {run.unknown} unknown, {run.resets} resets, "
        f"{run.reconnects} reconnects",
        flush=True,
    )
    return run


class SqliteStore:
    """
    ``task_state_store``'s get / set on a SQLite file, each set a committed transaction (synced to disk): a
    stand-in for the metadata database a real task writes to (over the API server on Airflow 3, the ORM on 2).
    """

    def __init__(self, path: str) -> None:
        import sqlite3

        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT)")
        self.writes = 0

    def get(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))
        self.writes += 1

    def delete(self, key: str) -> None:
        self._db.execute("DELETE FROM state WHERE key = ?", (key,))


def run_bare_smtplib(sandbox: Any, endpoint: Endpoint, count: int) -> Callable[[], None]:
    """The floor: messages built before timing, one connection authenticated before timing, ``sendmail`` each."""
    from email.message import EmailMessage

    from airflow_provider_hve.auth import clear_token_providers
    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.smtp import ehlo_name, tls_context, xoauth2_string

    payloads = []
    for row in recipients(count):
        message = EmailMessage()
        message["From"] = endpoint.account
        message["To"] = row["email"]
        message["Subject"] = f"Your statement, {row['name']}"
        message.set_content(f"Dear {row['name']},\nyour balance is {row['balance']}.")
        payloads.append((row["email"], message.as_bytes()))
    use_connection(sandbox, endpoint)
    clear_token_providers()
    token = HveHook().get_access_token()
    client = smtplib.SMTP(endpoint.host, endpoint.port, timeout=60, local_hostname="localhost")
    client.local_hostname = ehlo_name(client.sock)  # Postfix refuses a bare host name in EHLO
    client.ehlo()
    client.starttls(context=tls_context(endpoint.ca_bundle))
    client.ehlo()
    client.auth("XOAUTH2", lambda _=None: xoauth2_string(endpoint.account, token), initial_response_ok=False)

    def run() -> None:
        for address, payload in payloads:
            client.sendmail(endpoint.account, [address], payload)
        client.quit()

    return run


def run_smtp_provider(sandbox: Any, count: int) -> Callable[[], None]:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    rows = recipients(count)

    def run() -> None:
        with msal_pointed_at(sandbox):
            for row in rows:
                # What EmailOperator does for every message: a new hook, a new MSAL app, a new connection.
                with SmtpHook(smtp_conn_id="bench_smtp", auth_type="oauth2") as hook:
                    hook.send_email_smtp(
                        to=row["email"],
                        subject=f"Your statement, {row['name']}",
                        html_content=f"<p>Dear {row['name']},</p><p>your balance is <b>{row['balance']}</b>.</p>",
                    )

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


def configure_smtp_provider(sandbox: Any) -> None:
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


def peak_memory(sandbox: Any, endpoint: Endpoint, count: int) -> dict[str, float]:
    """Memory of a one-session merge of ``count`` rows sending to the sandbox, in a fresh interpreter.

    See :func:`memory_child`; the connection reaches the child through ``AIRFLOW_CONN_HVE_DEFAULT``.
    """
    use_connection(sandbox, endpoint)
    sandbox.reset()
    script = Path(__file__).resolve().parent / "bench_bulk.py"
    out = subprocess.run(
        [sys.executable, str(script), "--memory-child", str(count)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"the {count}-row memory run failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def memory_child(count: int) -> None:
    """Print, as JSON, how much the peak RSS of this process grows while a merge of ``count`` rows runs.

    Run in a fresh interpreter (``bench_bulk.py --memory-child N``). The rows (a list of dicts:
    ``MailMerge.run`` takes a sequence) are built, the modules imported and the hook created first; then the
    kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and the merge runs. Measured: peak RSS (VmHWM)
    minus RSS just before the run: what the merge allocates at its peak, plus allocator slack; not the rows.
    No tracemalloc: it slows the merge several times over.
    """
    from airflow_provider_hve.auth import clear_token_providers
    from airflow_provider_hve.bulk import MailMerge
    from airflow_provider_hve.hooks.hve import HveHook

    rows = recipients(count)
    clear_token_providers()
    merge = MailMerge(
        HveHook(), subject=SUBJECT, html_content=HTML, text_content=TEXT, sessions=1, progress_interval=1e9
    )
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_kib("VmRSS")
    started = time.perf_counter()
    report = merge.run(rows)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    assert report.accepted == count, report.as_dict()
    print(
        json.dumps({"rows": count, "rss_before_kib": baseline, "peak_growth_kib": peak - baseline, "seconds": seconds})
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")
