"""What the provider does on each Airflow it supports (2.11 and every 3.x); run by every CI compatibility leg.

Each test states the Airflow versions it covers; one that needs a newer Airflow skips with the version in its
reason (see docs/compatibility.md for the table these tests back).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hve._compat import (
    AIRFLOW_V_3_0_PLUS,
    AIRFLOW_V_3_1_PLUS,
    AIRFLOW_V_3_2_PLUS,
    AIRFLOW_VERSION,
    HAS_DEADLINE_ALERTS,
    HAS_TASK_STATE_STORE,
)
from airflow_provider_hve.sandbox import HveSandbox

RUNNING = ".".join(map(str, AIRFLOW_VERSION))
EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"
MERGE_CASES = Path(__file__).resolve().parent / "dags" / "hve_merge_cases.py"
HVE_FIELDS = ("tenant_id", "client_id", "auth_mode", "authority_host", "scope", "ca_bundle", "from_email", "timeout")


def needs(version: tuple[int, int], why: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        AIRFLOW_VERSION[:2] < version, reason=f"{why} needs Airflow {version[0]}.{version[1]}+; this is {RUNNING}"
    )


def test_provider_is_registered_with_the_hook_and_its_form() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.providers["airflow-provider-hve"].data["package-name"] == "airflow-provider-hve"
    hook = manager.hooks["hve"]
    assert hook is not None and hook.hook_class_name == "airflow_provider_hve.hooks.hve.HveHook"
    if AIRFLOW_V_3_0_PLUS and not AIRFLOW_V_3_2_PLUS:
        return  # 3.0/3.1 load the form only for the UI, with WTForms mocked: test_react_connection_form_metadata
    behaviour = manager.field_behaviours["hve"]
    assert behaviour["relabeling"]["login"] == "HVE account"
    # 2.11 keeps the Extra box shown: its script breaks Test on an Edit page where Extra was hidden.
    hidden = {"schema", "extra"} if AIRFLOW_V_3_0_PLUS else {"schema"}
    assert hidden == set(behaviour["hidden_fields"])


@pytest.mark.skipif(AIRFLOW_V_3_0_PLUS, reason=f"2.11's Flask connection form; Airflow {RUNNING} has the React UI")
def test_flask_connection_form_of_airflow_2_has_the_labelled_fields() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.www.forms import create_connection_form_class
    from airflow.www.views import ConnectionFormWidget  # noqa: F401 - the view that draws these fields imports

    form = create_connection_form_class()
    ProvidersManager()  # the view adds the providers' widgets to the form class like this:
    widgets = ProvidersManager().connection_form_widgets
    for name in HVE_FIELDS:
        assert f"extra__hve__{name}" in widgets, name
    tenant = widgets["extra__hve__tenant_id"].field
    assert tenant.args[0] == "Tenant ID"
    assert tenant.kwargs["description"].startswith("Required.")
    assert type(tenant.kwargs["widget"]).__name__ == "BS3TextFieldWidget"
    auth_mode = widgets["extra__hve__auth_mode"].field
    (any_of,) = [v for v in auth_mode.kwargs["validators"] if hasattr(v, "values")]
    assert list(any_of.values) == ["client_secret", "certificate", "password", "workload_identity"]
    assert form is not None
    # The timeout is a number of seconds, a fraction included: the form takes 2.5 (the connection reads the text
    # as a number) and refuses text or less than 1 second. (2.11 accepts no FloatField: it would drop the widgets.)
    from werkzeug.datastructures import MultiDict
    from wtforms import Form

    timeout_form = type("TimeoutForm", (Form,), {"timeout": widgets["extra__hve__timeout"].field})
    filled = timeout_form(MultiDict({"timeout": "2.5"}))
    assert filled.validate(), filled.errors
    assert float(filled.timeout.data) == 2.5
    assert timeout_form(MultiDict({"timeout": ""})).validate()  # optional: the default applies
    for wrong in ("soon", "0.5"):
        refused = timeout_form(MultiDict({"timeout": wrong}))
        assert not refused.validate() and "Enter a number, at least 1" in str(refused.errors), wrong


@needs((3, 0), "The React UI's connection form (hook_meta API)")
def test_react_connection_form_metadata() -> None:
    """What the Airflow 3 UI reads to draw the form: declarative on 3.2+, from WTForms widgets on 3.0/3.1."""
    # The service behind GET /ui/connections/hook_meta (tests/test_provider.py calls the endpoint on the
    # newest Airflow; its auth differs between 3.x releases, the metadata is what this test is about). In a
    # fresh process, as in the API server: 3.0/3.1 build the form only while WTForms is mocked, which a
    # ProvidersManager already loaded by another test would skip.
    code = (
        "import json\n"
        "from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService\n"
        "print(json.dumps([h.model_dump(mode='json') for h in HookMetaService.hook_meta_data()]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    hooks = json.loads(done.stdout.strip().splitlines()[-1])
    (hve,) = [hook for hook in hooks if hook["connection_type"] == "hve"]
    fields = hve["extra_fields"]
    if not AIRFLOW_V_3_1_PLUS and fields is None:
        import importlib.util

        assert importlib.util.find_spec("wtforms") is None  # the only reason 3.0 may have no fields
        pytest.skip(
            f"Airflow {RUNNING} builds the form from WTForms only when WTForms is installed (it comes with "
            "apache-airflow-providers-fab); without it the UI shows the Extra JSON box (docs/compatibility.md)"
        )
    assert set(HVE_FIELDS) <= set(fields)
    assert fields["tenant_id"]["schema"]["title"] == "Tenant ID"
    assert fields["auth_mode"]["schema"]["enum"] == ["client_secret", "certificate", "password", "workload_identity"]
    assert fields["timeout"]["value"] == 30
    if AIRFLOW_V_3_2_PLUS:  # declarative: a type without "null" is a required field
        assert fields["tenant_id"]["schema"]["type"] == "string"
        assert fields["client_id"]["schema"]["type"] == "string"
        assert fields["scope"]["schema"]["type"] == ["string", "null"]
    else:  # 3.0/3.1 turn WTForms fields into nullable types: the description says it instead
        assert fields["tenant_id"]["description"].startswith("Required.")
    standard = hve["standard_fields"]
    assert standard["login"]["title"] == "HVE account"
    assert standard["password"]["title"] == "Client secret / password"
    assert standard["url_schema"]["hidden"] is True


def test_airflow_send_email_goes_through_the_hve_backend(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    """Airflow's own send_email (what email_on_failure and EmailOperator call) reaches HVE on every version."""
    hve_connection()
    from airflow.utils.email import send_email

    send_email(
        "ops@contoso.example", "Backend on every Airflow", "<p>routed through <b>HVE</b></p>", cc="cc@contoso.example"
    )
    (delivered,) = sandbox.wait_for_messages(1)
    assert sorted(delivered.rcpt_tos) == ["cc@contoso.example", "ops@contoso.example"]
    assert delivered.message["Subject"] == "Backend on every Airflow"
    assert delivered.message["From"] == sandbox.account


def _deadline_context(run_id: str) -> dict[str, Any]:
    # The context the scheduler hands a Deadline Alert callback (airflow.models.deadline.handle_miss).
    queued = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.timezone.utc)
    return {
        "dag_run": {
            "dag_id": "nightly_load",
            "dag_run_id": run_id,
            "queued_at": queued.isoformat(),
            "state": "running",
        },
        "deadline": {"id": "0193", "deadline_time": queued + dt.timedelta(minutes=30)},
    }


def test_async_notify_sends_through_the_sync_path(sandbox: HveSandbox, hve_connection: Callable[..., str]) -> None:
    hve_connection()
    from airflow_provider_hve.notifications.hve import HveNotifier

    notifier = HveNotifier(to="oncall@contoso.example")
    context = _deadline_context("scheduled__2026-03-01")
    if not AIRFLOW_V_3_1_PLUS:
        context["dag"] = None  # BaseNotifier before 3.1 reads context["dag"]; no deadline context exists there
    notifier.render_template_fields(context)
    asyncio.run(notifier.async_notify(context))

    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == ["oncall@contoso.example"]
    assert delivered.message["Subject"] == "[Airflow] DAG nightly_load missed its deadline"
    html = delivered.message.get_body(("html",)).get_content()
    assert "scheduled__2026-03-01" in html and "2026-03-01T06:30:00+00:00" in html


@needs((3, 1), "The triggerer's supervisor channel (Deadline Alerts)")
def test_async_notify_talks_to_the_triggerers_supervisor_without_crossing_replies(
    sandbox: HveSandbox, hve_connection: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Airflow 3.1's triggerer died after the first deadline alert: the alert's worker thread used the supervisor
    channel (mask_secret of the token) through a second event loop, the replies crossed ("Response read out of
    order"). Here the runner's side of that channel is Airflow's own TriggerCommsDecoder and the supervisor a socket
    that answers every request, while another trigger uses the channel at the same time.
    """
    import socket
    import threading

    import greenback
    import msgspec
    from airflow.jobs.triggerer_job_runner import TriggerCommsDecoder
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import MaskSecret, _RequestFrame, _ResponseFrame

    from airflow_provider_hve.auth import token_provider
    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.notifications.hve import HveNotifier

    hve_connection()
    token_provider(HveHook().config)._evict_access_tokens()  # a fresh token, masked during the alert
    masked: list[str] = []

    def supervisor(sock: socket.socket) -> None:
        decode = msgspec.msgpack.Decoder(_RequestFrame).decode
        stream = sock.makefile("rb")
        while len(header := stream.read(4)) == 4:
            request = decode(stream.read(int.from_bytes(header, "big")))
            if (request.body or {}).get("type") == "MaskSecret":
                masked.append(str(request.body.get("value")))
            time.sleep(0.02)  # a busy supervisor: replies take a while, so requests overlap
            sock.sendall(_ResponseFrame(id=request.id, body=None).as_bytes())

    context = _deadline_context("r-comms")
    notifier = HveNotifier(to="oncall@contoso.example")
    notifier.render_template_fields(context)

    async def triggerer() -> None:
        runner_end, supervisor_end = socket.socketpair()
        threading.Thread(target=supervisor, args=(supervisor_end,), daemon=True).start()
        reader, writer = await asyncio.open_connection(sock=runner_end)
        comms = TriggerCommsDecoder(async_writer=writer, async_reader=reader, socket=runner_end)
        if hasattr(comms, "start_reader"):  # Airflow 3.2+
            await comms.start_reader()
        monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)  # undone after the test
        await greenback.ensure_portal()  # as the triggerer runs each trigger

        async def other_trigger() -> None:
            for n in range(20):
                await comms.asend(MaskSecret(value=f"other-{n}", name=None))

        try:
            await asyncio.wait_for(asyncio.gather(other_trigger(), notifier.async_notify(context)), 30)
        finally:
            reader_task = getattr(comms, "_reader_task", None)  # Airflow 3.2+'s reply reader
            if reader_task is not None:
                reader_task.cancel()
            writer.close()

    loop = asyncio.new_event_loop()  # not asyncio.run(): it would wait for a worker thread stuck on the old code
    try:
        loop.run_until_complete(triggerer())
    finally:
        loop.close()
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == ["oncall@contoso.example"]
    assert sum(value.startswith("other-") for value in masked) == 20
    token = token_provider(HveHook().config).get_token().value
    assert token in masked, "the supervisor was never told to mask the token"


class _ProviderLog(logging.Handler):
    """The provider's warnings and errors, from any thread, with the monotonic time each was logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[float, logging.LogRecord]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record))

    def find(self, text: str) -> tuple[float, logging.LogRecord] | None:
        return next(((at, r) for at, r in list(self.records) if text in r.getMessage()), None)

    def count(self, text: str) -> int:
        return sum(text in r.getMessage() for _, r in list(self.records))


@pytest.fixture
def provider_log() -> Iterator[_ProviderLog]:
    handler = _ProviderLog()
    logger = logging.getLogger("airflow_provider_hve")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def _until(condition: Callable[[], Any], within: float, what: str) -> Any:
    """Poll ``condition`` on the event loop until it is truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {within} s waiting for {what}"
        await asyncio.sleep(0.02)
    return value


def _run_loop(main: Callable[[], Any]) -> Any:
    # Not asyncio.run(): at its end it waits for the worker thread, which on the old code went on sending.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _transactions(sandbox: HveSandbox) -> int:
    return sum(len(session.transactions) for session in sandbox.smtp_sessions)


# How soon after its cancellation the alert's thread must be done. Its backoff is 2-4 s (HVE said 432) and
# Entra's Retry-After here 20 s: what is left after the cancellation is one local QUIT and a log line.
THREAD_ENDS_WITHIN = 1.5
CANCELLED = "HVE alert cancelled"


def _rendered_alert(run_id: str) -> tuple[Any, dict[str, Any]]:
    from airflow_provider_hve.notifications.hve import HveNotifier

    context = _deadline_context(run_id)
    if not AIRFLOW_V_3_1_PLUS:
        context["dag"] = None
    notifier = HveNotifier(to="oncall@contoso.example")
    notifier.render_template_fields(context)
    return notifier, context


def test_a_cancelled_async_notify_ends_at_once_and_its_send_completes_once(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    """A trigger cancelled mid-send (reassigned, shutdown): the await ends at once, the thread's send finishes."""
    from airflow_provider_hve.notifications.hve import HveNotifier

    hve_connection()
    sandbox.latency_ms = 300  # a send of six round trips or more (about 2 s): still going when cancelled
    context = _deadline_context("r-cancel")
    if not AIRFLOW_V_3_1_PLUS:
        context["dag"] = None
    notifier = HveNotifier(to="oncall@contoso.example")
    notifier.render_template_fields(context)

    async def cancel_mid_send() -> float:
        send = asyncio.ensure_future(notifier.async_notify(context))
        # Its attempt under way (the session has begun; STARTTLS, AUTH and the message still to come): it is
        # finished. A cancellation before the first attempt sends nothing (a fixed 0.3 s could be that, cold).
        await _until(lambda: len(sandbox.smtp_sessions) > 0, 30, "the SMTP session")
        assert not send.done()
        send.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await send
        return time.monotonic() - started

    assert asyncio.run(cancel_mid_send()) < 0.5  # not the rest of the send
    (delivered,) = sandbox.wait_for_messages(1, timeout=10)
    assert delivered.rcpt_tos == ["oncall@contoso.example"]
    time.sleep(0.5)
    assert len(sandbox.messages) == 1


def test_an_alert_cancelled_in_its_backoff_makes_no_further_attempt_and_its_thread_ends_at_once(
    sandbox: HveSandbox, hve_connection: Callable[..., str], provider_log: _ProviderLog
) -> None:
    """
    HVE throttles every attempt (432 after the content: not delivered): the send backs off 2-4 s between
    attempts. Cancelled in the backoff, the await ends at once, the backoff too, and no further transaction reaches
    HVE (before: the retries went on for about a minute after the trigger was gone).
    """
    from airflow_provider_hve.sandbox.smtp_server import TOO_MANY_CONNECTIONS

    hve_connection()
    sandbox.smtp.throttle(TOO_MANY_CONNECTIONS, command="content", seconds=120)
    notifier, context = _rendered_alert("r-backoff")

    async def cancel_in_backoff() -> tuple[int, float, float, tuple[float, logging.LogRecord]]:
        send = asyncio.ensure_future(notifier.async_notify(context))
        # Logged just before the backoff's wait: from here on a cancellation ends the wait (or skips it).
        await _until(lambda: provider_log.find("Sending it again"), 30, "the first backoff")
        before = _transactions(sandbox)
        send.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await send
        awaited = time.monotonic() - cancelled_at
        line = await _until(lambda: provider_log.find(CANCELLED), 10, "the thread's cancellation line")
        return before, cancelled_at, awaited, line

    before, cancelled_at, awaited, (ended_at, record) = _run_loop(cancel_in_backoff)
    assert awaited < 0.5
    assert ended_at - cancelled_at < THREAD_ENDS_WITHIN, "the backoff was waited out"
    assert record.levelno == logging.WARNING  # kept in the outbox (issue 17): delivered by the next flush
    message = record.getMessage()
    assert "not sent; no further attempt" in message and "after 1 attempt(s)" in message, message
    assert "kept in the outbox" in message
    assert before == 1
    time.sleep(0.5)  # nothing more reaches HVE once the thread said it is done
    assert _transactions(sandbox) == before
    assert len(sandbox.messages) == 0
    assert provider_log.count("Sending it again") == 1
    assert provider_log.count(CANCELLED) == 1


def test_an_alert_cancelled_while_entra_asks_to_wait_connects_to_no_one(
    sandbox: HveSandbox, hve_connection: Callable[..., str], provider_log: _ProviderLog
) -> None:
    """Entra answers 503 with Retry-After 20: cancelled in that wait, no further token request, no SMTP session."""
    hve_connection()
    sandbox.entra.throttle(1, status=503, retry_after=20)
    notifier, context = _rendered_alert("r-entra")

    async def cancel_while_entra_waits() -> tuple[float, tuple[float, logging.LogRecord]]:
        send = asyncio.ensure_future(notifier.async_notify(context))
        await _until(lambda: provider_log.find("Entra ID answered HTTP 503"), 30, "Entra's Retry-After wait")
        send.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await send
        return cancelled_at, await _until(lambda: provider_log.find(CANCELLED), 10, "the cancellation line")

    cancelled_at, (ended_at, record) = _run_loop(cancel_while_entra_waits)
    assert ended_at - cancelled_at < THREAD_ENDS_WITHIN, "Entra's Retry-After was waited out"
    message = record.getMessage()
    assert "not sent" in message and "before its first attempt" in message, message
    time.sleep(0.5)
    assert [request.status for request in sandbox.token_requests if request.method == "POST"] == [503]
    assert len(sandbox.smtp_sessions) == 0 and len(sandbox.messages) == 0


def test_an_alert_cancelled_after_its_hand_over_is_delivered_once_and_says_so(
    sandbox: HveSandbox, hve_connection: Callable[..., str], provider_log: _ProviderLog
) -> None:
    """
    The message is handed over and HVE holds its 250 for 2 s: cancelled then, the SMTP reply is still read (the
    transaction is never cut), the message is delivered once, and the line says it was handed over.
    """
    hve_connection()
    sandbox.smtp.stall_after(0, 2.0, command="content")  # delivered first; only its 250 is late
    notifier, context = _rendered_alert("r-handed-over")

    async def cancel_after_hand_over() -> tuple[float, tuple[float, logging.LogRecord]]:
        send = asyncio.ensure_future(notifier.async_notify(context))
        await _until(lambda: len(sandbox.messages) == 1, 30, "the message handed over")
        assert not send.done()  # its 250 is still on the way
        send.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await send
        assert time.monotonic() - cancelled_at < 0.5
        return cancelled_at, await _until(lambda: provider_log.find(CANCELLED), 10, "the cancellation line")

    cancelled_at, (ended_at, record) = _run_loop(cancel_after_hand_over)
    (delivered,) = sandbox.messages
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert f"after it was handed over: HVE accepted {delivered.message['Message-ID']} for 1 recipient(s)" in message
    assert ended_at - cancelled_at < 2.0 + THREAD_ENDS_WITHIN  # the held 250, then QUIT
    time.sleep(0.5)
    assert len(sandbox.messages) == 1 and _transactions(sandbox) == 1
    assert provider_log.count(CANCELLED) == 1


_OPENED: list[tuple[str, int]] | None = None
"""(path, thread id) of every file opened while a test records them (an audit hook sees every open())."""


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _OPENED is not None and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append((os.fsdecode(args[0]), threading.get_ident()))


@needs((3, 1), "Awaiting a notifier (what the triggerer does with a Deadline Alert callback)")
def test_the_triggerer_path_reads_no_template_file_on_the_event_loop(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Path
) -> None:
    """
    As the triggerer runs a Deadline Alert: the notifier is built and awaited on the event loop. Its template files
    (a body through the DAG's Jinja loader with an include, a body by absolute path, the packaged subject) are
    read in the worker thread, never on the loop thread (before: at construction and in BaseNotifier.__await__).
    """
    global _OPENED
    from airflow.sdk import DAG

    from airflow_provider_hve.notifications.hve import HveNotifier

    hve_connection()
    folder = tmp_path / "dag_templates"
    folder.mkdir()
    (folder / "alert.html").write_text("<p>{% include 'part.html' %} {{ dag_run.dag_run_id }}</p>")
    (folder / "part.html").write_text("Late run")
    text_file = tmp_path / "alert.txt"
    text_file.write_text("Late: {{ dag_run.dag_run_id }}")
    packaged = str(Path(sys.modules["airflow_provider_hve"].__file__ or "").parent / "templates")
    context = _deadline_context("r-files")
    context["dag"] = DAG("nightly_load", schedule=None, template_searchpath=[str(folder)])

    async def triggerer() -> int:
        result = await HveNotifier(
            to="oncall@contoso.example", html_content="alert.html", text_content=str(text_file), context=context
        )
        assert result is None  # the triggerer stores it as the callback's output, a string column
        return threading.get_ident()

    if not getattr(_record_opens, "installed", False):
        sys.addaudithook(_record_opens)  # for the rest of the process; inert while _OPENED is None
        _record_opens.installed = True  # type: ignore[attr-defined]
    _OPENED = []
    try:
        loop_thread = _run_loop(triggerer)
        opened = list(_OPENED)
    finally:
        _OPENED = None
    templates = [(path, thread) for path, thread in opened if path.startswith((str(tmp_path), packaged))]
    read = {Path(path).name for path, _ in templates}
    assert {"alert.html", "part.html", "alert.txt"} <= read, read  # the record works: each file was read
    assert any(path.startswith(packaged) for path, _ in templates)  # the packaged subject template too
    on_loop = [path for path, thread in templates if thread == loop_thread]
    assert not on_loop, f"read on the event loop thread: {on_loop}"
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.message["Subject"] == "[Airflow] DAG nightly_load missed its deadline"
    assert "Late run r-files" in delivered.message.get_body(("html",)).get_content()
    assert delivered.message.get_body(("plain",)).get_content().strip() == "Late: r-files"


@needs((3, 1), "Awaiting a notifier (what the triggerer does with a Deadline Alert callback)")
def test_triggerer_style_await_renders_and_sends(sandbox: HveSandbox, hve_connection: Callable[..., str]) -> None:
    """The triggerer builds the notifier with the context as a keyword and awaits it (BaseNotifier.__await__)."""
    hve_connection()
    from airflow_provider_hve.notifications.hve import HveNotifier

    async def trigger() -> None:
        await HveNotifier(
            to="oncall@contoso.example", subject="Late: {{ dag_run.dag_run_id }}", context=_deadline_context("r1")
        )

    asyncio.run(trigger())
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.message["Subject"] == "Late: r1"


def test_deadline_example_is_defined_only_where_deadline_alerts_exist(parse_dags: Callable[[Any], Any]) -> None:
    bag = parse_dags(EXAMPLE_DAGS / "hve_deadline_alert.py")
    assert not bag.import_errors
    if not HAS_DEADLINE_ALERTS:
        assert "hve_deadline_alert" not in bag.dag_ids, f"Airflow {RUNNING} has no Deadline Alerts"
        return
    dag = bag.get_dag("hve_deadline_alert")
    (alert,) = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert alert.callback.path == "airflow_provider_hve.notifications.hve.HveNotifier"
    assert alert.callback.kwargs == {"to": "data-oncall@contoso.example"}


def test_version_flags_match_the_running_airflow() -> None:
    import airflow
    from packaging.version import Version

    running = Version(airflow.__version__)
    assert (running.major, running.minor, running.micro) == AIRFLOW_VERSION
    assert (running >= Version("3.1.0")) == AIRFLOW_V_3_1_PLUS


def _declared_floor(distribution: str) -> str:
    """Return the lowest version pyproject.toml allows for ``distribution`` (its ``>=`` bound)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    for line in requires("airflow-provider-hve") or ():
        requirement = Requirement(line)
        if requirement.name == distribution and requirement.marker is None:
            (floor,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
            return floor
    raise AssertionError(f"airflow-provider-hve declares no {distribution}")


def test_floor_leg_runs_the_declared_common_compat_floor() -> None:
    """The floor leg (Airflow 2.11.0) installs common-compat at the floor we declare, so that floor is tested."""
    from importlib.metadata import version

    if _declared_floor("apache-airflow") != RUNNING:
        pytest.skip(f"only the floor leg ({_declared_floor('apache-airflow')}) pins the floor; this is {RUNNING}")
    compat = "apache-airflow-providers-common-compat"
    assert version(compat) == _declared_floor(compat)


@pytest.mark.skipif(HAS_TASK_STATE_STORE, reason=f"Airflow {RUNNING} keeps the record in task_state_store")
def test_without_task_state_store_a_first_try_reads_no_variable_and_leaves_none(
    run_dag: Callable[..., Any], sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first try cannot have a record to read: only its own writes are read back (3.0-3.2 log each miss)."""
    from airflow_provider_hve.state import VariableStore

    written: list[str] = []
    read_before_written: list[str] = []
    real_get, real_set = VariableStore._get, VariableStore._set

    def spy_get(name: str, default: Any) -> Any:
        if name not in written:
            read_before_written.append(name)
        return real_get(name, default)

    def spy_set(store: VariableStore, name: str, value: Any) -> None:
        written.append(name)
        real_set(store, name, value)

    monkeypatch.setattr(VariableStore, "_get", staticmethod(spy_get))
    monkeypatch.setattr(VariableStore, "_set", spy_set)
    dag_run = run_dag(MERGE_CASES, "hve_case_merge_retry")
    assert dag_run.state == "success"
    assert len(sandbox.wait_for_messages(40, timeout=10)) == 40
    assert written, "the delivered rows were not recorded"
    assert read_before_written == []
    assert _variables_of(dag_run, "merge") == []


def _variables_of(dag_run: Any, task_id: str) -> list[str]:
    """The Variables left by one task instance's record (other tests' failed tasks leave theirs, by design)."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    from airflow_provider_hve.state import VariableStore

    prefix = VariableStore(dag_run.dag_id, dag_run.run_id, task_id)._prefix
    with create_session() as session:
        return [key for (key,) in session.query(Variable.key).filter(Variable.key.like(f"{prefix}%")).all()]


@pytest.mark.skipif(
    HAS_TASK_STATE_STORE,
    reason=f"Airflow {RUNNING} has task_state_store: tests/test_bulk.py proves each row is sent once across retries",
)
def test_without_task_state_store_a_retry_sends_each_row_once_and_cleans_up(
    run_dag: Callable[..., Any], sandbox: HveSandbox, task_outputs: Callable[..., Any]
) -> None:
    """Before Airflow 3.3 the delivery log lives in Airflow Variables: the retry skips what the first try delivered."""
    sandbox.smtp.disconnect_after(15)  # the first try delivers 15 of 40, then HVE hangs up; the retry runs
    dag_run = run_dag(MERGE_CASES, "hve_case_merge_retry")
    assert dag_run.state == "success"

    delivered = sandbox.wait_for_messages(40, timeout=10)
    counts = Counter(m.rcpt_tos[0] for m in delivered)
    assert sorted(counts) == [f"person{n:03d}@contoso.example" for n in range(40)]
    assert set(counts.values()) == {1}, "a row was sent twice"
    assert len({m.session_id for m in delivered}) == 2  # two tries, two connections
    summary, _ = task_outputs(dag_run, "merge")
    assert summary["skipped_already_delivered"] == 15 and summary["accepted"] == 25
    assert _variables_of(dag_run, "merge") == []  # the task succeeded: its records are gone


@pytest.mark.skipif(HAS_TASK_STATE_STORE, reason=f"Airflow {RUNNING} keeps the record in task_state_store")
def test_without_task_state_store_a_failed_clean_up_never_makes_a_retry_resend(
    run_dag: Callable[..., Any], sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The merge sent every row; deleting its record then fails half-way (the API server answers 500 once). The
    records were once deleted before the index, so a retry read the index, missed the deleted chunk and mailed
    its rows again. Now the index says "completed" first: the task succeeds, and the Variables left over say so.
    """
    from airflow_provider_hve.state import VariableStore

    real_delete = VariableStore._delete
    deleted: list[str] = []
    failed: list[str] = []

    def delete_fails_once(name: str) -> None:
        # The second delete fails: the first has removed a record (or, before this fix, the record and then
        # the index's listing was all the retry had).
        if len(deleted) == 1 and not failed:
            failed.append(name)
            raise RuntimeError("the API server answered 500")
        deleted.append(name)
        real_delete(name)

    monkeypatch.setattr(VariableStore, "_delete", staticmethod(delete_fails_once))
    dag_run = run_dag(MERGE_CASES, "hve_case_merge_retry")
    assert dag_run.state == "success"
    counts = Counter(m.rcpt_tos[0] for m in sandbox.wait_for_messages(40, timeout=10))
    assert len(counts) == 40 and set(counts.values()) == {1}, "a row was sent twice"
    left = _variables_of(dag_run, "merge")
    index = VariableStore(dag_run.dag_id, dag_run.run_id, "merge")._name("index")
    assert failed and set(left) == {failed[0], index}, left
    # The index left over says "completed": a retry would send nothing. (Read through the ORM: outside a task,
    # Airflow 3's Variable API has no supervisor to ask.)
    assert "completed" in json.loads(_variable_value(index)), _variable_value(index)


def _variable_value(key: str) -> str:
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        (variable,) = session.query(Variable).filter(Variable.key == key).all()
        return str(variable.val)
