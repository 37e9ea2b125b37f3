"""The alert outbox against the sandbox: alerts HVE could not take are kept, then delivered exactly once.

Every check is on what the sandbox's SMTP server received (Message-IDs, headers, bodies) and on the files the outbox
holds; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_hve.alerts.flush import RAISED_AT_HEADER, flush, flush_until_empty
from airflow_provider_hve.alerts.ids import alert_key, alert_message_id
from airflow_provider_hve.alerts.outbox import KeptAlert, Outbox
from airflow_provider_hve.alerts.send import Kept
from airflow_provider_hve.exceptions import HveAuthError, HveSendError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.notifications.hve import HveNotifier
from airflow_provider_hve.sandbox import DeliveredMessage, HveSandbox
from airflow_provider_hve.sandbox.smtp_server import TEMPORARY_FAILURE
from airflow_provider_hve.utils.email import send_email
from tests import warm

ONCALL = "oncall@contoso.example"
EXAMPLE_DAG = Path(__file__).parent.parent / "example_dags" / "hve_alert_outbox.py"


def _context(task_id: str = "load", try_number: int = 2, state: str = "failed") -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="nightly", task_id=task_id, run_id="scheduled__2026-12-07", map_index=-1, try_number=try_number,
        max_tries=2, state=state,
    )  # fmt: skip
    return {"ti": ti, "run_id": "scheduled__2026-12-07", "exception": ValueError("disk full"), "params": {}}


def _expected_id(task_id: str = "load", try_number: int = 2, event: str = "failure") -> str:
    key = alert_key(
        event=event, dag_id="nightly", run_id="scheduled__2026-12-07", task_id=task_id, map_index=-1,
        try_number=try_number,
    )  # fmt: skip
    return alert_message_id(key, "contoso.example")


def _by_id(sandbox: HveSandbox) -> Counter[str]:
    return Counter(str(m.message["Message-ID"]) for m in sandbox.messages)


def _plain(message: DeliveredMessage) -> str:
    return str(message.message.get_body(("plain",)).get_content())


def _html(message: DeliveredMessage) -> str:
    return str(message.message.get_body(("html",)).get_content())


@pytest.fixture
def outbox(alert_dir: Path) -> Outbox:
    return Outbox(alert_dir / "outbox")


@pytest.fixture
def hve_down(sandbox: HveSandbox) -> Iterator[HveSandbox]:
    """HVE refuses every connection (an outage) until the test calls ``sandbox.smtp.reset_faults()``."""
    sandbox.smtp.refuse_connections(600)
    yield sandbox
    sandbox.smtp.reset_faults()


def _files(outbox: Outbox) -> list[Path]:
    return sorted(p for p in outbox.directory.iterdir() if not p.name.startswith(".tmp-"))


def test_alert_kept_while_hve_refuses_connections_goes_out_once_with_the_next_send(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = hve_down
    hve_connection(send_retries=0)
    previous = os.umask(0)  # the files are 0600 and the folder 0700 whatever the umask
    try:
        with caplog.at_level(logging.WARNING):
            HveNotifier(to=ONCALL)(_context())  # no exception: the alert is kept
    finally:
        os.umask(previous)
    (kept,) = _files(outbox)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(outbox.directory.stat().st_mode) == 0o700
    data = kept.read_bytes()
    token = HveHook().get_access_token()  # the cached token the failed send used
    assert token.encode() not in data and b"Bearer" not in data
    head = json.loads(data.split(b"\n", 1)[0])
    assert head["message_id"] == _expected_id() and head["recipients"] == [ONCALL]
    assert "connection refused" in head["reason"]
    assert any("kept in the outbox" in r.getMessage() for r in caplog.records)
    assert not sandbox.messages

    sandbox.smtp.reset_faults()  # HVE is back
    HveHook().send_email(to="team@contoso.example", subject="Daily report", text_content="rows")
    messages = sandbox.wait_for_messages(2)
    (alert,) = [m for m in messages if m.message["Message-ID"] == _expected_id()]
    assert alert.rcpt_tos == [ONCALL]
    assert alert.message["Subject"] == "[Airflow] nightly.load failed (try 2 of 3)"
    assert alert.message[RAISED_AT_HEADER] and alert.message["X-HVE-Alert-Late-By"].endswith(" s")
    assert _plain(alert).startswith("Raised at ") and " late (HVE could not take it then)." in _plain(alert)
    assert "Raised at " in _html(alert) and "disk full" in _plain(alert)
    assert not _files(outbox)

    HveHook().send_email(to="team@contoso.example", subject="Again", text_content="rows")
    sandbox.wait_for_messages(3)
    time.sleep(0.3)
    assert _by_id(sandbox)[_expected_id()] == 1 and len(sandbox.messages) == 3


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda sb: sb.smtp.disconnect_after(0, times=10), id="421-and-hang-up"),
        pytest.param(lambda sb: sb.smtp.throttle(TEMPORARY_FAILURE, command="content", count=10), id="451-content"),
        pytest.param(lambda sb: sb.smtp.throttle("454 4.7.0 Try later", command="AUTH", count=10), id="454-auth"),
        pytest.param(lambda sb: sb.entra.throttle(20, status=503, retry_after=0), id="token-endpoint-503"),
    ],
)
def test_alert_kept_for_each_temporary_failure_then_delivered_once(
    fault: Callable[[HveSandbox], None],
    hve_connection: Callable[..., str],
    sandbox: HveSandbox,
    outbox: Outbox,
) -> None:
    hve_connection(send_retries=0)
    fault(sandbox)
    HveNotifier(to=ONCALL)(_context())
    assert len(outbox.entries()) == 1 and not sandbox.messages
    sandbox.smtp.reset_faults()
    sandbox.entra.reset_faults()
    report = flush()
    assert report.delivered == 1 and report.left == 0, report.lines
    (alert,) = sandbox.wait_for_messages(1)
    assert alert.message["Message-ID"] == _expected_id()
    assert flush().delivered == 0 and len(sandbox.messages) == 1


@pytest.mark.parametrize(
    ("fault", "error", "reply"),
    [
        pytest.param(
            lambda sb: sb.smtp.refuse_recipient(ONCALL), HveSendError, "550 5.1.10", id="550-recipient-refused"
        ),
        pytest.param(
            lambda sb: sb.smtp.fail_next_data("554 5.6.0 Message rejected", count=5),
            HveSendError,
            "554 5.6.0",
            id="554-content",
        ),
        pytest.param(
            lambda sb: sb.smtp.fail_next_auth("535 5.7.3 Authentication unsuccessful", count=5),
            HveAuthError,
            "535 5.7.3",
            id="535-auth",
        ),
    ],
)
def test_permanent_refusal_is_not_kept_and_is_logged_with_the_reply(
    fault: Callable[[HveSandbox], None],
    error: type[Exception],
    reply: str,
    hve_connection: Callable[..., str],
    sandbox: HveSandbox,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hve_connection(send_retries=0)
    fault(sandbox)
    with caplog.at_level(logging.ERROR), pytest.raises(error):
        HveNotifier(to=ONCALL)(_context())
    assert not outbox.entries()
    (line,) = [r.getMessage() for r in caplog.records if "is not kept" in r.getMessage()]
    assert reply in line and _expected_id() in line


@pytest.mark.parametrize("via", ["flush()", "the CLI"])
def test_email_backend_mail_is_kept_and_flushed(
    via: str, hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox
) -> None:
    sandbox = hve_down
    hve_connection(send_retries=0)
    send_email(to=ONCALL, subject="Task failed", html_content="<p>Try 1 of 3 failed</p>")
    (entry,) = outbox.entries()
    kept = outbox.read(entry)
    assert kept.message_id.startswith("<hve-alert.") and kept.origin == "email backend"
    sandbox.smtp.reset_faults()
    if via == "the CLI":  # `python -m airflow_provider_hve.alerts flush`, Airflow imported already (tests/warm.py)
        done = warm.run_module("airflow_provider_hve.alerts", "flush")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"delivered {kept.message_id} 'Task failed' to {ONCALL}" in done.stdout
        assert "Delivered 1 (possible duplicates 0)" in done.stdout and "0 left in the outbox" in done.stdout
    else:
        assert flush().delivered == 1
    (alert,) = sandbox.wait_for_messages(1)
    assert alert.message["Message-ID"] == kept.message_id
    assert "Raised at " in _html(alert) and "Try 1 of 3 failed" in _html(alert)
    assert not outbox.entries()


def _deadline_alert(deadline_id: str) -> tuple[HveNotifier, dict[str, Any], str]:
    """A Deadline Alert's notifier, rendered for a running DAG run, its context and the Message-ID it must carry."""
    dag_run = {"dag_id": "nightly", "dag_run_id": "scheduled__2026-12-07", "state": "running"}
    context = {"dag_run": dag_run, "deadline": {"id": deadline_id, "deadline_time": None}, "params": {}}
    notifier = HveNotifier(to=ONCALL)
    notifier.render_template_fields(context)
    key = alert_key(event=f"deadline:{deadline_id}", dag_id="nightly", run_id="scheduled__2026-12-07")
    return notifier, context, alert_message_id(key, "contoso.example")


def test_async_notify_keeps_a_deadline_alert(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox
) -> None:
    sandbox = hve_down
    hve_connection(send_retries=0)
    notifier, context, expected = _deadline_alert("0193")
    asyncio.run(notifier.async_notify(context))
    (entry,) = outbox.entries()
    assert outbox.read(entry).message_id == expected
    sandbox.smtp.reset_faults()
    assert flush().delivered == 1
    (alert,) = sandbox.wait_for_messages(1)
    assert alert.message["Message-ID"] == expected
    assert alert.message["Subject"] == "[Airflow] DAG nightly missed its deadline"


def test_the_cap_drops_the_oldest_with_an_error_line(
    hve_connection: Callable[..., str],
    hve_down: HveSandbox,
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sandbox = hve_down
    hve_connection(send_retries=0)
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_OUTBOX_MAX", "3")
    with caplog.at_level(logging.ERROR):
        for n in range(5):
            HveNotifier(to=ONCALL)(_context(task_id=f"task{n}"))
    assert [outbox.read(e).subject for e in outbox.entries()] == [
        f"[Airflow] nightly.task{n} failed (try 2 of 3)" for n in (2, 3, 4)
    ]
    dropped = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert len(dropped) == 2
    for n, line in enumerate(dropped):
        assert "alert_outbox_max" in line and _expected_id(task_id=f"task{n}") in line and "will not be" in line
    sandbox.smtp.reset_faults()
    assert flush().delivered == 3
    sandbox.wait_for_messages(3)
    assert set(_by_id(sandbox)) == {_expected_id(task_id=f"task{n}") for n in (2, 3, 4)}


def _flusher(start: Any, reports: Any) -> None:
    """In a child process: wait for the others, flush, report what this one did."""
    start.wait(120)
    report = flush()
    reports.put({"delivered": report.delivered, "busy": report.busy})


def test_concurrent_flushers_deliver_each_alert_exactly_once(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox
) -> None:
    sandbox = hve_down
    hve_connection(send_retries=0)
    for n in range(40):
        send_email(to=ONCALL, subject=f"Failure {n}", html_content=f"<p>task {n}</p>")
    kept = {outbox.read(e).message_id for e in outbox.entries()}
    assert len(kept) == 40
    sandbox.smtp.reset_faults()
    sandbox.latency_ms = 10  # each delivery takes a while: the four flushers overlap
    # Four processes of their own (Airflow imported already, not forks of this one): they start flushing together.
    start, reports_queue = warm.context().Barrier(5), warm.context().Queue()
    flushers = [warm.start(_flusher, start, reports_queue) for _ in range(4)]
    start.wait(120)
    reports = [reports_queue.get(timeout=240) for _ in flushers]
    for process in flushers:
        done = process.wait(60)
        assert done.returncode == 0, done.stdout + done.stderr
    sandbox.wait_for_messages(40, timeout=10)
    time.sleep(0.3)
    assert _by_id(sandbox) == Counter(dict.fromkeys(kept, 1))
    assert sum(r["delivered"] for r in reports) == 40
    assert sum(1 for r in reports if r["delivered"]) >= 2, reports  # they really shared the work
    assert not outbox.entries()


def test_a_claim_left_by_a_dead_flusher_is_resent_as_a_possible_duplicate(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = hve_down
    hve_connection(send_retries=0)
    HveNotifier(to=ONCALL)(_context(task_id="a"))
    HveNotifier(to=ONCALL)(_context(task_id="b"))
    first, second = outbox.entries()
    # A flusher that died 20 minutes ago after claiming the first; one that is alive now claimed the second.
    os.rename(
        outbox.directory / first.name, outbox.directory / f"{first.name}.claimed~{int(time.time() - 1200) * 1000}~h~1"
    )
    live = Outbox(outbox.directory).claim(second)
    assert live is not None
    sandbox.smtp.reset_faults()
    with caplog.at_level(logging.WARNING):
        report = flush()
    assert report.delivered == 1 and report.possibly_duplicate == 1 and report.busy == 1
    (alert,) = sandbox.wait_for_messages(1)
    assert alert.message["Message-ID"] == _expected_id(task_id="a")
    assert alert.message["X-HVE-Alert-Possible-Duplicate"] == "yes"
    assert any("POSSIBLY A DUPLICATE" in r.getMessage() for r in caplog.records)
    live.delivered()  # the live flusher finishes: nothing is left
    assert not outbox.entries()


@pytest.mark.parametrize("listener", ["off", "misconfigured"])
def test_maintenance_dag_parses_and_delivers_what_was_kept(
    listener: str,
    run_dag: Callable[..., Any],
    parse_dags: Callable[[Any], Any],
    hve_down: HveSandbox,
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broken listener option does not keep the outbox from being flushed; the run shows red for it."""
    sandbox = hve_down
    if listener == "misconfigured":
        monkeypatch.setenv("AIRFLOW__HVE__ALERT_TO", ONCALL)
        monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIGEST_THRESHOLD", "-1")
    bag = parse_dags(EXAMPLE_DAG)
    dag = bag.get_dag("hve_alert_outbox")
    assert not bag.import_errors and dag.max_active_runs == 1
    HveNotifier(to=ONCALL)(_context())
    assert len(outbox.entries()) == 1
    sandbox.smtp.reset_faults()
    dag_run = run_dag(EXAMPLE_DAG, "hve_alert_outbox")
    assert dag_run.state == ("success" if listener == "off" else "failed")
    (alert,) = sandbox.wait_for_messages(1)
    assert alert.message["Message-ID"] == _expected_id()
    assert not outbox.entries()


OUTAGE_SECONDS = float(os.environ.get("HVE_OUTBOX_OUTAGE_SECONDS", "4"))


def test_alert_raised_during_an_outage_arrives_soon_after_hve_returns_once(
    hve_connection: Callable[..., str], sandbox: HveSandbox, outbox: Outbox
) -> None:
    """
    The measured scenario, short: HVE refuses connections for OUTAGE_SECONDS; an alert raised meanwhile is kept; the
    maintenance DAG's loop (here polling every 0.5 s instead of 20) delivers it once, soon after HVE's return.
    ``benchmarks/bench_outbox_outage.py`` runs the 10-minute version with the DAG's own 20 s poll.
    """
    hve_connection(send_retries=0)
    sandbox.smtp.refuse_connections(OUTAGE_SECONDS)
    outage_began = time.monotonic()
    HveNotifier(to=ONCALL)(_context())
    assert len(outbox.entries()) == 1
    returned: list[float] = []

    def watch() -> None:
        while sandbox.smtp.refusing_connections:
            time.sleep(0.02)
        returned.append(time.monotonic())

    watcher = threading.Thread(target=watch)
    watcher.start()
    report = flush_until_empty(seconds=OUTAGE_SECONDS + 30, poll=0.5)
    arrived = time.monotonic()
    watcher.join()
    assert report.delivered == 1 and report.left == 0
    assert returned[0] - outage_began >= OUTAGE_SECONDS - 0.5
    assert arrived - returned[0] < 60  # within a minute of HVE's return (here: one poll)
    assert arrived - returned[0] < 0.5 + 5
    time.sleep(0.3)
    assert _by_id(sandbox) == Counter({_expected_id(): 1})


def test_the_outcome_says_kept(hve_connection: Callable[..., str], hve_down: HveSandbox) -> None:
    """What the listener (and any caller of ``_send``) gets back: the kept alert's Message-ID and file."""
    hve_connection(send_retries=0)
    notifier = HveNotifier(to=ONCALL, subject="Alert", alert_key="ab" * 16)
    notifier.render_template_fields(_context())
    outcome = notifier._send(_context())
    assert isinstance(outcome, Kept) and outcome.message_id == alert_message_id("ab" * 16, "contoso.example")
    assert outcome.path.exists()


def test_a_mail_merge_flushes_what_was_kept_for_its_connection(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox
) -> None:
    from airflow_provider_hve.bulk import MailMerge

    sandbox = hve_down
    hve_connection(send_retries=0)
    HveNotifier(to=ONCALL)(_context())
    sandbox.smtp.reset_faults()
    rows = [{"email": f"reader{n}@contoso.example"} for n in range(3)]
    MailMerge(HveHook(), subject="News", text_content="Hello {{ recipient.email }}", sessions=1).run(rows)
    sandbox.wait_for_messages(4)
    time.sleep(0.3)
    assert _by_id(sandbox)[_expected_id()] == 1 and len(sandbox.messages) == 4
    assert not outbox.entries()


def test_a_maintenance_run_tries_once_more_at_the_end_of_its_time(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox
) -> None:
    """A run stays its whole time while HVE is down (the gap to the next run is the schedule minus keep_trying)."""
    hve_connection(send_retries=0)
    HveNotifier(to=ONCALL)(_context())
    started = time.monotonic()
    report = flush_until_empty(seconds=1.5, poll=5.0)
    assert 1.4 < time.monotonic() - started < 4.0
    assert report.kept == 2 and report.left == 1  # at the start and at the end


# -- issue 17 review: takeover, concurrent writers, cancellation, configuration, interruptions -------------------


def test_a_release_after_a_takeover_does_not_bring_the_alert_back(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """
    Flusher A claims, outlives the claim timeout, B takes it over, then A gives up and releases: A must not put a
    second copy back in the queue (before: it rewrote its claimed name and renamed it back, and the alert went out
    once from that copy and once more from B's claim).
    """
    sandbox = hve_down
    hve_connection(send_retries=0)
    HveNotifier(to=ONCALL)(_context())
    (entry,) = outbox.entries()
    hasty = Outbox(outbox.directory, claim_timeout=0)
    a = hasty.claim(entry)
    assert a is not None
    time.sleep(0.01)
    (stale,) = hasty.entries()
    b = hasty.claim(stale)
    assert b is not None and b.stale
    with caplog.at_level(logging.WARNING):
        a.release("HVE refused the connection")
    assert any("taken over by another flusher" in r.getMessage() for r in caplog.records)
    assert [e.name for e in outbox.entries()] == [b.path.name]  # B's claim only, nothing queued again
    sandbox.smtp.reset_faults()
    assert flush().delivered == 0  # B's claim is B's
    b.release("B gave up too")  # B is the owner: its release queues it again
    assert flush().delivered == 1
    sandbox.wait_for_messages(1)
    time.sleep(0.3)
    assert _by_id(sandbox) == Counter({_expected_id(): 1})
    assert not [p for p in outbox.directory.iterdir()]  # no private copy left behind


KEEPER = """
import sys, time
from email.message import EmailMessage
from airflow_provider_hve.alerts.outbox import KeptAlert, Outbox
message = EmailMessage()
message["From"] = sys.argv[2]
message["To"] = "oncall@contoso.example"
message["Subject"] = "Same alert"
message["Message-ID"] = "<hve-alert.0123@contoso.example>"
message.set_content("disk full")
print("ready", flush=True)
sys.stdin.readline()
alert = KeptAlert(
    message_id="<hve-alert.0123@contoso.example>", conn_id="hve_default", sender=sys.argv[2],
    recipients=("oncall@contoso.example",), subject="Same alert", raised_at=time.time(), origin="HveNotifier",
    reason="connection refused", payload=message.as_bytes(),
)
print(Outbox(sys.argv[1]).keep(alert).name, flush=True)
"""


def test_processes_keeping_the_same_alert_at_once_keep_it_once(
    hve_connection: Callable[..., str], sandbox: HveSandbox, outbox: Outbox
) -> None:
    """Eight processes keep one alert at the same moment: one file, one delivery (before: a file per writer)."""
    hve_connection(send_retries=0)
    keepers = [
        subprocess.Popen(
            [sys.executable, "-c", KEEPER, str(outbox.directory), sandbox.connection()["login"]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        for _ in range(8)
    ]
    for process in keepers:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    for process in keepers:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    names = set()
    for process in keepers:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        names.add(out.strip())
    assert len(_files(outbox)) == 1 and len(names) == 1, names
    (entry,) = outbox.entries()
    # A claimed copy counts as present: keeping the alert again while a flusher delivers it adds nothing.
    claim = outbox.claim(entry)
    assert claim is not None
    again = outbox.keep(replace(claim.alert, raised_at=time.time()))
    assert again == claim.path and len(_files(outbox)) == 1
    claim.release("still down")
    assert flush().delivered == 1
    sandbox.wait_for_messages(1)
    time.sleep(0.3)
    assert _by_id(sandbox) == Counter({"<hve-alert.0123@contoso.example>": 1})


def test_outbox_keeps_oldest_first_by_when_raised(hve_down: HveSandbox, outbox: Outbox) -> None:
    """The order comes from when each alert was raised (the file's time), not from when it was written."""
    made = []
    for n, raised_at in enumerate([3000.0, 1000.0, 2000.0]):
        made.append(
            KeptAlert(
                message_id=f"<hve-alert.{n}@contoso.example>", conn_id="hve_default", sender="a@contoso.example",
                recipients=(ONCALL,), subject=f"n{n}", raised_at=raised_at, origin="HveNotifier", reason="down",
                payload=b"Subject: x\r\n\r\nx\r\n",
            )
        )  # fmt: skip
        outbox.keep(made[-1])
    assert [outbox.read(e).subject for e in outbox.entries()] == ["n1", "n2", "n0"]
    (claimed,) = [e for e in outbox.entries() if outbox.read(e).subject == "n1"]
    claim = outbox.claim(claimed)
    assert claim is not None
    claim.release("still down")  # rewritten: its place in the queue stays
    assert [outbox.read(e).subject for e in outbox.entries()] == ["n1", "n2", "n0"]


def test_a_deadline_alert_cancelled_during_an_outage_is_kept_then_delivered_once(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """
    The triggerer cancels a Deadline Alert while HVE refuses connections (in the backoff after its first attempt):
    no further attempt, but the rendered alert is kept (a local write) and goes out once when HVE is back.
    Before: a cancelled alert was not kept, so an outage that outlived the callback timeout lost it.
    """
    sandbox = hve_down
    hve_connection(send_retries=2)
    notifier, context, expected = _deadline_alert("0194")

    def said(text: str) -> bool:
        return any(text in r.getMessage() for r in list(caplog.records))

    async def cancel_in_backoff() -> None:
        send = asyncio.ensure_future(notifier.async_notify(context))
        deadline = time.monotonic() + 60
        while not said("Sending it again"):
            assert time.monotonic() < deadline, "no first attempt"
            await asyncio.sleep(0.02)
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send

    loop = asyncio.new_event_loop()
    with caplog.at_level(logging.INFO):
        try:
            loop.run_until_complete(cancel_in_backoff())
        finally:
            loop.close()
        deadline = time.monotonic() + 10
        while not outbox.entries():
            assert time.monotonic() < deadline, "the cancelled alert was not kept"
            time.sleep(0.02)
    (entry,) = outbox.entries()
    assert outbox.read(entry).message_id == expected
    assert said("HVE alert cancelled") and said("kept in the outbox")
    sandbox.smtp.reset_faults()
    assert flush().delivered == 1
    sandbox.wait_for_messages(1)
    time.sleep(0.3)
    assert _by_id(sandbox) == Counter({expected: 1})


def test_a_relative_alert_dir_is_refused_and_both_readers_expand_the_same(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow_provider_hve.alerts.config import load_alert_config
    from airflow_provider_hve.alerts.outbox import configured_alert_dir
    from airflow_provider_hve.exceptions import HveConfigError

    monkeypatch.setenv("AIRFLOW__HVE__ALERT_TO", "oncall@contoso.example")  # the listener reads alert_dir when on
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIR", "hve_alerts")
    for read in (configured_alert_dir, Outbox.configured, load_alert_config):
        with pytest.raises(HveConfigError, match=r"\[hve\] alert_dir .*Use an absolute path"):
            read()
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIR", "{AIRFLOW_HOME}/hve_x")
    assert configured_alert_dir().is_absolute()
    assert Path(load_alert_config().alert_dir) == configured_alert_dir()
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIR", "")
    assert Path(load_alert_config().alert_dir) == configured_alert_dir() == configured_alert_dir().parent / "hve_alerts"


class _Interrupted(BaseException):
    """What Airflow's task timeout or SIGTERM handler raises in the middle of whatever runs (not an Exception)."""


def test_an_interrupted_flush_after_a_send_releases_the_alert(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox
) -> None:
    """
    A task timeout lands while the flush after a send delivers a kept alert: the interruption is raised (the task
    was told to stop), and the alert is queued again, not left claimed for ``claim_timeout`` (ten minutes).
    """
    from airflow_provider_hve.alerts.flush import flush_after_send

    sandbox = hve_down
    hve_connection(send_retries=0)
    HveNotifier(to=ONCALL)(_context())
    sandbox.smtp.reset_faults()
    sandbox.latency_ms = 400  # the flush's session takes seconds: the timer fires within it

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted("Timeout, PID: 1")

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.6)
        with pytest.raises(_Interrupted):
            flush_after_send(HveHook())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    (entry,) = outbox.entries()
    assert entry.claimed_ms is None  # queued again, for the next flush
    # Released by the interrupted flush (not merely never claimed because the timer fired before the claim).
    assert outbox.read(entry).reason.startswith("interrupted: _Interrupted")
    sandbox.latency_ms = 0
    assert flush().delivered == 1
    sandbox.wait_for_messages(1)
    time.sleep(0.3)
    assert _by_id(sandbox) == Counter({_expected_id(): 1})


def test_a_partial_send_whose_rest_cannot_be_kept_does_not_fail_the_callback(
    hve_connection: Callable[..., str],
    sandbox: HveSandbox,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HVE takes the alert for one recipient and says 452 for the other; the outbox cannot be written: no raise."""
    hve_connection(send_retries=0)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIR", str(blocker / "alerts"))
    full = "full@contoso.example"
    sandbox.smtp.refuse_recipient(full, "452 4.2.2 Mailbox full")
    with caplog.at_level(logging.ERROR):
        outcome = HveNotifier(to=[ONCALL, full])(_context())
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == [ONCALL]
    (line,) = [r.getMessage() for r in caplog.records if "could not be kept" in r.getMessage()]
    assert full in line and "452 4.2.2" in line and _expected_id() in line
    assert outcome is None or not isinstance(outcome, Kept)


def test_a_credential_refused_at_flush_time_stays_kept_and_is_logged_at_error_with_the_reply(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = hve_down
    hve_connection(send_retries=0)
    HveNotifier(to=ONCALL)(_context())
    sandbox.smtp.reset_faults()
    sandbox.smtp.fail_next_auth("535 5.7.3 Authentication unsuccessful", count=1)
    with caplog.at_level(logging.WARNING):
        report = flush()
    assert report.kept == 1 and report.dropped == 0 and len(outbox.entries()) == 1
    (record,) = [r for r in caplog.records if "REFUSED" in r.getMessage()]
    assert record.levelno == logging.ERROR and "535 5.7.3" in record.getMessage()
    assert flush().delivered == 1  # the credential fixed: delivered


def test_a_release_that_cannot_write_leaves_the_claim_for_a_takeover(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The disk is full when a flusher gives an alert back: the alert stays claimed (another flusher takes it over
    after the claim timeout) instead of living only in a private file that is then deleted (before: lost).
    """
    import errno

    sandbox = hve_down
    hve_connection(send_retries=0)
    HveNotifier(to=ONCALL)(_context())
    (entry,) = outbox.entries()
    claim = outbox.claim(entry)
    assert claim is not None

    def disk_full(data: bytes, raised_at: float) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outbox, "_temporary", disk_full)
    with pytest.raises(OSError, match="No space left"):
        claim.release("HVE refused the connection")
    monkeypatch.undo()
    assert [e.name for e in outbox.entries()] == [claim.path.name], "the claim must stay, whole"
    sandbox.smtp.reset_faults()
    time.sleep(0.01)
    (stale,) = Outbox(outbox.directory, claim_timeout=0).entries()
    taken = Outbox(outbox.directory, claim_timeout=0).claim(stale)
    assert taken is not None and taken.stale and taken.alert.message_id == _expected_id()


def test_an_outbox_on_a_share_without_hard_links_keeps_and_releases_once(
    hve_connection: Callable[..., str], hve_down: HveSandbox, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SMB share (Azure Files) refuses hard links: keeping and releasing fall back to a rename, one file each."""
    import errno

    from airflow_provider_hve.alerts import outbox as outbox_module

    def no_links(source: Any, target: Any) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(outbox_module.os, "link", no_links)
    sandbox = hve_down
    hve_connection(send_retries=0)
    HveNotifier(to=ONCALL)(_context())
    HveNotifier(to=ONCALL)(_context())  # the same alert raised again: still one file
    (entry,) = outbox.entries()
    claim = outbox.claim(entry)
    assert claim is not None
    claim.release("HVE refused the connection")
    assert [e.name for e in outbox.entries()] == [entry.queued_name]
    sandbox.smtp.reset_faults()
    assert flush().delivered == 1
    sandbox.wait_for_messages(1)
    time.sleep(0.3)
    assert _by_id(sandbox) == Counter({_expected_id(): 1})
