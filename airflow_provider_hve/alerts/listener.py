"""
Failure alerts for a whole deployment, without per-DAG code: an Airflow listener plugin.

Registered through the provider's ``airflow.plugins`` entry point, so every Airflow process that loads plugins
(scheduler, task processes, API server / webserver) has it; it does nothing until ``[hve] alert_to`` names
recipients. It mails a failed task instance (the final try only, unless ``[hve] alert_on_retry``) and a failed
DAG run, collects storms into digests (:mod:`airflow_provider_hve.alerts.digest`), mails "recovered" when a task
that alerted succeeds again (``[hve] alert_recovered``), and threads follow-ups under the first alert.

A listener must never raise into Airflow, nor hold up the scheduler: every hook logs and swallows its errors;
in the scheduler, DAG processor, triggerer and API server the mail is sent by a background thread, in a task
process inline (after the task's own work, where Airflow runs the failure callbacks too).
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from airflow.listeners import hookimpl  # pluggy's marker for project "airflow", on 2.11 and 3.x

from airflow_provider_hve.alerts.config import AlertConfig

log = logging.getLogger(__name__)

# Processes that run one task and exit (Airflow 2.11's ``tasks run`` and its LocalTaskJob, 3.x's task runner): they
# send inline. Any other process that announced itself (a scheduler, DAG processor, triggerer job) sends from a
# background thread.
_TASK_ROLES = frozenset({"TaskCommandMarker", "TaskRunnerMarker", "LocalTaskJob"})
DRAIN_AT_EXIT_SECONDS = 30.0
MAX_ERROR_CHARS = 300


class HveAlertListener:
    """
    The listener: Airflow calls its ``on_*`` hooks (pluggy) on Airflow 2.11 and 3.x alike.

    :param config: the options; default: read ``[hve] alert_*`` on first use.
    :param clock: seconds since the epoch (tests pass a fake one).
    :param background: send in a background thread; default: only in long-running server processes.

    Example (what the plugin does)::

        class HveAlertsPlugin(AirflowPlugin):
            name = "hve_alerts"
            listeners = [HveAlertListener()]
    """

    def __init__(
        self,
        config: AlertConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        background: bool | None = None,
    ) -> None:
        self._config = config
        self.clock = clock
        self.background = background
        self._role: str | None = None
        self._role_pid: int | None = None
        self._worker: _Worker | None = None

    @property
    def config(self) -> AlertConfig:
        if self._config is None:
            from airflow_provider_hve.alerts.config import load_alert_config

            self._config = load_alert_config()
        return self._config

    # Airflow's hooks. Signatures: the arguments common to 2.11 (which adds ``session``) and 3.x; pluggy passes
    # only the arguments a hook implementation names.

    @hookimpl
    def on_starting(self, component: Any) -> None:
        """Remember which process this is (scheduler, task, ...): it decides whether sends go to a thread."""
        # A Job (2.11, 3.x) may not know its job_type yet when it announces itself; its runner's class says.
        runner = getattr(component, "job_runner", None)
        self._role = getattr(component, "job_type", None) or (
            type(runner).__name__.replace("Runner", "") if runner is not None else type(component).__name__
        )
        self._role_pid = os.getpid()

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        """A task instance failed (state ``failed``) or will be retried (``up_for_retry``)."""
        self._guarded(
            "task failure",
            self._task_failed,
            task_instance,
            error,
            server=_is_server_ti(task_instance),
            plain=lambda: (_plain_ti(task_instance), error),
        )

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        """A task instance succeeded: close its alert thread, mail "recovered" if asked."""
        self._guarded(
            "task success",
            self._task_succeeded,
            task_instance,
            server=_is_server_ti(task_instance),
            plain=lambda: (_plain_ti(task_instance),),
        )

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        """A DAG run failed (the scheduler, or a user marking it failed)."""
        self._guarded(
            "DAG run failure",
            self._dag_run_failed,
            dag_run,
            msg,
            server=True,
            plain=lambda: (_plain_dag_run(dag_run), msg),
        )

    # What the hooks do.

    def _guarded(
        self, what: str, handler: Callable[..., Any], *args: Any, server: bool, plain: Callable[[], tuple[Any, ...]]
    ) -> None:
        """
        Run ``handler`` (count the alert in the journal, decide) and the send it returns, never raising into Airflow.

        In a server process (scheduler, API server) only ``plain`` runs in the caller's thread: it copies what the
        alert needs out of Airflow's objects (an ORM task instance never crosses into the thread); the journal's
        lock, the connection lookup and the send run in the background thread.
        """
        try:
            config = self.config
            if not config.enabled:
                return
            if self.background if self.background is not None else (server or self._in_server_process()):
                copied = plain()
                self._thread().submit(what, lambda: _then_run(what, handler(config, *copied)))
            else:
                work = handler(config, *args)
                if work is not None:
                    _run(what, work)
        except Exception:
            log.exception("HVE alert listener: the %s alert failed; Airflow carries on", what)

    def _in_server_process(self) -> bool:
        # Only the process that announced itself: a child it forked (Airflow 2.11's DAG file processor, which fails
        # a zombie's task instance and then leaves with os._exit) sends inline, or its thread's mail would be lost.
        return self._role is not None and self._role not in _TASK_ROLES and self._role_pid == os.getpid()

    def _admit_or_alone(
        self, config: AlertConfig, entry: dict[str, Any], *, thread: str | None
    ) -> tuple[bool, str | None, list[str]] | None:
        """:meth:`_admit`; when the journal cannot be used, the alert goes out on its own (no digest, no thread)."""
        try:
            return self._admit(config, entry, thread=thread)
        except OSError as exc:  # disk full, an unwritable alert_dir, a lock held too long
            log.warning(
                "HVE alert listener: the journal in %s cannot be used (%s); the alert is sent on its own, without "
                "digest or thread",
                config.journal_dir,
                exc,
            )
            return True, None, []

    def _task_failed(self, config: AlertConfig, ti: Any, error: Any) -> Callable[[], None] | None:
        from airflow_provider_hve.alerts.ids import alert_key

        state = _value(getattr(ti, "state", None))
        if not config.wants_dag(ti.dag_id) or (state == "up_for_retry" and not config.on_retry):
            return None
        event = "retry" if state == "up_for_retry" else "failure"
        map_index = getattr(ti, "map_index", -1)
        key = alert_key(
            event=event,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=map_index,
            try_number=getattr(ti, "try_number", None),
        )
        entry = {
            "key": key,
            "kind": "task",
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "run_id": ti.run_id,
            "map_index": map_index,
            "try_number": getattr(ti, "try_number", None),
            "max_tries": _total_tries(ti),
            "when": self._now_iso(),
            "log_url": _log_url(ti),
            "state": state,
            "error": _error_text(error),
        }
        recipients = _task_recipients(ti, config)  # before the journal counts it: nothing left to fail after
        decision = self._admit_or_alone(config, entry, thread=_thread_key(ti))
        if decision is None:
            return None
        single, reply_to, due = decision
        context = {"ti": ti, "task_instance": ti, "run_id": ti.run_id, "exception": error}
        logical_date = getattr(ti, "logical_date", None) or getattr(ti, "execution_date", None)
        if logical_date is not None:
            context["logical_date"] = logical_date

        def work() -> None:
            from airflow_provider_hve.alerts.mail import send_alert

            if single:
                send_alert(config, key=key, to=recipients, context=context, in_reply_to=reply_to)
            self._send_due(config, due)

        return work

    def _dag_run_failed(self, config: AlertConfig, dag_run: Any, msg: str) -> Callable[[], None] | None:
        from types import SimpleNamespace

        from airflow_provider_hve.notifications.hve import alert_key_of

        if not config.on_dag_run or not config.wants_dag(dag_run.dag_id):
            return None
        context: dict[str, Any] = {
            "dag": SimpleNamespace(dag_id=dag_run.dag_id),
            "dag_run": SimpleNamespace(dag_id=dag_run.dag_id, run_id=dag_run.run_id, state="failed"),
            "run_id": dag_run.run_id,
            "reason": msg or "task_failure",
        }
        # The key HveNotifier derives as a DAG's on_failure_callback: both send the same Message-ID.
        key = alert_key_of(context)
        entry = {
            "key": key,
            "kind": "dag",
            "dag_id": dag_run.dag_id,
            "task_id": None,
            "run_id": dag_run.run_id,
            "map_index": None,
            "try_number": None,
            "when": self._now_iso(),
            "log_url": None,
            "state": "failed",
            "error": msg,
        }
        decision = self._admit_or_alone(config, entry, thread=None)
        if decision is None:
            return None
        single, _, due = decision
        logical_date = getattr(dag_run, "logical_date", None) or getattr(dag_run, "execution_date", None)
        if logical_date is not None:
            context["logical_date"] = logical_date

        def work() -> None:
            from airflow_provider_hve.alerts.mail import send_alert

            if single:
                send_alert(config, key=key, to=list(config.to), context=context)
            self._send_due(config, due)

        return work

    def _task_succeeded(self, config: AlertConfig, ti: Any) -> Callable[[], None] | None:
        from airflow_provider_hve.alerts.ids import alert_key
        from airflow_provider_hve.alerts.journal import Journal

        if not config.wants_dag(ti.dag_id):
            return None
        with Journal(config.journal_dir).locked() as state:
            thread = state.threads.pop(_thread_key(ti), None)
        if thread is None or not config.recovered:
            return None
        key = alert_key(
            event="recovered",
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=getattr(ti, "map_index", -1),
            try_number=getattr(ti, "try_number", None),
        )
        recovered = {
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "run_id": ti.run_id,
            "try_number": getattr(ti, "try_number", None),
            "when": self._now_iso(),
            "log_url": _log_url(ti),
            "first_run_id": thread.get("run_id"),
            "first_when": thread.get("when"),
        }
        recipients = _task_recipients(ti, config)

        def work() -> None:
            from airflow_provider_hve.alerts.mail import send_alert
            from airflow_provider_hve.reports import packaged_template

            send_alert(
                config,
                key=key,
                to=recipients,
                context={"recovered": recovered},
                subject="[Airflow] {{ recovered.dag_id }}.{{ recovered.task_id }} recovered",
                html_content=packaged_template("recovered.html.j2"),
                in_reply_to=thread.get("message_id"),
            )

        return work

    def _admit(
        self, config: AlertConfig, entry: dict[str, Any], *, thread: str | None
    ) -> tuple[bool, str | None, list[str]] | None:
        """
        Under the journal's lock: count the alert, collect it or not, open or follow its thread, close a digest
        whose window ended. Return (send it on its own, Message-ID it answers, due digests claimed).
        """
        from airflow_provider_hve.alerts.digest import admit, close_if_due
        from airflow_provider_hve.alerts.journal import Journal
        from airflow_provider_hve.alerts.mail import message_id_for

        journal = Journal(config.journal_dir)
        first_id = message_id_for(entry["key"], config)  # may ask Airflow for the connection: not under the lock
        now = self.clock()
        with journal.locked() as state:
            close_if_due(journal, state, now, config, force=False)
            single = admit(state, now, config)
            reply_to = None
            if not single:
                journal.append_pending(entry)
                state.pending_count += 1
            if thread is not None:
                opened = state.threads.get(thread)
                if opened is not None:
                    reply_to = opened.get("message_id")
                elif single:  # the first alert of this task since it last succeeded: later ones answer it
                    state.threads[thread] = {
                        "message_id": first_id,
                        "run_id": entry["run_id"],
                        "when": entry["when"],
                        "at": now,
                    }
            due = journal.claim_due()
        return single, reply_to, due

    def _send_due(self, config: AlertConfig, due: list[str]) -> None:
        from airflow_provider_hve.alerts.digest import send_claimed
        from airflow_provider_hve.alerts.journal import Journal

        if due:
            send_claimed(Journal(config.journal_dir), due, config)

    def _now_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.clock(), tz=dt.timezone.utc).isoformat(timespec="seconds")

    def _thread(self) -> _Worker:
        if self._worker is None or self._worker.pid != os.getpid():  # none yet, or inherited through a fork
            self._worker = _Worker()
        return self._worker

    def drain(self, timeout: float = DRAIN_AT_EXIT_SECONDS) -> bool:
        """Wait until the background thread sent what it was given (at most ``timeout`` s); True if it did."""
        return self._worker is None or self._worker.drain(timeout)


class _Worker:
    """One background thread per process that sends alerts in order; drained (bounded) at exit."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.queue: queue.Queue[tuple[str, Callable[[], None]]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="hve-alerts", daemon=True)
        self._thread.start()
        atexit.register(self.drain, DRAIN_AT_EXIT_SECONDS)

    def submit(self, what: str, work: Callable[[], None]) -> None:
        self.queue.put((what, work))

    def _loop(self) -> None:
        while True:
            what, work = self.queue.get()
            try:
                _run(what, work)
            finally:
                self.queue.task_done()

    def drain(self, timeout: float) -> bool:
        give_up = time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if os.getpid() != self.pid:
                return False
            if time.monotonic() > give_up:
                waiting = [what for what, _ in list(self.queue.queue)]
                log.error(
                    "HVE alert listener: %d alert(s) not sent after waiting %.0f s (HVE or the journal too slow); "
                    "they are lost with this process: %s",
                    self.queue.unfinished_tasks,
                    timeout,
                    ", ".join(waiting) or "the one being sent",
                )
                return False
            time.sleep(0.05)
        return True


def _run(what: str, work: Callable[[], None]) -> None:
    try:
        work()
    except Exception:
        log.exception("HVE alert listener: sending the %s alert failed", what)


def _then_run(what: str, work: Callable[[], None] | None) -> None:
    if work is not None:
        work()


def _plain_ti(ti: Any) -> Any:
    """What an alert reads of a task instance, copied into a plain object (safe to hand to another thread)."""
    from types import SimpleNamespace

    task = getattr(ti, "task", None)
    email = getattr(task, "email", None)
    return SimpleNamespace(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        map_index=getattr(ti, "map_index", -1),
        try_number=getattr(ti, "try_number", None),
        max_tries=getattr(ti, "max_tries", None),
        state=_value(getattr(ti, "state", None)),
        log_url=_log_url(ti),
        hostname=getattr(ti, "hostname", None),
        start_date=getattr(ti, "start_date", None),
        end_date=getattr(ti, "end_date", None),
        duration=getattr(ti, "duration", None),
        logical_date=getattr(ti, "logical_date", None) or getattr(ti, "execution_date", None),
        task=SimpleNamespace(
            email=list(email) if isinstance(email, (list, tuple)) else email, owner=getattr(task, "owner", None)
        ),
    )


def _plain_dag_run(dag_run: Any) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        logical_date=getattr(dag_run, "logical_date", None) or getattr(dag_run, "execution_date", None),
    )


def _is_server_ti(ti: Any) -> bool:
    """On Airflow 3 a task process hands hooks a RuntimeTaskInstance; the scheduler / API server an ORM one."""
    from airflow_provider_hve._compat import AIRFLOW_V_3_0_PLUS

    return AIRFLOW_V_3_0_PLUS and not type(ti).__module__.startswith("airflow.sdk")


def _value(state: Any) -> Any:
    return getattr(state, "value", state)


def _thread_key(ti: Any) -> str:
    from airflow_provider_hve.alerts.ids import alert_key

    return alert_key(event="thread", dag_id=ti.dag_id, task_id=ti.task_id, map_index=getattr(ti, "map_index", -1))


def _total_tries(ti: Any) -> int | None:
    max_tries = getattr(ti, "max_tries", None)
    return max_tries + 1 if isinstance(max_tries, int) else None


def _log_url(ti: Any) -> str | None:
    try:
        url = ti.log_url
    except Exception:
        return None
    return None if url is None else str(url)


def _error_text(error: Any) -> str | None:
    from airflow_provider_hve.redaction import redact_text

    if error is None:
        return None
    text = redact_text(str(error), what="the exception text") or "(left out: secrets could not be masked)"
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " [...]"


def _task_recipients(ti: Any, config: AlertConfig) -> list[str]:
    """``[hve] alert_to``, or the task's own ``email`` (else an owner that is an address) when routing is on."""
    if config.route_to_task_email:
        task = getattr(ti, "task", None)
        email = getattr(task, "email", None)
        if isinstance(email, str):
            email = [part.strip() for part in email.replace(";", ",").split(",") if part.strip()]
        if email:
            return list(email)
        owners = [o.strip() for o in str(getattr(task, "owner", "") or "").split(",") if "@" in o]
        if owners:
            return owners
    return list(config.to)


listener = HveAlertListener()
"""The instance the plugin registers."""


def flush_digests(*, force: bool = False) -> int:
    """Send the digests whose window ended; see :func:`airflow_provider_hve.alerts.digest.flush_digests`."""
    from airflow_provider_hve.alerts.digest import flush_digests as flush

    return flush(force=force, clock=listener.clock)
