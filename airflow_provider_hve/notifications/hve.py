"""HveNotifier: task and DAG callbacks that alert people through HVE."""

from __future__ import annotations

import copy
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from airflow.providers.common.compat.sdk import BaseNotifier

from airflow_provider_hve.cancellation import CancelToken, cancellable
from airflow_provider_hve.exceptions import HveCancelledError, HveConnectionError
from airflow_provider_hve.templating import EmailTemplating

if TYPE_CHECKING:
    import asyncio

    from airflow_provider_hve.alerts.send import Kept
    from airflow_provider_hve.smtp import SendResult

    Outcome = SendResult | Kept

log = logging.getLogger(__name__)

AddressArg = str | Iterable[str] | None
# connection.DEFAULT_CONN_ID, spelt out: a DAG file that imports the notifier need not import connection.py
# (tests/test_provider.py keeps the two equal).
DEFAULT_CONN_ID = "hve_default"
MAX_EXCEPTION_CHARS = 4000
_STATE_LABELS = {
    "failed": "failed",
    "up_for_retry": "failed and will be retried",
    "up_for_reschedule": "is waiting to be rescheduled",
    "success": "succeeded",
    "skipped": "was skipped",
    "upstream_failed": "did not run (upstream failed)",
}
# The event of an alert's stable key (alerts.ids), by the state Airflow reports.
_EVENTS = {"failed": "failure", "up_for_retry": "retry", "success": "success"}


class HveNotifier(EmailTemplating, BaseNotifier):
    """
    Send an alert through HVE from ``on_failure_callback``, ``on_retry_callback``, ``on_success_callback``
    (task or DAG level).

    With no ``subject`` or ``html_content``, the packaged templates describe what happened: DAG, task,
    run, logical date, state, try N of M, the task instance's duration, host, the exception (escaped, and
    secrets masked by Airflow's masker, or left out if the masker is unavailable), links to the log and to
    the run, and for a DAG run the failed tasks. Templates see Airflow's context plus ``notification`` with
    those facts. A body may be a template file (``.html``, ``.j2``, ``.jinja2``, ``.txt``) or a string.

    One instance may serve many callbacks (as Airflow does with the callbacks of one parsed DAG): each
    alert is rendered on a copy, so it never carries what an earlier alert rendered.

    :param to: recipients. (templated)
    :param subject: subject; default ``[Airflow] <dag>.<task> failed (try 1 of 3)``. (templated)
    :param html_content: HTML body or template file; default: the packaged alert. (templated)
    :param text_content: plain-text body; default: derived from the HTML. (templated)
    :param cc: Cc recipients. (templated)
    :param bcc: Bcc recipients. (templated)
    :param from_email: From header; defaults to the connection's. (templated)
    :param reply_to: Reply-To addresses. (templated)
    :param files: paths of files to attach. (templated)
    :param headers: extra ``X-`` headers. (templated)
    :param hve_conn_id: the ``hve`` connection. (templated)
    :param alert_key: the stable key its Message-ID is made from (:func:`~airflow_provider_hve.alerts.ids.alert_key`);
        default: from the callback's context (DAG, run, task, map index, try and event).
    :param message_id: the alert's Message-ID (``<left@domain>``), e.g. one from
        :func:`airflow_provider_hve.alerts.ids.alert_message_id`; wins over ``alert_key``. Default: the stable one
        of ``alert_key``.

    An alert HVE or Entra cannot take now for a reason that passes (unreachable, ``4xx``, ``421``, Entra's 5xx) is
    kept in the alert outbox and delivered later, once, with the same Message-ID (docs/alerts.md, "Alert outbox").

    Example::

        BashOperator(
            task_id="load",
            bash_command="...",
            on_failure_callback=HveNotifier(to="data-oncall@contoso.com"),
        )
    """

    template_fields: Sequence[str] = (
        "to",
        "subject",
        "html_content",
        "text_content",
        "cc",
        "bcc",
        "from_email",
        "reply_to",
        "files",
        "headers",
        "hve_conn_id",
    )

    def __init__(
        self,
        *,
        to: AddressArg,
        subject: str | None = None,
        html_content: str | None = None,
        text_content: str | None = None,
        cc: AddressArg = None,
        bcc: AddressArg = None,
        from_email: str | None = None,
        reply_to: AddressArg = None,
        files: Iterable[str] | None = None,
        headers: Mapping[str, str] | None = None,
        hve_conn_id: str = DEFAULT_CONN_ID,
        alert_key: str | None = None,
        message_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.to = to
        self.subject = subject
        self.html_content = html_content
        self.text_content = text_content
        self.cc = cc
        self.bcc = bcc
        self.from_email = from_email
        self.reply_to = reply_to
        self.files = files
        self.headers = headers
        self.hve_conn_id = hve_conn_id
        self.alert_key = alert_key
        self.message_id = message_id

    def __call__(self, *args: Any) -> None:
        """Send one alert. Renders on a copy: Airflow calls one instance for many alerts (one parsed DAG)."""
        super(HveNotifier, copy.copy(self)).__call__(*args)

    def __await__(self) -> Any:
        """
        Render and send on a copy, like :meth:`__call__`, both in the worker thread of :meth:`async_notify`.

        What Airflow's triggerer does with a Deadline Alert callback: it builds the notifier with ``context=`` and
        awaits it. Airflow's own ``__await__`` renders the template fields in place and on the event loop: the
        next deadline alert of the same parsed DAG would carry this one's subject and body, and template files
        (the packaged ones too) would be read on the triggerer's loop.
        """
        notifier = copy.copy(self)
        context = getattr(notifier, "context", None) or {}  # BaseNotifier keeps it from Airflow 3.1
        return notifier._in_worker_thread(notifier._render_and_send, context).__await__()

    def resolve_template_files(self) -> None:
        """
        Read body template files now, except on an event loop: there they are read when the alert is rendered.

        The triggerer builds a Deadline Alert's notifier on its event loop (``BaseNotifier.__init__`` resolves the
        template files); the rendering, in the worker thread, reads them instead (:meth:`__await__`).
        """
        if _on_event_loop():
            return
        super().resolve_template_files()

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Add ``notification`` to the context and fill in the packaged templates, then render."""
        from airflow_provider_hve.reports import (
            NOTIFICATION_HTML_TEMPLATE,
            NOTIFICATION_SUBJECT_TEMPLATE,
            packaged_template,
        )

        # The template sees the redacted exception text, never the raw exception (``{{ exception }}`` in a user
        # template). On a copy of the context: other callbacks of the same task get Airflow's own.
        facts = deadline_facts(context) if "deadline" in context else notification_facts(context)
        context = dict(context)
        context["notification"] = facts
        if context.get("exception") is not None:
            context["exception"] = facts["exception_message"]
        if self.subject is None:
            self.subject = packaged_template(NOTIFICATION_SUBJECT_TEMPLATE).strip()
        if self.html_content is None and self.text_content is None:
            self.html_content = packaged_template(NOTIFICATION_HTML_TEMPLATE)
        super().render_template_fields(context, jinja_env)

    def notify(self, context: Any) -> None:
        """Send the rendered alert."""
        self._send(context)

    def _send(self, context: Any) -> Outcome:
        """
        Send the rendered alert with its stable Message-ID; keep it in the outbox if HVE cannot take it now.

        :return: what HVE accepted, or :class:`~airflow_provider_hve.alerts.send.Kept` (the alert waits in the
            outbox). A permanent refusal raises, as before.
        """
        from airflow_provider_hve.alerts.send import Kept, send_or_keep, with_message_id
        from airflow_provider_hve.hooks.hve import HveHook

        hook = HveHook(hve_conn_id=self.hve_conn_id)
        outgoing = hook.build_message(
            self.to,
            " ".join(str(self.subject).split()),
            self.html_content,
            text_content=self.text_content,
            cc=self.cc,
            bcc=self.bcc,
            reply_to=self.reply_to,
            from_email=self.from_email,
            files=self.files,
            headers=self.headers,
            message_id=self.message_id,
        )
        if self.message_id is None:  # a Message-ID given by the caller (the listener's, for threading) wins
            key = self.alert_key or alert_key_of(context)
            outgoing = with_message_id(outgoing, key)
        outcome = send_or_keep(hook, outgoing, origin="HveNotifier")
        if not isinstance(outcome, Kept) and outcome.refused:
            log.warning("HVE refused some alert recipients: %s", outcome.as_dict()["refused"])
        return outcome

    def _render_and_send(self, context: Any) -> Outcome:
        """What ``BaseNotifier.__await__`` does on the event loop, here in the worker thread."""
        self._update_context(context)
        self.render_template_fields(context)
        return self._send(context)

    async def async_notify(self, context: Any) -> None:
        """
        Send the rendered alert from the triggerer: what a ``DeadlineAlert`` callback runs (Airflow 3.1+).

        The same sending path as :meth:`notify` (one SMTP client, its token cache and its error
        translation), run in a worker thread so the triggerer's event loop is never blocked.

        Cancellable: when the awaiting task is cancelled (the triggerer shuts down or hands the trigger to another
        triggerer, or a timeout of yours), the await ends at once and the send starts no further attempt; a
        backoff between attempts ends at once. The step under way is finished (an SMTP command, or the content of
        the message: never half a message), so a message already handed over keeps its outcome. One line is
        logged when the thread ends: that the alert was cancelled, and whether it was not sent or handed over.

        Example::

            DAG(
                ...,
                deadline=DeadlineAlert(
                    reference=DeadlineReference.DAGRUN_QUEUED_AT,
                    interval=timedelta(minutes=30),
                    callback=AsyncCallback(HveNotifier, kwargs={"to": "data-oncall@contoso.com"}),
                ),
            )
        """
        # The thread comes from asgiref's sync_to_async, not asyncio.to_thread. The send makes task-SDK calls that
        # talk to the triggerer's supervisor (the connection look-up, mask_secret of the token). On Airflow 3.1 the
        # synchronous side of that channel is async_to_sync: from a plain thread it starts a second event loop on
        # the same socket, the replies cross ("Response read out of order") and the triggerer dies; from a
        # sync_to_async thread it hands the call to the triggerer's own loop, as Airflow 3.1 expects. 3.2+ accept
        # both. thread_sensitive=False: the alerts of several triggers do not queue behind one another.
        # Shielded: a cancelled trigger (reassigned, shutdown) must not cancel a supervisor request the thread is
        # waiting for on the loop; 3.1's channel does not survive that. The thread is told through a cancel token
        # instead, which the send looks at between steps only.
        await self._in_worker_thread(self._send, context)

    async def _in_worker_thread(self, send: Callable[[Any], Outcome], context: Any) -> None:
        # Returns None, as async_notify always did: the triggerer stores what an awaited callback returns as the
        # callback's output (a string column; a SendResult there made 3.3's triggerer fail its database update).
        import asyncio

        from asgiref.sync import sync_to_async

        alert = _AlertInThread()
        future = asyncio.ensure_future(sync_to_async(alert.run, thread_sensitive=False)(send, context))
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as exc:
            alert.cancel(_why_cancelled(exc))
            future.add_done_callback(_retrieve)  # its outcome is logged by the thread
            raise


send_hve_notification = HveNotifier


class _AlertInThread:
    """One alert sent in a worker thread that the event loop may cancel; says once how a cancelled alert ended."""

    def __init__(self) -> None:
        self.token = CancelToken()
        self._lock = threading.Lock()
        self._ended: tuple[Outcome | None, BaseException | None] | None = None

    def run(self, send: Callable[[Any], Outcome], context: Any) -> Outcome:
        """In the worker thread: render and send unless cancelled first; the send looks at the token."""
        with cancellable(self.token):
            try:
                if self.token.cancelled:  # before the thread got to it: not even rendered
                    raise HveCancelledError(f"The alert was cancelled ({self.token.reason}) before it was sent.")
                result = send(context)
            except BaseException as exc:
                self._end(None, exc)
                raise
        self._end(result, None)
        return result

    def cancel(self, reason: str) -> None:
        """On the event loop: no further attempt; logs how the alert ended if the thread is done already."""
        with self._lock:
            self.token.cancel(reason)
            ended = self._ended
        if ended is not None:
            _log_cancelled(reason, *ended)

    def _end(self, result: Outcome | None, error: BaseException | None) -> None:
        with self._lock:
            self._ended = (result, error)
            cancelled = self.token.cancelled
        if cancelled:
            _log_cancelled(self.token.reason, result, error)


def _on_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _why_cancelled(exc: BaseException) -> str:
    message = f": {exc.args[0]}" if exc.args and exc.args[0] else ""
    return f"the task awaiting it was cancelled{message}"


def _log_cancelled(reason: str, result: Outcome | None, error: BaseException | None) -> None:
    """The one line that says how a cancelled alert ended: not sent, or handed over (and what HVE said)."""
    from airflow_provider_hve.alerts.send import Kept

    head = f"HVE alert cancelled ({reason})"
    if isinstance(result, Kept):
        log.warning(
            "%s: not sent; no further attempt; the rendered alert is kept in the outbox (%s) for the next flush. %s",
            head,
            result.path,
            result.reason,
        )
    elif result is not None:
        log.warning(
            "%s after it was handed over: HVE accepted %s for %d recipient(s).",
            head,
            result.message_id,
            len(result.accepted),
        )
    elif isinstance(error, HveConnectionError) and error.in_flight:
        log.error("%s after it was handed over; its outcome is unknown: %s", head, error)
    elif getattr(error, "accepted", ()):
        log.error("%s: handed over to %s only: %s", head, ", ".join(getattr(error, "accepted", ())), error)
    elif isinstance(error, HveCancelledError):
        log.error("%s: not sent; no further attempt. %s", head, error)
    else:
        log.error("%s: not sent; the attempt under way failed: %s", head, error)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a send nobody awaits any more as seen (the thread logged it)."""
    if not future.cancelled():
        future.exception()


def alert_key_of(context: Mapping[str, Any]) -> str:
    """
    Return the stable key of the alert a callback context describes: its event (``failure``, ``retry``,
    ``success``, ``deadline``, ``sla_miss``), DAG, run, task, map index and try.
    """
    from airflow_provider_hve.alerts.ids import alert_key

    dag = context.get("dag")
    if "deadline" in context:
        dag_run = context.get("dag_run")
        run: Mapping[str, Any] = dag_run if isinstance(dag_run, Mapping) else {}
        deadline = context.get("deadline")
        deadline_id = deadline.get("id") if isinstance(deadline, Mapping) else None
        return alert_key(
            event=f"deadline:{deadline_id}" if deadline_id else "deadline",
            dag_id=run.get("dag_id") or getattr(dag_run, "dag_id", None),
            run_id=run.get("dag_run_id") or run.get("run_id") or getattr(dag_run, "run_id", None),
        )
    if "slas" in context:  # Airflow 2.11's sla_miss_callback
        return alert_key(event="sla_miss", dag_id=getattr(dag, "dag_id", None), task_id=str(context.get("task_list")))
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(dag, "dag_id", None) or getattr(ti, "dag_id", None)
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    if "reason" in context:  # a DAG run's callback
        state = str(_value(getattr(context.get("dag_run"), "state", None)) or "")
        if state not in _EVENTS:
            state = "success" if context.get("reason") == "success" else "failed"
        return alert_key(event=_EVENTS[state], dag_id=dag_id, run_id=run_id)
    state = str(_value(getattr(ti, "state", None)) or ("failed" if context.get("exception") else "alert"))
    map_index = getattr(ti, "map_index", -1)
    try_number = getattr(ti, "try_number", None)
    return alert_key(
        event=_EVENTS.get(state, state),
        dag_id=dag_id,
        run_id=run_id,
        task_id=getattr(ti, "task_id", None),
        map_index=map_index if isinstance(map_index, int) else -1,
        try_number=try_number if isinstance(try_number, int) else None,
    )


def deadline_facts(context: Mapping[str, Any]) -> dict[str, Any]:
    """
    Collect what a Deadline Alert says from the context the triggerer hands its callback (Airflow 3.1+).

    That context holds the DAG run (as JSON) and the deadline, not a task instance.
    """
    dag_run = context.get("dag_run")
    run: Mapping[str, Any] = dag_run if isinstance(dag_run, Mapping) else {}
    deadline = context.get("deadline")
    missed = deadline.get("deadline_time") if isinstance(deadline, Mapping) else None
    dag_id = run.get("dag_id") or getattr(dag_run, "dag_id", None)
    run_id = run.get("dag_run_id") or run.get("run_id") or getattr(dag_run, "run_id", None)
    facts: dict[str, Any] = {
        "kind": "dag",
        "dag_id": dag_id,
        "task_id": None,
        "run_id": run_id,
        "logical_date": run.get("logical_date"),
        "state": "deadline_missed",
        "state_label": "missed its deadline",
        "reason": None,
        "exception_type": None,
        "exception_message": None,
        "log_url": None,
        "failed_tasks": [],
    }
    facts["details"] = [
        (label, value)
        for label, value in (
            ("DAG", dag_id),
            ("Run", run_id),
            ("Logical date", run.get("logical_date")),
            ("Queued at", run.get("queued_at")),
            ("Deadline", missed.isoformat() if isinstance(missed, dt.datetime) else missed),
            ("Run state", run.get("state")),
        )
        if value not in (None, "")
    ]
    return facts


def notification_facts(context: Mapping[str, Any]) -> dict[str, Any]:
    """
    Collect what an alert says from an Airflow callback context (task or DAG level).

    The exception text passes through Airflow's secret masker first.
    """
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    kind = "dag" if "reason" in context else "task"
    reason = context.get("reason")
    dag_id = getattr(dag, "dag_id", None) or getattr(ti, "dag_id", None)
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    logical_date = context.get("logical_date")
    exception = context.get("exception")

    if kind == "dag":
        dag_run = context.get("dag_run")
        state = str(_value(getattr(dag_run, "state", None)) or "")
        if state not in _STATE_LABELS:
            state = "success" if reason == "success" else "failed"
    else:
        state = str(_value(getattr(ti, "state", None)) or ("failed" if exception else ""))

    try_number = getattr(ti, "try_number", None) if kind == "task" else None
    max_tries = getattr(ti, "max_tries", None)
    total_tries = max_tries + 1 if isinstance(max_tries, int) else None
    facts: dict[str, Any] = {
        "kind": kind,
        "dag_id": dag_id,
        "task_id": getattr(ti, "task_id", None) if kind == "task" else None,
        "run_id": run_id,
        "logical_date": logical_date.isoformat() if isinstance(logical_date, dt.datetime) else logical_date,
        "state": state,
        "state_label": _STATE_LABELS.get(state, state or "finished"),
        "try_number": try_number,
        "max_tries": total_tries,
        "duration": _duration(ti, context),
        "hostname": getattr(ti, "hostname", None) if kind == "task" else None,
        "reason": reason if reason not in (None, "success", "task_failure") else None,
        "exception_type": type(exception).__name__ if isinstance(exception, BaseException) else None,
        "exception_message": _exception_text(exception),
        "log_url": _log_url(ti) if kind == "task" else None,
        "run_url": _run_url(dag_id, run_id),
        "failed_tasks": _failed_tasks(dag_id, run_id, ti) if kind == "dag" and state != "success" else [],
    }
    if exception is not None and facts["exception_type"] is None:
        facts["exception_type"] = "Error"
    facts["details"] = [
        (label, value)
        for label, value in (
            ("DAG", dag_id),
            ("Task", facts["task_id"]),
            ("Run", run_id),
            ("Logical date", facts["logical_date"]),
            ("State", state),
            ("Try", f"{try_number} of {total_tries}" if try_number and total_tries else try_number),
            ("Duration", facts["duration"]),
            ("Host", facts["hostname"]),
        )
        if value not in (None, "")
    ]
    return facts


def _value(state: Any) -> Any:
    return getattr(state, "value", state)


def _duration(ti: Any, context: Mapping[str, Any]) -> str | None:
    """
    Return how long the task instance ran: its recorded duration, else from its first start to its end (or now).

    A sensor in reschedule mode starts again at every poke: its ``start_date`` is the last poke's, so the
    duration counts from the first poke of the try (Airflow's ``get_first_reschedule_date``).
    """
    recorded = getattr(ti, "duration", None)  # Airflow 2's TaskInstance keeps it
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        seconds = max(0, round(recorded))
    else:
        start = _first_start(ti, context)
        if start is None:
            return None
        end = getattr(ti, "end_date", None)
        # No end yet (a callback of a task still running), or a stale one from an earlier try: until now.
        if not isinstance(end, dt.datetime) or end < start:
            end = dt.datetime.now(tz=start.tzinfo or dt.timezone.utc)
        seconds = max(0, round((end - start).total_seconds()))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def _first_start(ti: Any, context: Mapping[str, Any]) -> dt.datetime | None:
    start = getattr(ti, "start_date", None)
    if not isinstance(start, dt.datetime):
        return None
    if context.get("task_reschedule_count"):
        try:
            first = ti.get_first_reschedule_date(context)
        except Exception as exc:  # outside the task runner (DAG processor): no supervisor to ask
            log.debug("Could not read the first reschedule date: %s", exc)
            first = None
        if isinstance(first, str):  # Airflow 3.0's supervisor hands it over as an ISO string ("...Z")
            import pendulum  # Airflow's own date library, on every version; reads "Z" on Python 3.10 too

            try:
                first = pendulum.parse(first)
            except ValueError:  # pendulum's ParserError is one
                first = None
        if isinstance(first, dt.datetime) and first.tzinfo is not None and first < start:
            return first
    return start


def _exception_text(exception: Any) -> str | None:
    from airflow_provider_hve.redaction import redact_text

    if exception is None:
        return None
    text = redact_text(str(exception), what="the exception text")
    if text is None:
        return "(left out: Airflow's secret masker is unavailable, see the task log)"
    if len(text) > MAX_EXCEPTION_CHARS:
        text = text[:MAX_EXCEPTION_CHARS] + " [...]"
    return text


def _log_url(ti: Any) -> str | None:
    try:
        return str(ti.log_url) if ti is not None else None
    except Exception:
        return None


def _run_url(dag_id: str | None, run_id: str | None) -> str | None:
    """
    Return the Airflow UI address of the DAG run, as the task log link of that version builds it.

    Airflow 3: ``[api] base_url`` + ``/dags/<dag_id>/runs/<run_id>``. Airflow 2.11 keeps the address under
    ``[webserver] base_url`` and has no runs page: its grid view selects the run, ``/dags/<dag_id>/grid?dag_run_id=``.
    """
    if not dag_id or not run_id:
        return None
    from airflow.providers.common.compat.sdk import conf

    from airflow_provider_hve._compat import AIRFLOW_V_3_0_PLUS

    section = "api" if AIRFLOW_V_3_0_PLUS else "webserver"
    base_url = str(conf.get(section, "base_url", fallback=None) or "http://localhost:8080/").rstrip("/")
    if AIRFLOW_V_3_0_PLUS:
        return f"{base_url}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"
    return f"{base_url}/dags/{quote(dag_id)}/grid?{urlencode({'dag_run_id': run_id})}"


def _failed_tasks(dag_id: str | None, run_id: str | None, ti: Any) -> list[str]:
    # Airflow hands a DAG failure callback the task instance that failed last (its state is not always
    # filled in): the fallback when the run's task states cannot be queried.
    last_state = _value(getattr(ti, "state", None)) if ti is not None else None
    known = [ti.task_id] if ti is not None and last_state in (None, "failed") else []
    if not dag_id or not run_id:
        return known
    try:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[run_id])
    except Exception as exc:  # no Execution API from this process (e.g. dag.test()): fall back
        log.debug("Could not list the failed tasks of %s/%s: %s", dag_id, run_id, exc)
        return known
    tasks = states.get(run_id, {}) if isinstance(states, Mapping) else {}
    failed = sorted(task_id for task_id, state in tasks.items() if _value(state) in ("failed", "upstream_failed"))
    return failed or known
