"""The deployment-wide alert listener, its hooks called as Airflow calls them, against the sandbox.

Task instances are plain objects with the attributes Airflow's listener hooks hand over (state ``failed`` or
``up_for_retry`` set before the hook, as on 2.11 and 3.x); what is asserted is what the sandbox received. Only the
clock is faked, where a test needs minutes to pass. The real scheduler runs in tests/test_alert_listener_e2e.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_hve.alerts import mail
from airflow_provider_hve.alerts.config import AlertConfig, load_alert_config
from airflow_provider_hve.alerts.digest import flush_digests
from airflow_provider_hve.alerts.ids import alert_key, alert_message_id
from airflow_provider_hve.alerts.listener import HveAlertListener
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.records import DeliveredMessage
from tests import warm

ONCALL = "oncall@contoso.example"


class FakeClock:
    """Seconds since the epoch that a test moves forward."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def ti(
    state: str = "failed", *, dag_id: str = "etl", task_id: str = "load", run_id: str = "run_1", try_number: int = 2
) -> Any:
    return SimpleNamespace(
        dag_id=dag_id,
        task_id=task_id,
        run_id=run_id,
        map_index=-1,
        try_number=try_number,
        max_tries=1,
        state=state,
        hostname="worker-1",
        log_url=f"http://airflow.example/dags/{dag_id}/runs/{run_id}/tasks/{task_id}",
        task=SimpleNamespace(email=None, owner="airflow"),
    )


@pytest.fixture
def alerts(tmp_path: Any, hve_connection: Callable[..., str]) -> Iterator[Callable[..., HveAlertListener]]:
    """Return ``make(**config)``: a listener sending inline through the sandbox, its journal under tmp_path."""
    hve_connection()
    mail.sender_domain.cache_clear()

    def make(clock: Callable[[], float] = time.time, **options: Any) -> HveAlertListener:
        options.setdefault("to", (ONCALL,))
        config = AlertConfig(alert_dir=str(tmp_path / "hve_alerts"), **options)
        return HveAlertListener(config, clock=clock, background=False)

    yield make
    mail.sender_domain.cache_clear()


def domain(sandbox: HveSandbox) -> str:
    return str(sandbox.connection()["login"]).rpartition("@")[2]


def test_without_recipients_the_listener_does_nothing(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox, tmp_path: Any
) -> None:
    listener = alerts(to=())
    listener.on_task_instance_failed(previous_state="running", task_instance=ti(), error=ValueError("x"))
    listener.on_dag_run_failed(dag_run=SimpleNamespace(dag_id="etl", run_id="run_1"), msg="task_failure")
    assert not sandbox.messages
    assert not (tmp_path / "hve_alerts").exists()


def test_final_try_only_then_threaded_follow_ups_and_recovered(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox
) -> None:
    listener = alerts(recovered=True)
    listener.on_task_instance_failed(
        previous_state="running", task_instance=ti("up_for_retry", try_number=1), error=ValueError("flaky")
    )
    assert not sandbox.messages, "a try that will be retried is not mailed by default"

    listener.on_task_instance_failed(previous_state="running", task_instance=ti(), error=ValueError("disk <full>"))
    (first,) = sandbox.wait_for_messages(1)
    key = alert_key(event="failure", dag_id="etl", run_id="run_1", task_id="load", map_index=-1, try_number=2)
    first_id = alert_message_id(key, domain(sandbox))
    assert first.rcpt_tos == [ONCALL]
    assert first.message["Message-ID"] == first_id
    assert first.message["Subject"] == "[Airflow] etl.load failed (try 2 of 2)"
    assert "In-Reply-To" not in first.message
    assert "disk &lt;full&gt;" in first.message.get_body(("html",)).get_content()

    # The next run fails too: a follow-up under the first alert.
    listener.on_task_instance_failed(previous_state="running", task_instance=ti(run_id="run_2"), error=None)
    second = sandbox.wait_for_messages(2)[1]
    assert second.message["In-Reply-To"] == first_id and second.message["References"] == first_id

    # The run after succeeds: "recovered", in the same thread.
    listener.on_task_instance_success(previous_state="running", task_instance=ti("success", run_id="run_3"))
    recovered = sandbox.wait_for_messages(3)[2]
    assert recovered.message["Subject"] == "[Airflow] etl.load recovered"
    assert recovered.message["In-Reply-To"] == first_id
    assert "run_3" in recovered.message.get_body(("html",)).get_content()

    # Closed: the next failure starts a new thread, and a success without an open thread sends nothing.
    listener.on_task_instance_success(previous_state="running", task_instance=ti("success", run_id="run_4"))
    listener.on_task_instance_failed(previous_state="running", task_instance=ti(run_id="run_5"), error=None)
    fourth = sandbox.wait_for_messages(4)[3]
    assert "In-Reply-To" not in fourth.message
    time.sleep(0.3)
    assert len(sandbox.messages) == 4


def test_retries_alert_when_asked_and_dag_runs_alert(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox
) -> None:
    listener = alerts(on_retry=True)
    listener.on_task_instance_failed(
        previous_state="running", task_instance=ti("up_for_retry", try_number=1), error=None
    )
    listener.on_dag_run_failed(dag_run=SimpleNamespace(dag_id="etl", run_id="run_1"), msg="task_failure")
    retry, dag = sandbox.wait_for_messages(2)
    assert retry.message["Subject"] == "[Airflow] etl.load failed and will be retried (try 1 of 2)"
    assert dag.message["Subject"] == "[Airflow] DAG etl failed"
    assert "run_1" in dag.message.get_body(("html",)).get_content()


def test_dag_patterns_and_routing_to_the_task_email(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox
) -> None:
    listener = alerts(dags_include=("etl_*",), dags_exclude=("*_sandbox",), route_to_task_email=True)
    listener.on_task_instance_failed(previous_state="running", task_instance=ti(dag_id="billing"), error=None)
    listener.on_task_instance_failed(previous_state="running", task_instance=ti(dag_id="etl_sandbox"), error=None)
    owned = ti(dag_id="etl_daily")
    owned.task = SimpleNamespace(email="team-etl@contoso.example", owner="airflow")
    listener.on_task_instance_failed(previous_state="running", task_instance=owned, error=None)
    by_owner = ti(dag_id="etl_hourly")
    by_owner.task = SimpleNamespace(email=None, owner="owner@contoso.example")
    listener.on_task_instance_failed(previous_state="running", task_instance=by_owner, error=None)
    first, second = sandbox.wait_for_messages(2)
    time.sleep(0.3)
    assert len(sandbox.messages) == 2, [m.message["Subject"] for m in sandbox.messages]
    assert first.rcpt_tos == ["team-etl@contoso.example"] and "etl_daily" in first.message["Subject"]
    assert second.rcpt_tos == ["owner@contoso.example"]


def test_a_broken_task_instance_never_raises_into_airflow(
    alerts: Callable[..., HveAlertListener], caplog: pytest.LogCaptureFixture
) -> None:
    listener = alerts()
    listener.on_task_instance_failed(previous_state="running", task_instance=object(), error=None)
    assert "HVE alert listener: the task failure alert failed; Airflow carries on" in caplog.text


def _digest_failures(message: DeliveredMessage) -> list[str]:
    html = message.message.get_body(("html",)).get_content()
    return re.findall(r"<td>(etl_storm)</td><td>(t\d+)</td><td>(storm_run)</td>", html) and [
        task for _, task, _ in re.findall(r"<td>(etl_storm)</td><td>(t\d+)</td><td>(storm_run)</td>", html)
    ]


@pytest.mark.timeout(180)
def test_a_thousand_failures_in_five_minutes_are_at_most_five_mails(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox
) -> None:
    """The issue's measure: 1,000 failures within 5 minutes, digests on (N=3, M=5): <= 5 mails, none missing."""
    clock = FakeClock()
    listener = alerts(clock=clock, digest_threshold=3, digest_window_minutes=5)
    started = time.monotonic()
    for n in range(1000):
        clock.now = 1_800_000_000.0 + n * 0.299  # spread over 299 s
        failed = ti(dag_id="etl_storm", task_id=f"t{n}", run_id="storm_run")
        listener.on_task_instance_failed(previous_state="running", task_instance=failed, error=RuntimeError("boom"))
    fired = time.monotonic() - started
    assert len(sandbox.wait_for_messages(3)) == 3
    time.sleep(0.3)
    assert len(sandbox.messages) == 3, "the digest waits for its window to end"
    assert flush_digests(config=listener.config, clock=clock) == 0, "not due before its window ends"

    clock.now = 1_800_000_000.0 + 301  # the window of the first collected failure has ended; nothing else fails
    assert flush_digests(config=listener.config, clock=clock) == 1
    received = sandbox.wait_for_messages(4)
    time.sleep(0.3)
    singles, digest = received[:3], received[3]
    listed = [m.message["Subject"].split(".")[1].split()[0] for m in singles] + _digest_failures(digest)
    print(f"1000 listener events in {fired:.1f} s -> {len(sandbox.messages)} mails, {len(listed)} failures listed")
    assert len(sandbox.messages) == 4 <= 5
    assert sorted(listed) == sorted(f"t{n}" for n in range(1000)), "each failure listed exactly once"
    assert digest.message["Subject"].startswith("[Airflow] 997 failure alert(s) in 5 min (digest since ")
    assert (
        "http://airflow.example/dags/etl_storm/runs/storm_run/tasks/t999"
        in digest.message.get_body(("html",)).get_content()
    )
    assert flush_digests(config=listener.config, clock=clock) == 0, "sent once"


def test_the_next_alert_after_the_window_sends_the_digest(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox
) -> None:
    clock = FakeClock()
    listener = alerts(clock=clock, digest_threshold=1, digest_window_minutes=1)
    for n in range(3):
        clock.now += 1
        listener.on_task_instance_failed(previous_state="running", task_instance=ti(task_id=f"t{n}"), error=None)
    clock.now += 59.5  # the digest started with t1, 60.5 s ago: its window has ended
    listener.on_task_instance_failed(previous_state="running", task_instance=ti(task_id="t3"), error=None)
    single, digest = sandbox.wait_for_messages(2)[:2]
    time.sleep(0.3)
    # t3 arrives 59.5 s after t2, within the window of one alert: collected into the next digest, not mailed alone.
    assert len(sandbox.messages) == 2
    assert "etl.t0" in single.message["Subject"]
    html = digest.message.get_body(("html",)).get_content()
    assert "<td>t1</td>" in html and "<td>t2</td>" in html and "<td>t3</td>" not in html


def _fire(alert_dir: str, conn_json: str, worker: int, count: int) -> None:
    os.environ["AIRFLOW_CONN_HVE_DEFAULT"] = conn_json
    config = AlertConfig(to=(ONCALL,), alert_dir=alert_dir, digest_threshold=3, digest_window_minutes=60)
    listener = HveAlertListener(config, background=False)
    for n in range(count):
        failed = ti(dag_id="etl_storm", task_id=f"t{worker * count + n}", run_id="storm_run")
        listener.on_task_instance_failed(previous_state="running", task_instance=failed, error=None)


@pytest.mark.timeout(180)
def test_processes_share_one_journal(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox, tmp_path: Any
) -> None:
    """Four processes fail 100 tasks each at once: 3 alerts, one digest with the other 397, nothing twice."""
    listener = alerts(digest_threshold=3, digest_window_minutes=60)
    alert_dir = listener.config.alert_dir
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_fire, args=(alert_dir, sandbox.connection_json(), w, 100)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert flush_digests(force=True, config=listener.config) == 1
    received = sandbox.wait_for_messages(4)
    time.sleep(0.3)
    assert len(sandbox.messages) == 4
    listed = [m.message["Subject"].split(".")[1].split()[0] for m in received[:3]] + _digest_failures(received[3])
    assert sorted(listed) == sorted(f"t{n}" for n in range(400))


def test_journal_is_private_from_the_first_byte(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox, tmp_path: Any
) -> None:
    old = os.umask(0)
    try:
        listener = alerts(digest_threshold=1)
        for n in range(2):
            listener.on_task_instance_failed(previous_state="running", task_instance=ti(task_id=f"t{n}"), error=None)
    finally:
        os.umask(old)
    journal = tmp_path / "hve_alerts" / "journal"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "hve_alerts").stat().st_mode) == 0o700
    files = list(journal.iterdir())
    assert {f.name for f in files} >= {"lock", "state.json", "pending.jsonl"}
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), [(f, oct(f.stat().st_mode)) for f in files]


def test_options_come_from_airflow_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_TO", "a@contoso.example, b@contoso.example")
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DAGS_EXCLUDE", "tmp_*")
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_ON_RETRY", "True")
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIGEST_WINDOW_MINUTES", "0.5")
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIR", "{AIRFLOW_HOME}/alerts")
    config = load_alert_config()
    assert config.to == ("a@contoso.example", "b@contoso.example")
    assert config.on_retry and not config.recovered and config.digest_threshold == 3
    assert config.window_seconds == 30
    assert not config.wants_dag("tmp_x") and config.wants_dag("etl")
    assert config.alert_dir == os.path.join(os.environ["AIRFLOW_HOME"], "alerts")
    monkeypatch.delenv("AIRFLOW__HVE__ALERT_TO")
    assert not load_alert_config().enabled


def test_the_plugin_is_registered_through_the_entry_point() -> None:
    from importlib.metadata import entry_points

    from airflow_provider_hve.alerts.plugin import HveAlertsPlugin

    (entry,) = [e for e in entry_points(group="airflow.plugins") if e.name == "hve_alerts"]
    assert entry.load() is HveAlertsPlugin
    assert HveAlertsPlugin.listeners and isinstance(HveAlertsPlugin.listeners[0], HveAlertListener)


def test_a_success_without_an_open_thread_leaves_the_journal_alone(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox, tmp_path: Any
) -> None:
    """Every task success of the deployment reaches the listener: most change nothing, and write nothing."""
    listener = alerts(recovered=True)
    listener.on_task_instance_failed(previous_state="running", task_instance=ti(), error=None)
    state = tmp_path / "hve_alerts" / "journal" / "state.json"
    written = state.stat().st_mtime_ns
    time.sleep(0.05)
    listener.on_task_instance_success(previous_state="running", task_instance=ti("success", task_id="other"))
    assert state.stat().st_mtime_ns == written
    assert len(sandbox.wait_for_messages(1)) == 1


def test_airflow_calls_the_plugin_listener_with_its_own_hook_signature(
    sandbox: HveSandbox, hve_connection: Callable[..., str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Through Airflow's own listener manager (plugins from entry points): the hook specs of this version accept it."""
    from airflow_provider_hve._compat import AIRFLOW_V_3_0_PLUS
    from airflow_provider_hve.alerts.listener import listener

    try:
        from airflow.listeners.listener import get_listener_manager
    except ImportError:  # pragma: no cover - every supported version has it
        pytest.skip("no listener manager")
    hve_connection()
    mail.sender_domain.cache_clear()
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_TO", ONCALL)
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIR", str(tmp_path / "hve_alerts"))
    monkeypatch.setattr(listener, "_config", None)  # read the options above
    monkeypatch.setattr(listener, "background", False)
    manager = get_listener_manager()
    assert listener in manager.pm.get_plugins(), "the hve_alerts plugin's listener is registered"
    extra = {} if AIRFLOW_V_3_0_PLUS else {"session": None}  # 2.11's spec passes a session too
    manager.hook.on_task_instance_failed(
        previous_state="running", task_instance=ti("up_for_retry", try_number=1), error=ValueError("x"), **extra
    )
    manager.hook.on_task_instance_failed(previous_state="running", task_instance=ti(), error=ValueError("x"), **extra)
    manager.hook.on_task_instance_success(previous_state="running", task_instance=ti("success"), **extra)
    (alert,) = sandbox.wait_for_messages(1)
    time.sleep(0.3)
    assert len(sandbox.messages) == 1 and alert.message["Subject"] == "[Airflow] etl.load failed (try 2 of 2)"
    mail.sender_domain.cache_clear()


@pytest.mark.parametrize("digests_now", [False, True], ids=["window-ended", "digests-now"])
def test_the_command_line_flush_sends_the_digests(
    digests_now: bool, sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch, hve_connection: Callable[..., str]
) -> None:
    """No failure comes after the storm: `hve-alerts flush` (and so the maintenance DAG's task) sends the digest."""
    import subprocess
    import sys

    hve_connection()
    mail.sender_domain.cache_clear()
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_TO", ONCALL)
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIGEST_THRESHOLD", "1")
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIGEST_WINDOW_MINUTES", "60" if digests_now else "1")
    # window-ended: the storm happened two minutes ago (its clock), so the 1-minute window is over for the command,
    # however slow this machine is; no storm alert sees it end.
    clock = time.time if digests_now else FakeClock(time.time() - 120)
    listener = HveAlertListener(load_alert_config(), clock=clock, background=False)
    for n in range(3):
        listener.on_task_instance_failed(previous_state="running", task_instance=ti(task_id=f"t{n}"), error=None)
    (single,) = sandbox.wait_for_messages(1)
    assert "etl.t0" in single.message["Subject"]
    argv = ["flush", "--digests-now"] if digests_now else ["flush"]
    if digests_now:
        done = warm.run_module("airflow_provider_hve.alerts", *argv)
    else:  # as cron runs it: a fresh interpreter that imports nothing before the command does (once per leg)
        command = [sys.executable, "-m", "airflow_provider_hve.alerts", *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)  # type: ignore[assignment]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Alert digests sent: 1" in done.stdout
    _, digest = sandbox.wait_for_messages(2)
    html = digest.message.get_body(("html",)).get_content()
    assert sorted(re.findall(r"<td>etl</td><td>(t\d+)</td>", html)) == ["t1", "t2"]
    again = warm.run_module("airflow_provider_hve.alerts", *argv)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Alert digests sent: 0" in again.stdout, "a digest is sent once"
    time.sleep(0.3)
    assert len(sandbox.messages) == 2


def _keep_one_alert(sandbox: HveSandbox) -> None:
    """An alert HVE could not take (connections refused), kept in the outbox."""
    from airflow_provider_hve.notifications.hve import HveNotifier

    sandbox.smtp.refuse_connections(600)
    try:
        HveNotifier(to=ONCALL, subject="kept", html_content="kept")({"run_id": "r", "dag": None})
    finally:
        sandbox.smtp.reset_faults()
    assert not sandbox.messages


@pytest.mark.parametrize(
    ("alert_to", "broken"),
    [("", "option"), (ONCALL, "option"), (ONCALL, "journal")],
    ids=["listener-off", "listener-on", "broken-journal"],
)
def test_a_bad_listener_option_never_stops_the_outbox_flush(
    alert_to: str,
    broken: str,
    sandbox: HveSandbox,
    monkeypatch: pytest.MonkeyPatch,
    hve_connection: Callable[..., str],
    alert_dir: Any,
) -> None:
    """`flush` with alert_digest_threshold=-1 (or no journal): the outbox is flushed; listener on: exit status 2."""
    hve_connection(send_retries=0)
    _keep_one_alert(sandbox)
    monkeypatch.setenv("AIRFLOW__HVE__ALERT_TO", alert_to)
    if broken == "option":
        monkeypatch.setenv("AIRFLOW__HVE__ALERT_DIGEST_THRESHOLD", "-1")
    else:
        (alert_dir / "journal").write_text("not a folder: the journal cannot be opened")
    if not alert_to:
        assert load_alert_config().enabled is False  # off: the other options are not even read
    done = warm.run_module("airflow_provider_hve.alerts", "flush")
    (kept,) = sandbox.wait_for_messages(1)
    assert kept.message["Subject"] == "kept" and kept.rcpt_tos == [ONCALL]
    if alert_to:
        assert done.returncode == 2, done.stdout + done.stderr
        failure = "HveConfigError" if broken == "option" else "NotADirectoryError"
        assert f"Alert digests: failed ({failure}" in done.stdout
    else:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Alert digests sent: 0" in done.stdout


def _storm_collected(listener: HveAlertListener, clock: FakeClock, sandbox: HveSandbox) -> None:
    """t0 mailed on its own, t1 and t2 collected; the digest's window has ended when this returns."""
    for n in range(3):
        clock.now += 1
        listener.on_task_instance_failed(previous_state="running", task_instance=ti(task_id=f"t{n}"), error=None)
    sandbox.wait_for_messages(1)
    clock.now += 61


def test_a_digest_that_could_not_be_sent_is_sent_by_the_next_flush(
    alerts: Callable[..., HveAlertListener],
    sandbox: HveSandbox,
    hve_connection: Callable[..., str],
    alert_dir: Any,
) -> None:
    """HVE down and the outbox unable to keep the digest: the digest is given back, not deleted."""
    clock = FakeClock()
    listener = alerts(clock=clock, digest_threshold=1, digest_window_minutes=1)
    hve_connection(send_retries=0)
    _storm_collected(listener, clock, sandbox)
    blocker = alert_dir / "outbox"
    blocker.write_text("not a folder: the outbox cannot keep anything")
    sandbox.smtp.refuse_connections(600)
    try:
        assert flush_digests(config=listener.config, clock=clock) == 0
    finally:
        sandbox.smtp.reset_faults()
        blocker.unlink()
    assert len(sandbox.messages) == 1
    assert flush_digests(config=listener.config, clock=clock) == 1, "the failed digest is sent by the next flush"
    _, digest = sandbox.wait_for_messages(2)
    html = digest.message.get_body(("html",)).get_content()
    assert "<td>t1</td>" in html and "<td>t2</td>" in html
    assert flush_digests(config=listener.config, clock=clock) == 0, "and only once"


def test_a_digest_refused_for_good_is_logged_with_its_failures(
    alerts: Callable[..., HveAlertListener],
    sandbox: HveSandbox,
    hve_connection: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    clock = FakeClock()
    listener = alerts(clock=clock, digest_threshold=1, digest_window_minutes=1)
    hve_connection(send_retries=0)
    _storm_collected(listener, clock, sandbox)
    sandbox.smtp.fail_next_data("554 5.6.0 Message rejected", count=5)
    try:
        with caplog.at_level(logging.ERROR):
            assert flush_digests(config=listener.config, clock=clock) == 0
    finally:
        sandbox.smtp.reset_faults()
    (line,) = [r.getMessage() for r in caplog.records if "alert digest of 2 failure(s)" in r.getMessage()]
    keys = [
        alert_key(event="failure", dag_id="etl", run_id="run_1", task_id=t, map_index=-1, try_number=2)
        for t in ("t1", "t2")
    ]
    assert "554 5.6.0" in line and all(key in line for key in keys)
    assert flush_digests(config=listener.config, clock=clock) == 0, "refused for good: not sent again"
    time.sleep(0.3)
    assert len(sandbox.messages) == 1


def test_a_connection_that_could_not_be_read_does_not_pin_the_message_id_domain(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    """The connection is missing at the first alert, defined later: later alerts use its domain."""
    from airflow_provider_hve.alerts.mail import message_id_for

    mail.sender_domain.cache_clear()
    config = AlertConfig(to=(ONCALL,), conn_id="hve_defined_later")
    key = alert_key(event="failure", dag_id="etl", run_id="run_1", task_id="load", map_index=-1, try_number=2)
    assert message_id_for(key, config) == alert_message_id(key, "airflow.invalid")
    hve_connection(conn_id="hve_defined_later")
    assert message_id_for(key, config) == alert_message_id(key, domain(sandbox))
    mail.sender_domain.cache_clear()


def test_a_dag_run_alert_has_the_message_id_of_the_notifier_as_dag_failure_callback(
    alerts: Callable[..., HveAlertListener], sandbox: HveSandbox
) -> None:
    """A DAG with on_failure_callback=HveNotifier and the listener on: two mails, one Message-ID (docs/alerts.md)."""
    from airflow_provider_hve.notifications.hve import HveNotifier

    listener = alerts()
    listener.on_dag_run_failed(dag_run=SimpleNamespace(dag_id="etl", run_id="run_1"), msg="task_failure")
    (by_listener,) = sandbox.wait_for_messages(1)
    HveNotifier(to=ONCALL)(
        {  # what Airflow hands a DAG's on_failure_callback
            "dag": SimpleNamespace(dag_id="etl", render_template_as_native_obj=False),
            "dag_run": SimpleNamespace(dag_id="etl", run_id="run_1", state="failed"),
            "run_id": "run_1",
            "reason": "task_failure",
        }
    )
    _, by_notifier = sandbox.wait_for_messages(2)
    assert by_listener.message["Message-ID"] == by_notifier.message["Message-ID"]


def test_a_journal_that_cannot_be_created_still_sends_the_alert(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """alert_dir under a regular file: no journal, so no digest and no thread, but the alerts arrive."""
    import logging

    hve_connection()
    mail.sender_domain.cache_clear()
    (tmp_path / "a-file").write_text("not a folder")
    config = AlertConfig(to=(ONCALL,), alert_dir=str(tmp_path / "a-file" / "hve_alerts"))
    listener = HveAlertListener(config, background=False)
    with caplog.at_level(logging.WARNING):
        listener.on_task_instance_failed(previous_state="running", task_instance=ti(), error=ValueError("x"))
        listener.on_dag_run_failed(dag_run=SimpleNamespace(dag_id="etl", run_id="run_1"), msg="task_failure")
    task, dag = sandbox.wait_for_messages(2)
    assert task.message["Subject"] == "[Airflow] etl.load failed (try 2 of 2)" and task.rcpt_tos == [ONCALL]
    assert dag.message["Subject"] == "[Airflow] DAG etl failed"
    assert sum("journal in" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records) == 2


class _OrmLike(SimpleNamespace):
    """A task instance that, like a detached ORM object, must not be read once the hook returned."""

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("__") and object.__getattribute__(self, "__dict__").get("_detached"):
            raise RuntimeError(f"read {name} of a task instance after the hook returned")
        return object.__getattribute__(self, name)


def _hold_journal_lock(alert_dir: str) -> tuple[Any, Any]:
    """Hold the journal's lock from another thread until the returned event is set (60 s at most)."""
    import fcntl
    import threading

    from airflow_provider_hve.alerts.journal import Journal

    journal = Journal(os.path.join(alert_dir, "journal"))
    journal._ensure()
    fd = os.open(journal.file("lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)

    done = threading.Event()

    def release() -> None:
        done.wait(60)
        os.close(fd)

    holder = threading.Thread(target=release)
    holder.start()
    return holder, done


def test_the_scheduler_thread_never_waits_for_the_journal_nor_hands_over_the_task_instance(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Any
) -> None:
    """A server process: the hook returns at once though the journal is locked; the thread sends from a copy."""
    hve_connection()
    mail.sender_domain.cache_clear()
    config = AlertConfig(to=(ONCALL,), alert_dir=str(tmp_path / "hve_alerts"))
    listener = HveAlertListener(config, background=True)
    holder, free = _hold_journal_lock(config.alert_dir)
    orm = _OrmLike(**vars(ti()))
    started = time.monotonic()
    listener.on_task_instance_failed(previous_state="running", task_instance=orm, error=ValueError("x"))
    returned = time.monotonic() - started
    orm._detached = True
    # The lock is still held: a hook that took it would have waited for its deadline (10 s), not returned.
    assert returned < 5, f"the hook waited {returned:.1f} s"
    free.set()
    (alert,) = sandbox.wait_for_messages(1, timeout=15)
    assert alert.message["Subject"] == "[Airflow] etl.load failed (try 2 of 2)"
    assert "http://airflow.example/dags/etl/runs/run_1/tasks/load" in alert.message.get_body(("html",)).get_content()
    holder.join()
    assert listener.drain(5)


def test_a_journal_locked_too_long_still_sends_the_alert(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_hve.alerts import journal

    hve_connection()
    mail.sender_domain.cache_clear()
    monkeypatch.setattr(journal, "LOCK_TIMEOUT_SECONDS", 0.3)
    config = AlertConfig(to=(ONCALL,), alert_dir=str(tmp_path / "hve_alerts"))
    holder, free = _hold_journal_lock(config.alert_dir)
    HveAlertListener(config, background=False).on_task_instance_failed(
        previous_state="running", task_instance=ti(), error=None
    )
    (alert,) = sandbox.wait_for_messages(1)
    assert holder.is_alive() and not free.is_set(), "sent while the lock is still held: after its deadline"
    assert alert.message["Subject"] == "[Airflow] etl.load failed (try 2 of 2)"
    free.set()
    holder.join()


class _TaskProcessTI(SimpleNamespace):
    """A task instance as a task process (not the scheduler) hands it over."""


_TaskProcessTI.__module__ = "airflow.sdk.execution_time.task_runner"


def _child_fails_a_task(listener: HveAlertListener) -> None:
    listener.on_task_instance_failed(
        previous_state="running", task_instance=_TaskProcessTI(**vars(ti())), error=ValueError("zombie")
    )
    os._exit(0)  # as Airflow 2.11's DAG file processor leaves: no atexit, no drain


def test_a_child_the_scheduler_forked_sends_inline(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Any
) -> None:
    """2.11 fails a zombie's task instance in a forked DAG file processor that ends with os._exit: still mailed."""
    hve_connection()
    mail.sender_domain.cache_clear()
    listener = HveAlertListener(AlertConfig(to=(ONCALL,), alert_dir=str(tmp_path / "hve_alerts")))
    listener.on_starting(component=SimpleNamespace(job_type="SchedulerJob"))
    assert listener._in_server_process()
    child = multiprocessing.get_context("fork").Process(target=_child_fails_a_task, args=(listener,))
    child.start()
    child.join(60)
    if child.is_alive():  # a lock held by another thread at the fork: never leave a hung child behind
        child.kill()
        child.join(5)
    assert child.exitcode == 0, f"the forked child ended with {child.exitcode}"
    (alert,) = sandbox.wait_for_messages(1)
    assert alert.message["Subject"] == "[Airflow] etl.load failed (try 2 of 2)"


def test_alerts_a_process_exits_with_are_named_in_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """The drain at exit gives up after its time: the alerts still queued are named, not dropped without a word."""
    import threading

    from airflow_provider_hve.alerts.listener import _Worker

    worker, stuck = _Worker(), threading.Event()
    worker.submit("etl.load failure", lambda: stuck.wait(30))
    worker.submit("etl.export failure", lambda: None)
    with caplog.at_level(logging.ERROR):
        assert not worker.drain(0.2)
    stuck.set()
    (line,) = [r.getMessage() for r in caplog.records if "not sent after waiting" in r.getMessage()]
    assert "2 alert(s)" in line and "etl.export failure" in line
    assert worker.drain(10)
