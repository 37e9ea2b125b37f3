"""Failure alerts say the right thing: HveNotifier and the e-mail backend, asserted on what the sandbox received."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hve._compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_1_PLUS, AIRFLOW_V_3_3_PLUS, AIRFLOW_VERSION
from airflow_provider_hve.notifications.hve import HveNotifier
from airflow_provider_hve.sandbox import DeliveredMessage, HveSandbox
from airflow_provider_hve.utils.email import send_email

CASES = Path(__file__).parent / "dags" / "hve_alert_cases.py"
RUNNING = ".".join(map(str, AIRFLOW_VERSION))
# Airflow 3.0's and 3.1's dag.test() give failure callbacks no exception, nor does 3.2.2's in-process task runner
# (it skips the real runner's context["exception"] = error); scheduled runs do (docs/compatibility.md).
DAG_TEST_PASSES_THE_EXCEPTION = AIRFLOW_VERSION[:2] not in ((3, 0), (3, 1), (3, 2))
SECRET = "hunter2-Zq8-not-for-mail"
# A secret with characters html.escape() changes: Airflow escapes the exception of a failure e-mail.
ESCAPED_SECRET = "pa'ss&w<rd-Zq8>not\"for-mail"
EXAMPLE_SUBJECT_TEMPLATE = Path(__file__).parent.parent / "example_dags" / "templates" / "hve_email_subject.j2"


def plain(message: DeliveredMessage) -> str:
    return str(message.message.get_body(("plain",)).get_content())


def html(message: DeliveredMessage) -> str:
    return str(message.message.get_body(("html",)).get_content())


def duration_seconds(text: str) -> int:
    found = re.search(r"Duration\s+(?:(\d+)h )?(\d+)m (\d+)s", text)
    assert found, text
    hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return hours * 3600 + minutes * 60 + seconds


def test_one_notifier_instance_sends_each_alert_with_its_own_facts(
    run_dag: Callable[..., Any], sandbox: HveSandbox
) -> None:
    dag_run = run_dag(CASES, "hve_case_shared_notifier")
    assert dag_run.state == "failed"

    messages = sandbox.wait_for_messages(3)
    by_subject = {str(m.message["Subject"]): m for m in messages}
    first = by_subject["[Airflow] hve_case_shared_notifier.first failed (try 1 of 1)"]
    second = by_subject["[Airflow] hve_case_shared_notifier.second failed (try 1 of 1)"]
    dag_alert = by_subject["[Airflow] DAG hve_case_shared_notifier failed"]

    if DAG_TEST_PASSES_THE_EXCEPTION:
        assert "ValueError" in plain(first) and "first <b>boom</b>" in plain(first)
        assert "first &lt;b&gt;boom&lt;/b&gt;" in html(first)
        assert "RuntimeError" in plain(second) and "second boom" in plain(second) and "first" not in plain(second)
    assert "Failed tasks" in html(dag_alert) and "ValueError" not in html(dag_alert)

    # Each alert shows its own task instance's duration: at least what the task took (second sleeps 2.2 s), at
    # most what Airflow recorded (its end date comes after the callbacks, so it includes the alert's sending).
    # Airflow 2.11's dag.test() leaves the task's start_date unset: no duration to show there.
    if AIRFLOW_V_3_0_PLUS:
        from airflow.utils.session import create_session

        with create_session() as session:
            recorded = {
                task_id: (ti.end_date - ti.start_date).total_seconds()
                for task_id in ("first", "second")
                if (ti := dag_run.get_task_instance(task_id, session=session)) is not None
            }
        assert 2 <= duration_seconds(plain(second)) <= recorded["second"] + 1, (plain(second), recorded)
        assert duration_seconds(plain(first)) <= recorded["first"] + 1, (plain(first), recorded)

    # Every alert links to the run (Airflow 2.11: its grid view, test_alert_links_to_the_run_...); the task
    # alerts to their log too.
    quoted_run = dag_run.run_id.replace(":", "%3A").replace("+", "%2B")
    if AIRFLOW_V_3_0_PLUS:
        run_url = f"/dags/hve_case_shared_notifier/runs/{quoted_run}"
    else:
        run_url = f"/dags/hve_case_shared_notifier/grid?dag_run_id={quoted_run}"
    for alert in (first, second, dag_alert):
        assert f'href="http://localhost:8080{run_url}"' in html(alert)
        assert "Open the run" in html(alert)
    assert "Open the log" in html(first) and "Open the log" not in html(dag_alert)


@pytest.mark.skipif(
    not AIRFLOW_V_3_0_PLUS,
    reason=f"Airflow {RUNNING}'s dag.test() cannot reschedule a sensor on SQLite (it asks for the LocalExecutor)",
)
def test_sensor_alert_counts_from_the_first_poke(run_dag: Callable[..., Any], sandbox: HveSandbox) -> None:
    dag_run = run_dag(CASES, "hve_case_rescheduled_sensor")
    assert dag_run.state == "failed"

    (alert,) = sandbox.wait_for_messages(1)
    if DAG_TEST_PASSES_THE_EXCEPTION:
        assert "AirflowSensorTimeout" in plain(alert)
    # Counted from the first poke of the try as Airflow recorded it, not from the last poke's start: at least
    # the time from the first poke to the last poke's start, at most until the task and its run had ended
    # (the callback runs in between; how long after the task it runs depends on the machine's load).
    first_poke, last_poke, ended = _pokes_and_end(dag_run, "wait")
    duration = duration_seconds(plain(alert))
    assert (last_poke - first_poke).total_seconds() - 1 <= duration <= (ended - first_poke).total_seconds() + 1
    if AIRFLOW_VERSION[:2] != (3, 0):
        # The sensor times out only once it has waited longer than its timeout (3 s) since its first poke; the
        # last poke alone takes well under a second. (Airflow 3.0's own sensor fails its second poke with a
        # TypeError: its supervisor returns the first reschedule date as a string. The unit tests of
        # tests/unit/test_alert_duration.py cover reading that string.)
        assert 3 <= duration <= (dag_run.end_date - dag_run.start_date).total_seconds()


def _pokes_and_end(dag_run: Any, task_id: str) -> tuple[Any, Any, Any]:
    """
    Return when the task's first poke started (Airflow's TaskReschedule record), when its last poke started
    (the task instance's start date) and when the task or its run ended, whichever is later.
    """
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = dag_run.get_task_instance(task_id, session=session)
        mine = (  # Airflow 3 keys a reschedule by the task instance's id, 2.11 by its task id and run
            (lambda r: r.ti_id == ti.id)
            if hasattr(TaskReschedule, "ti_id")
            else (lambda r: (r.dag_id, r.run_id, r.task_id) == (dag_run.dag_id, dag_run.run_id, task_id))
        )
        starts = [r.start_date for r in session.query(TaskReschedule).all() if mine(r)]
        assert starts, "the sensor was never rescheduled"
        return min(starts), ti.start_date, max(ti.end_date, dag_run.end_date)


def test_alert_links_to_the_run_where_the_running_airflow_shows_it(
    hve_connection: Callable[..., str], sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow3.contoso.example/")
    monkeypatch.setenv("AIRFLOW__WEBSERVER__BASE_URL", "https://airflow2.contoso.example")
    hve_connection()
    run_id = "manual__2026-01-01T00:00:00+00:00"
    ti = SimpleNamespace(dag_id="hve_alert_context", task_id="load", run_id=run_id, map_index=-1)
    context = {"dag": _dag(), "ti": ti, "exception": ValueError("boom"), "params": {}}
    HveNotifier(to="oncall@contoso.example", subject="Alert")(context)
    (alert,) = sandbox.wait_for_messages(1)
    quoted_run = "manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    if AIRFLOW_V_3_0_PLUS:  # [api] base_url, the run's own page
        expected = f"https://airflow3.contoso.example/dags/hve_alert_context/runs/{quoted_run}"
    else:  # Airflow 2.11: [webserver] base_url; it has no runs page, its grid view selects the run
        expected = f"https://airflow2.contoso.example/dags/hve_alert_context/grid?dag_run_id={quoted_run}"
    assert f'href="{expected}"' in html(alert)


def _dag() -> Any:
    """A DAG for a hand-made callback context: Airflow 2.11's notifier renders with context["dag"] (3.x need not)."""
    import pendulum
    from airflow.providers.common.compat.sdk import DAG

    return DAG("hve_alert_context", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))


def _task_context(exception: BaseException) -> dict[str, Any]:
    return {"dag": _dag(), "run_id": "manual__alert", "exception": exception, "params": {}}


def _hide_airflow_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put Airflow's masker where the provider does not look for it, as on an Airflow layout we do not know."""
    from airflow_provider_hve import redaction

    # Not by hiding Airflow's own modules: the Task SDK of 3.0/3.1 imports them to look up a connection, and
    # 2.11 keeps mask_secret (which the token cache uses) next to redact.
    monkeypatch.setattr(redaction, "_MASKERS", ("airflow.utils.log.secrets_masker_of_an_unknown_layout",))


def test_notifier_masks_secrets_in_the_exception(hve_connection: Callable[..., str], sandbox: HveSandbox) -> None:
    from airflow.providers.common.compat.sdk import mask_secret

    hve_connection()
    mask_secret(SECRET)
    HveNotifier(to="oncall@contoso.example", subject="Alert")(_task_context(ValueError(f"login with {SECRET}")))
    (alert,) = sandbox.wait_for_messages(1)
    assert "login with ***" in plain(alert)
    assert SECRET.encode() not in alert.data


def test_notifier_leaves_the_exception_out_when_airflow_cannot_mask_it(
    hve_connection: Callable[..., str],
    sandbox: HveSandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hve_connection()
    _hide_airflow_masker(monkeypatch)
    with caplog.at_level(logging.WARNING):
        HveNotifier(to="oncall@contoso.example", subject="Alert")(_task_context(ValueError(f"login with {SECRET}")))
    (alert,) = sandbox.wait_for_messages(1)
    assert SECRET.encode() not in alert.data and b"login with" not in alert.data
    assert "ValueError" in plain(alert) and "secret masker is unavailable" in plain(alert)
    assert "secret masker could not be imported" in caplog.text


def test_backend_masks_secrets_in_subject_and_body(hve_connection: Callable[..., str], sandbox: HveSandbox) -> None:
    from airflow.providers.common.compat.sdk import mask_secret

    hve_connection()
    mask_secret(SECRET)
    send_email("oncall@contoso.example", f"Failed: {SECRET}", f"<p>Exception: token {SECRET} refused</p>")
    (mail,) = sandbox.wait_for_messages(1)
    assert mail.message["Subject"] == "Failed: ***"
    assert "token *** refused" in html(mail)
    assert SECRET.encode() not in mail.data


def test_notifier_masks_secrets_in_a_user_template_exception(
    hve_connection: Callable[..., str], sandbox: HveSandbox
) -> None:
    from airflow.providers.common.compat.sdk import mask_secret

    hve_connection()
    mask_secret(SECRET)
    notifier = HveNotifier(
        to="oncall@contoso.example",
        subject="Alert: {{ exception }}",
        html_content="<p>{{ exception }}</p>",
        text_content="Raw: {{ exception }}",
    )
    context = _task_context(ValueError(f"login with {SECRET}"))
    notifier(context)
    (alert,) = sandbox.wait_for_messages(1)
    assert alert.message["Subject"] == "Alert: login with ***"
    assert "<p>login with ***</p>" in html(alert) and "Raw: login with ***" in plain(alert)
    assert SECRET not in html(alert) + plain(alert) + str(alert.message["Subject"])
    # Other callbacks of the same task still get Airflow's own context.
    assert isinstance(context["exception"], ValueError)


def test_backend_masks_html_escaped_secrets(hve_connection: Callable[..., str], sandbox: HveSandbox) -> None:
    import html as html_module

    from airflow.providers.common.compat.sdk import mask_secret

    hve_connection()
    mask_secret(ESCAPED_SECRET)
    escaped = html_module.escape(f"login with {ESCAPED_SECRET} refused")  # as Airflow builds exception_html
    assert html_module.escape(ESCAPED_SECRET) in escaped
    send_email(
        "oncall@contoso.example",
        "Failed",
        f'<p title="{html_module.escape(ESCAPED_SECRET)}">Exception: {escaped}</p><p>a &amp; b</p>',
    )
    (mail,) = sandbox.wait_for_messages(1)
    body = html(mail)
    assert "Exception: login with *** refused" in body and 'title="***"' in body
    assert "<p>a &amp; b</p>" in body  # the rest of the markup is left as written
    for form in (ESCAPED_SECRET, html_module.escape(ESCAPED_SECRET), html_module.escape(ESCAPED_SECRET, quote=False)):
        assert form not in body and form not in plain(mail)


def test_backend_withholds_subject_and_body_when_airflow_cannot_mask_them(
    hve_connection: Callable[..., str],
    sandbox: HveSandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hve_connection()
    _hide_airflow_masker(monkeypatch)
    with caplog.at_level(logging.WARNING):
        send_email("oncall@contoso.example", f"Failed: {SECRET}", f"<p>token {SECRET}</p>")
    (mail,) = sandbox.wait_for_messages(1)
    assert SECRET.encode() not in mail.data
    assert "withheld" in str(mail.message["Subject"]) and "secret masker could not be imported" in caplog.text


def test_backend_treats_airflows_default_smtp_conn_id_as_unset(
    hve_connection: Callable[..., str], sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only [email] email_backend is set: Airflow passes its default conn id, which nobody created.
    monkeypatch.delenv("AIRFLOW__EMAIL__EMAIL_CONN_ID", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    hve_connection()
    send_email("oncall@contoso.example", "Via the default", "<p>hi</p>", conn_id="smtp_default")
    (mail,) = sandbox.wait_for_messages(1)
    assert mail.rcpt_tos == ["oncall@contoso.example"]


def test_backend_with_only_email_backend_set_sends_through_hve_default(
    hve_connection: Callable[..., str], sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No conn_id and no [email] email_conn_id: Airflow's own default applies (smtp_default on 2.11 and 3.x).
    monkeypatch.delenv("AIRFLOW__EMAIL__EMAIL_CONN_ID", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    from airflow.providers.common.compat.sdk import conf

    assert conf.get("email", "email_conn_id", fallback=None) in (None, "smtp_default")
    hve_connection()
    send_email("oncall@contoso.example", "Via Airflow's default conn id", "<p>hi</p>")
    (mail,) = sandbox.wait_for_messages(1)
    assert mail.rcpt_tos == ["oncall@contoso.example"]
    assert mail.message["Subject"] == "Via Airflow's default conn id"


def test_backend_uses_an_existing_smtp_default_connection(
    hve_connection: Callable[..., str], sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_HVE_DEFAULT", raising=False)
    hve_connection(conn_id="smtp_default")  # the only connection: hve_default is not defined
    send_email("oncall@contoso.example", "Via smtp_default", "<p>hi</p>", conn_id="smtp_default")
    (mail,) = sandbox.wait_for_messages(1)
    assert mail.rcpt_tos == ["oncall@contoso.example"]


def test_backend_uses_hve_default_when_smtp_default_is_airflows_smtp_connection(
    hve_connection: Callable[..., str],
    sandbox: HveSandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What `airflow connections create-default-connections` makes: an smtp connection named smtp_default.
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({"conn_type": "smtp", "host": "localhost", "port": 25}))
    hve_connection()
    with caplog.at_level(logging.WARNING):
        send_email("oncall@contoso.example", "Past smtp_default", "<p>hi</p>", conn_id="smtp_default")
    (mail,) = sandbox.wait_for_messages(1)
    assert mail.rcpt_tos == ["oncall@contoso.example"] and mail.message["Subject"] == "Past smtp_default"
    assert "'smtp_default' is of type 'smtp'" in caplog.text and "hve_default" in caplog.text


@pytest.mark.filterwarnings("ignore:Setting email:UserWarning")  # Airflow 3 deprecates email= on tasks
@pytest.mark.skipif(
    AIRFLOW_VERSION[:2] in ((3, 0), (3, 2)),
    reason=f"Airflow {RUNNING} does not send email_on_failure mail through [email] email_backend under dag.test() "
    "(3.2.2 sends it with the SMTP provider's SmtpNotifier; docs/compatibility.md)",
)
def test_airflow_failure_email_through_the_backend_with_only_email_backend_set(
    run_dag: Callable[..., Any], sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As documented: [email] email_backend and the example's subject_template, no email_conn_id.
    monkeypatch.delenv("AIRFLOW__EMAIL__EMAIL_CONN_ID", raising=False)
    monkeypatch.setenv("AIRFLOW__EMAIL__SUBJECT_TEMPLATE", str(EXAMPLE_SUBJECT_TEMPLATE))
    dag_run = run_dag(Path(__file__).parent / "dags" / "hve_backend_cases.py", "hve_case_email_backend")
    assert dag_run.state == "failed"

    (mail,) = sandbox.wait_for_messages(1)
    assert mail.message["Subject"] == "[Airflow] hve_case_email_backend.load failed (try 1 of 1)"
    # Airflow passes from_email='airflow@airflow' when [email] from_email is unset: sent as the account.
    assert mail.message["From"] == sandbox.account
    if AIRFLOW_V_3_3_PLUS:  # Airflow 3.3's own failure mail escapes the exception; 2.11's and 3.1's do not
        assert "column &lt;b&gt;amount&lt;/b&gt; rejected: disk &lt;full&gt; &amp; broken" in html(mail)
        assert "<b>amount</b>" not in html(mail)
        assert "column <b>amount</b> rejected: disk <full> & broken" in plain(mail)
    else:
        # Real markup stays markup; what only looks like a tag is shown, in the HTML and in the plain text.
        assert "column <b>amount</b> rejected: disk &lt;full> & broken" in html(mail)
        assert "column amount rejected: disk <full> & broken" in plain(mail)


def test_example_backend_config_reads_as_airflow_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import textwrap

    from airflow.configuration import AirflowConfigParser

    import example_dags.hve_failure_alerts as example

    doc = example.__doc__ or ""
    start = doc.index("    [email]")
    block = textwrap.dedent(doc[start : doc.index("\n\n", start)])
    for name in ("EMAIL_BACKEND", "EMAIL_CONN_ID", "SUBJECT_TEMPLATE"):  # the environment would win over the file
        monkeypatch.delenv(f"AIRFLOW__EMAIL__{name}", raising=False)
    parser = AirflowConfigParser()
    parser.read_string(block)
    # Airflow keeps an inline "# ..." in the value: each comment of the snippet must be on its own line.
    assert parser.get("email", "email_conn_id") == "hve_default"
    assert parser.get("email", "email_backend") == "airflow_provider_hve.utils.email.send_email"
    assert parser.get("email", "subject_template") == "/opt/airflow/dags/templates/hve_email_subject.j2"


@pytest.mark.skipif(
    not AIRFLOW_V_3_1_PLUS,
    reason=f"awaiting a notifier (Deadline Alerts, the triggerer) needs Airflow 3.1+; this is {RUNNING}",
)
def test_awaiting_a_notifier_renders_on_a_copy(hve_connection: Callable[..., str], sandbox: HveSandbox) -> None:
    import asyncio

    hve_connection()
    notifier = HveNotifier(to="{{ params.oncall }}", subject="Alert for {{ run_id }}")
    notifier.context = {"run_id": "manual__await", "params": {"oncall": "oncall@contoso.example"}}

    async def alert() -> None:
        await notifier  # what the triggerer does: renders, then async_notify sends

    asyncio.run(alert())
    (mail,) = sandbox.wait_for_messages(1)
    assert mail.rcpt_tos == ["oncall@contoso.example"] and mail.message["Subject"] == "Alert for manual__await"
    # The instance keeps its templates for the next alert.
    assert notifier.subject == "Alert for {{ run_id }}" and notifier.to == "{{ params.oncall }}"


def test_readme_backend_config_sets_a_readable_subject_template(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.configuration import AirflowConfigParser

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("```ini\n[email]") + len("```ini\n")
    for name in ("EMAIL_BACKEND", "EMAIL_CONN_ID", "SUBJECT_TEMPLATE"):  # the environment would win over the file
        monkeypatch.delenv(f"AIRFLOW__EMAIL__{name}", raising=False)
    parser = AirflowConfigParser()
    parser.read_string(readme[start : readme.index("```", start)])
    assert parser.get("email", "email_backend") == "airflow_provider_hve.utils.email.send_email"
    # Airflow's default subject prints the whole task instance; the README names the shipped template.
    assert Path(parser.get("email", "subject_template")).name == EXAMPLE_SUBJECT_TEMPLATE.name
    assert EXAMPLE_SUBJECT_TEMPLATE.is_file()
