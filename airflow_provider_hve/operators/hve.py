"""HveEmailOperator: templated reports and messages through Microsoft 365 High Volume Email."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_hve.templating import EmailTemplating, RowTemplating

UNKNOWN_OUTCOME_KEY = "hve_email/unknown_outcome"
"""State key (task_state_store or Variables): the message a try handed over without getting HVE's answer."""
ALREADY_ACCEPTED_KEY = "hve_email/already_accepted"
"""State key (task_state_store or Variables): the recipients HVE accepted the message for in a failed try."""

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.message import OutgoingMessage

AddressArg = str | Iterable[str] | None
# connection.DEFAULT_CONN_ID, spelt out: a DAG file that imports the operator need not import connection.py
# (tests/test_provider.py keeps the two equal).
DEFAULT_CONN_ID = "hve_default"


log = logging.getLogger(__name__)


class HveEmailOperator(EmailTemplating, BaseOperator):
    """
    Send an e-mail, or a report built from rows of data, through HVE.

    Every argument is templated. ``html_content`` and ``text_content`` may name a template file
    (``.html``, ``.j2``, ``.jinja2``, ``.txt``) looked up in the DAG folder. HTML renders with autoescape
    on; the plain-text alternative is derived from the HTML unless ``text_content`` is given. The body
    templates see ``data`` (the rows) and ``report`` (``title``, ``columns``, ``rows``, ``row_count``,
    ``run``, ``csv_filename``).

    :param to: recipients: a list or a comma/semicolon separated string. (templated)
    :param subject: the subject line. (templated)
    :param html_content: HTML body or template file; with ``data`` and no body, the packaged report
        template is used. (templated)
    :param text_content: plain-text body or template file. (templated)
    :param cc: Cc recipients. (templated)
    :param bcc: Bcc recipients, in the envelope only. (templated)
    :param from_email: From header, may carry a display name; defaults to the connection's. (templated)
    :param reply_to: Reply-To addresses. (templated)
    :param files: paths of files to attach. (templated)
    :param headers: extra ``X-`` headers. (templated)
    :param images: inline images, content id -> file path, shown with ``<img src="cid:ID">``. (templated)
    :param data: report rows: a list of dicts, usually an upstream task's output (XComArg, resolved at run
        time, also inside a literal row). Rows are data: a string inside a row is never rendered as a
        template; only a top-level template string (``"{{ ti.xcom_pull('extract') }}"``) is, and what it
        renders to is read back as rows (JSON, or the rows' Python text).
    :param title: report title; defaults to the subject. (templated)
    :param csv_filename: also attach ``data`` as a CSV file of this name. (templated)
    :param dry_run: render and validate everything and write the ``.eml`` (mode 0600; a mapped task's file
        name ends with its map index) instead of sending it. The XCom lists the To and Cc recipients and
        only counts the Bcc ones.
    :param dry_run_dir: where a dry run writes (default: ``$AIRFLOW_HOME/hve_dry_run``).
    :param resend_unknown: if a try lost the connection after handing the message over (HVE may have it), a
        retry fails without sending it again (the error says how to check) unless this is True, which prefers
        a possible duplicate to a possible loss (the message goes again under the same Message-ID). Recipients
        HVE accepted in a failed try never get it again: a retry sends the message (same Message-ID) only to
        the others. Both are recorded in the task's ``task_state_store`` (Airflow 3.3+), else in Airflow
        Variables scoped to the task instance, deleted when it succeeds.
    :param at_least_once: keep no record at all (no ``task_state_store`` or Variable writes): a retry sends the
        message again to every recipient. Only for a deployment where tasks may not write that record; by
        default a record that cannot be written stops the send (it never goes without one).
    :param hve_conn_id: the ``hve`` connection.

    Example::

        HveEmailOperator(
            task_id="mail_report",
            to=["sales@contoso.com"],
            subject="Sales {{ ds }}",
            data=extract.output,
            csv_filename="sales_{{ ds }}.csv",
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
        "images",
        "data",
        "title",
        "csv_filename",
        "hve_conn_id",
    )
    row_fields: Sequence[str] = ("data",)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "html_content": "html",
        "text_content": "txt",
        "headers": "json",
        "data": "json",
    }
    ui_color = "#cfe6fa"

    def __init__(
        self,
        *,
        to: AddressArg,
        subject: str,
        html_content: str | None = None,
        text_content: str | None = None,
        cc: AddressArg = None,
        bcc: AddressArg = None,
        from_email: str | None = None,
        reply_to: AddressArg = None,
        files: Iterable[str] | None = None,
        headers: Mapping[str, str] | None = None,
        images: Mapping[str, str] | None = None,
        data: Any = None,
        title: str | None = None,
        csv_filename: str | None = None,
        dry_run: bool = False,
        dry_run_dir: str | None = None,
        resend_unknown: bool = False,
        at_least_once: bool = False,
        hve_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.resend_unknown = resend_unknown
        self.at_least_once = at_least_once
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
        self.images = images
        self.data = data
        self.title = title
        self.csv_filename = csv_filename
        # Not self.dry_run: that is BaseOperator's method (render templates only).
        self.send_dry_run = dry_run
        self.dry_run_dir = dry_run_dir
        self.hve_conn_id = hve_conn_id

    def body_template_context(self, context: Any) -> dict[str, Any]:
        """Expose ``data`` and ``report`` to the body templates; use the report template if no body."""
        from airflow_provider_hve.reports import REPORT_TEMPLATE, packaged_template

        if self.data is None:
            return {}
        table = self._table()
        if self.html_content is None and self.text_content is None:
            self.html_content = packaged_template(REPORT_TEMPLATE)
        return {"data": list(table.rows), "report": _report(self, table, context)}

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_hve.exceptions import HveConnectionError, HveError, HveSendError
        from airflow_provider_hve.hooks.hve import HveHook

        hook = HveHook(hve_conn_id=self.hve_conn_id)
        outgoing = self._build(hook)
        if self.send_dry_run:
            path = _write_eml(outgoing, self._dry_run_path(context))
            # Bcc addresses are in the envelope only: XCom and the log are read by more people than the mail.
            visible = _visible_recipients(self, outgoing)
            hidden = len(outgoing.recipients) - len(visible)
            self.log.info(
                "Dry run: not sent. Would send %s to %d recipient(s) (%s%s); wrote %s",
                outgoing.message["Message-ID"],
                len(outgoing.recipients),
                ", ".join(visible),
                f" and {hidden} Bcc" if hidden else "",
                path,
            )
            return {
                "dry_run": True,
                "eml_path": path,
                "message_id": outgoing.message["Message-ID"],
                "recipients": visible,
                "bcc_count": hidden,
            }
        store = _delivery_store(self, context)
        if (done := _completed_before(self, store)) is not None:
            message_id = done.get("message_id")
            return {"dry_run": False, "outcome": "accepted", "message_id": message_id, "accepted": [], "refused": {}}
        stored = store.get(UNKNOWN_OUTCOME_KEY) if store is not None else None
        unknown: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
        if unknown and not self.resend_unknown:
            # An earlier try handed the message over and never recorded HVE's answer (the connection broke, or the
            # worker died): it may have been delivered. Sending it again could mail every recipient twice;
            # calling it a success could hide a message nobody got. Fail, without sending, and say what to do.
            how = (
                "ended (its worker died or was killed) without recording HVE's answer"
                if unknown.get("write_ahead")
                else "the connection broke before HVE's answer"
            )
            raise HveSendError(
                f"Not sending again: try {unknown.get('try_number')} handed {unknown.get('message_id')} to HVE "
                f"(connection {self.hve_conn_id!r}) and {how}, so it may have been delivered. Check a "
                f"recipient's mailbox (search for that Message-ID). To send it again anyway, set "
                f"resend_unknown=True on this task and clear it."
            )
        if unknown and unknown.get("message_id"):
            # resend_unknown: the same message again, under the Message-ID of the try whose outcome is unknown (a
            # mailbox store that has it already can drop the copy; the message trace shows one message).
            outgoing = _without_recipients(outgoing, (), str(unknown["message_id"]))
            self.log.warning(
                "resend_unknown=True: sending %s again (try %s handed it over without HVE's answer).",
                unknown["message_id"],
                unknown.get("try_number"),
            )
        stored = store.get(ALREADY_ACCEPTED_KEY) if store is not None else None
        delivered: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
        earlier = _accepted_before(outgoing.recipients, delivered.get("accepted") or ())
        if earlier:
            outgoing = _without_recipients(outgoing, earlier, str(delivered.get("message_id") or ""))
            self.log.info(
                "Try %s already delivered %s to %s: sending it only to the %d other recipient(s).",
                delivered.get("try_number"),
                outgoing.message["Message-ID"],
                ", ".join(earlier),
                len(outgoing.recipients),
            )
        message_id = str(outgoing.message["Message-ID"])
        try_number = getattr(context.get("ti"), "try_number", None)
        if store is not None and outgoing.recipients:
            # Write-ahead: recorded before a byte goes to HVE, so a worker killed mid-send leaves a record that
            # the next try reads as "unknown" (never sent again unless resend_unknown), not as "never sent".
            intent = {"message_id": message_id, "try_number": try_number, "write_ahead": True}
            try:
                store.set(UNKNOWN_OUTCOME_KEY, intent)
            except HveError:
                raise  # VariableStore's own, which says what to check
            except Exception as exc:
                raise HveError(
                    f"Could not write the record of this send (kept so a retry never mails anyone twice), so "
                    f"nothing was sent: {type(exc).__name__}: {exc}. To send without a record (a retry may then "
                    "mail a recipient twice), set at_least_once=True on the task."
                ) from exc
        from airflow_provider_hve.smtp import SendProgress

        progress = SendProgress()
        try:
            if not outgoing.recipients:
                result: dict[str, Any] = {"message_id": message_id, "accepted": [], "refused": {}}
            else:
                result = hook.send_message(outgoing, progress=progress).as_dict()
        except HveError as exc:
            if store is not None:
                if exc.accepted:
                    _record_accepted(store, message_id, try_number, [*earlier, *exc.accepted])
                if isinstance(exc, HveConnectionError) and exc.in_flight:
                    store.set(UNKNOWN_OUTCOME_KEY, {"message_id": message_id, "try_number": try_number})
                elif outgoing.recipients and not unknown:
                    store.delete(UNKNOWN_OUTCOME_KEY)  # certainly not delivered beyond exc.accepted: a retry sends
                elif outgoing.recipients:
                    # A resend of a message whose first hand-over's outcome is unknown: it stays unknown (its
                    # Message-ID kept), so the next try resends it under the same Message-ID, never a new one.
                    store.set(UNKNOWN_OUTCOME_KEY, unknown)
            raise
        except BaseException:
            # Interrupted (execution_timeout, SIGTERM) by something that says nothing about the send: what it had
            # done is in `progress`. Outside a hand-over nothing is on its way to HVE: the retry may send.
            if store is not None and outgoing.recipients:
                if progress.accepted:
                    _record_accepted(store, message_id, try_number, [*earlier, *progress.accepted])
                if not progress.handing_over:
                    if unknown:
                        store.set(UNKNOWN_OUTCOME_KEY, unknown)  # still unknown, under its first Message-ID
                    else:
                        store.delete(UNKNOWN_OUTCOME_KEY)
            raise
        if store is not None:
            held = [key for key, value in ((ALREADY_ACCEPTED_KEY, delivered), (UNKNOWN_OUTCOME_KEY, unknown)) if value]
            if outgoing.recipients and UNKNOWN_OUTCOME_KEY not in held:
                held.append(UNKNOWN_OUTCOME_KEY)
            _succeeded(store, held, {"message_id": message_id, "try_number": try_number})
        result["accepted"] = [*earlier, *result["accepted"]]
        return {"dry_run": False, "outcome": "accepted", **result}

    def _table(self) -> Any:
        from airflow_provider_hve.reports import table_from_data

        return table_from_data(self.data)

    def _build(self, hook: HveHook) -> OutgoingMessage:
        from airflow_provider_hve.message import Attachment

        attachments = []
        if self.csv_filename:
            if self.data is None:
                from airflow_provider_hve.exceptions import HveConfigError

                raise HveConfigError("Argument 'csv_filename' needs 'data' (the rows to write as CSV).")
            attachments.append(Attachment(self.csv_filename, self._table().to_csv(), "text/csv"))
        return hook.build_message(
            self.to,
            self.subject,
            self.html_content,
            text_content=self.text_content,
            cc=self.cc,
            bcc=self.bcc,
            reply_to=self.reply_to,
            from_email=self.from_email,
            files=self.files,
            headers=self.headers,
            images=self.images,
            attachments=attachments,
        )

    def _dry_run_path(self, context: Context) -> str:
        folder = self.dry_run_dir or os.path.join(os.environ.get("AIRFLOW_HOME", "."), "hve_dry_run")
        run_id = str(context.get("run_id") or "manual")
        name = f"{self.dag_id}__{self.task_id}__{run_id}"
        map_index = getattr(context.get("ti"), "map_index", None)
        if isinstance(map_index, int) and map_index >= 0:  # mapped tasks share dag, task and run ids
            name += f"__{map_index}"
        return os.path.join(folder, re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".eml")


def _delivery_store(operator: BaseOperator, context: Any) -> Any:
    """
    The store of the operator's delivery record, or ``None`` (said in the log): ``at_least_once=True``, or no task
    instance to scope it to (``execute`` called by hand, which has no retries to protect).
    """
    if getattr(operator, "at_least_once", False):
        operator.log.warning(
            "at_least_once=True: no delivery record is kept, so a retry of this task sends to every recipient again."
        )
        return None
    store = _state_store(context)
    if store is None:
        operator.log.warning(
            "No task instance in the context: nowhere to record what was delivered, so a retry may send it again."
        )
    return store


def _state_store(context: Any) -> Any:
    """
    Where this task keeps what it sent across its retries: ``task_state_store`` (Airflow 3.3+), else Airflow
    Variables scoped to the task instance (:class:`~airflow_provider_hve.state.VariableStore`); ``None`` without a
    task instance (a test calling ``execute`` by hand).
    """
    store = context.get("task_state_store")
    if store is not None:
        return store
    ti = context.get("ti")
    if ti is None or getattr(ti, "run_id", None) is None:
        return None
    from airflow_provider_hve.state import VariableStore

    map_index = getattr(ti, "map_index", -1)
    try_number = getattr(ti, "try_number", None)
    return VariableStore(
        ti.dag_id,
        ti.run_id,
        ti.task_id,
        map_index if isinstance(map_index, int) else -1,
        first_try=try_number == 1,
    )


def _succeeded(store: Any, keys: Sequence[str], completed: dict[str, Any]) -> None:
    """
    The try sent everything: record that first (``completed``: a retry of the task instance, should the task still
    fail, sends nothing), then drop the records. Variables go all at once (the index keeps "completed" until they
    are gone); in ``task_state_store`` only ``keys`` (Airflow expires the rest).
    """
    from airflow_provider_hve.state import COMPLETED_KEY, VariableStore

    store.set(COMPLETED_KEY, completed)
    if isinstance(store, VariableStore):
        return
    for key in keys:
        try:
            store.delete(key)
        except Exception as exc:  # the send is done; the completed mark covers what is left
            log.warning("Could not delete %r from task_state_store (%s: %s).", key, type(exc).__name__, exc)


def _refuse_to_lose_the_record(store: Any, summary: dict[str, Any], context: Any) -> None:
    """
    Airflow 3.3 with ``[state_store] clear_on_success = True`` deletes the task's ``task_state_store`` when it
    succeeds: the record of a merge that succeeds with rows unknown would be gone, and releasing them (clear with
    resend_unknown=True) would mail every row again. Fail instead, keeping the record.
    """
    from airflow_provider_hve.exceptions import HveSendError
    from airflow_provider_hve.state import VariableStore

    if isinstance(store, VariableStore) or "task_state_store" not in context:
        return
    from airflow.providers.common.compat.sdk import conf

    if not conf.getboolean("state_store", "clear_on_success", fallback=False):
        return
    context["ti"].xcom_push(key="hve_summary", value=summary)
    raise HveSendError(
        f"HVE mail merge: {len(summary['unknown'])} row(s) unknown (handed over without HVE's answer), and this "
        "Airflow deletes a task's task_state_store when it succeeds ([state_store] clear_on_success = True), which "
        "would lose the record that lets a cleared try send only those rows. The task fails to keep it: check the "
        "unknown rows (XCom 'hve_summary'), then set resend_unknown=True and clear the task to send them."
    )


def _completed_before(operator: BaseOperator, store: Any) -> dict[str, Any] | None:
    """What an earlier try that sent everything recorded (then its task failed, or was killed, before success)."""
    from airflow_provider_hve.state import COMPLETED_KEY

    done = store.get(COMPLETED_KEY) if store is not None else None
    if not isinstance(done, dict):
        return None
    operator.log.warning(
        "Try %s of this task instance already sent everything (its record says so) and ended before Airflow "
        "recorded the success: nothing is sent again.",
        done.get("try_number"),
    )
    _succeeded(store, (), done)  # finish the clean-up that try could not
    return done


def _task_instance_id(context: Any) -> str:
    """What names this task instance in every try: DAG, run, task and map index."""
    ti = context.get("ti")
    parts = (getattr(ti, name, None) for name in ("dag_id", "run_id", "task_id", "map_index"))
    return "\0".join(str(part) for part in parts)


def _address_hashes(addresses: Sequence[str]) -> list[str]:
    """How the record names recipients: a hash of each address (Variables and XCom are read by many)."""
    import hashlib

    return [hashlib.sha256(address.lower().encode()).hexdigest()[:32] for address in addresses]


def _record_accepted(store: Any, message_id: str, try_number: Any, accepted: Sequence[str]) -> None:
    """Record the recipients HVE accepted the message for, by this try and earlier ones (as hashes)."""
    hashes = list(dict.fromkeys(_address_hashes(accepted)))
    store.set(ALREADY_ACCEPTED_KEY, {"message_id": message_id, "try_number": try_number, "accepted": hashes})


def _accepted_before(recipients: Sequence[str], recorded: Sequence[str]) -> list[str]:
    """The recipients an earlier try's record lists as accepted (by the hashes of their addresses)."""
    recorded_set = {str(entry) for entry in recorded}
    return [
        address
        for address, digest in zip(recipients, _address_hashes(recipients), strict=True)
        if digest in recorded_set
    ]


def _without_recipients(outgoing: OutgoingMessage, delivered: Sequence[str], message_id: str) -> OutgoingMessage:
    """The message of an earlier try (its Message-ID) for the recipients HVE has not accepted it for yet."""
    import dataclasses

    have = {address.lower() for address in delivered}
    message = outgoing.message
    if message_id:
        # The same message as the one the others received: one Message-ID in every mailbox and message trace.
        message.replace_header("Message-ID", message_id)
    return dataclasses.replace(
        outgoing,
        recipients=tuple(address for address in outgoing.recipients if address.lower() not in have),
        payload=b"",  # serialised again by the session, with the Message-ID above
    )


def _report(operator: HveEmailOperator, table: Any, context: Any) -> dict[str, Any]:
    ti = context.get("ti")
    logical_date = context.get("logical_date")
    run = None
    if ti is not None:
        run = {
            "dag_id": getattr(ti, "dag_id", None),
            "task_id": getattr(ti, "task_id", None),
            "run_id": getattr(ti, "run_id", None),
            "logical_date": logical_date.isoformat() if logical_date else None,
        }
    return {
        "title": operator.title or operator.subject,
        "columns": list(table.columns),
        "rows": list(table.rows),
        "row_count": len(table),
        "run": run,
        "csv_filename": operator.csv_filename,
    }


def _write_eml(outgoing: OutgoingMessage, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # Owner-only (0600): the message may hold personal data. fchmod too, for a file left by an earlier run.
    from airflow_provider_hve.exceptions import HveConfigError

    # O_NOFOLLOW: a symbolic link planted under the file's name is not followed (nor its target truncated).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise HveConfigError(
                f"Dry run: {path!r} is a symbolic link; it is not followed. Remove it, or set dry_run_dir to a "
                f"folder only this account can write to."
            ) from exc
        raise
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(outgoing.message.as_bytes())
    return path


def _visible_recipients(operator: HveEmailOperator, outgoing: OutgoingMessage) -> list[str]:
    """Return the envelope recipients the To and Cc headers show (not the Bcc ones), in envelope order."""
    from airflow_provider_hve.addresses import parse_addresses

    # build_message has validated both already.
    shown = {box.addr_spec for name in ("to", "cc") for box in parse_addresses(getattr(operator, name), smtputf8=True)}
    return [r for r in outgoing.recipients if r in shown]


class HveMailMergeOperator(RowTemplating, BaseOperator):
    """
    Send one personalised message per recipient row: a mail merge at the speed of the server.

    One token for the run, messages sent one by one over long-lived, pipelined SMTP sessions (``sessions``
    in parallel), optionally rate-limited. Every row ends accepted, refused (with HVE's reply), invalid
    (bad address or template: never sent) or unknown (the connection broke after handing it over). Delivered
    rows are recorded as they go, in the task's ``task_state_store`` on Airflow 3.3+ and in Airflow Variables
    before (deleted when the task succeeds with no row unknown), so a retry skips them.

    ``subject``, ``html_content`` and ``text_content`` are rendered per row with Airflow's context plus
    ``recipient`` (the row); undefined variables are errors. They may name template files (``.html``,
    ``.j2``, ``.jinja2``, ``.txt``) in the DAG folder. Give ``text_content`` too for speed: deriving
    text from HTML costs about a millisecond a message.

    :param recipients: rows (list of dicts, usually an upstream task's output, resolved at run time), each
        with the address under ``address_key`` and its own template variables. Rows are data: a string inside
        a row is never rendered as a template; only a top-level template string is.
    :param subject: subject template.
    :param html_content: HTML template (autoescaped).
    :param text_content: plain-text template.
    :param address_key: the row key holding the address.
    :param from_email: From header; defaults to the connection's. (templated)
    :param reply_to: Reply-To. (templated)
    :param files: files attached to every message. (templated)
    :param headers: extra headers. (templated)
    :param images: inline images, content id -> path. (templated)
    :param sessions: parallel SMTP sessions, 1 to 8 (HVE limits concurrent connections; cap tenant-wide
        with an Airflow pool).
    :param rate_per_minute: at most this many messages a minute; ``None``: as fast as HVE accepts.
    :param fail_on_refused: fail the task (after everyone else was tried) if any row was refused, invalid
        or unknown; the summary is then pushed to XCom under ``hve_summary``.
    :param progress_interval: seconds between progress lines.
    :param max_reconnects: how often in a row a session may be re-opened after HVE broke the connection
        without accepting a message in between.
    :param retry_budget: retries the whole run may spend (a resend after a 4xx or a reconnect costs one);
        default 5% of the rows, at least 20.
    :param resend_unknown: send again, under the same Message-ID, the rows an earlier try handed over without
        HVE's answer (``unknown``); default: they stay ``unknown``, are never resent and count as problems
        for ``fail_on_refused``. Check them first (message trace by Message-ID): each row's Message-ID is the
        same in every try of the task instance.
    :param at_least_once: keep no delivery record (no ``task_state_store`` or Variable writes): a retry sends
        every row again. Only for a deployment where tasks may not write that record; by default a record that
        cannot be written stops the merge (no row goes without one).
    :param max_recipients: refuse the whole run, before anything is sent, if ``recipients`` has more rows than
        this (HVE bills per delivered recipient: a mistaken list of a million rows costs money and quota);
        ``None``: no cap. The estimated cost is logged before sending and is in the summary either way.
    :param hve_conn_id: the ``hve`` connection. (templated)

    Example::

        HveMailMergeOperator(
            task_id="statements",
            recipients=build_rows(),  # [{"email": "ana@contoso.com", "name": "Ana", "balance": 12}, ...]
            subject="Your statement, {{ recipient.name }}",
            html_content="templates/statement.html",
            text_content="templates/statement.txt",
            sessions=4,
        )
    """

    template_fields: Sequence[str] = (
        "recipients",
        "from_email",
        "reply_to",
        "files",
        "headers",
        "images",
        "hve_conn_id",
    )
    row_fields: Sequence[str] = ("recipients",)
    template_fields_renderers: ClassVar[dict[str, str]] = {"recipients": "json", "headers": "json"}
    ui_color = "#cfe6fa"

    def __init__(
        self,
        *,
        recipients: Any,
        subject: str,
        html_content: str | None = None,
        text_content: str | None = None,
        address_key: str = "email",
        from_email: str | None = None,
        reply_to: AddressArg = None,
        files: Iterable[str] | None = None,
        headers: Mapping[str, str] | None = None,
        images: Mapping[str, str] | None = None,
        sessions: int = 2,
        rate_per_minute: float | None = None,
        fail_on_refused: bool = True,
        progress_interval: float = 10.0,
        max_reconnects: int = 3,
        retry_budget: int | None = None,
        resend_unknown: bool = False,
        at_least_once: bool = False,
        max_recipients: int | None = None,
        hve_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.resend_unknown = resend_unknown
        self.at_least_once = at_least_once
        self.max_recipients = max_recipients
        self.recipients = recipients
        self.subject = subject
        self.html_content = html_content
        self.text_content = text_content
        self.address_key = address_key
        self.from_email = from_email
        self.reply_to = reply_to
        self.files = files
        self.headers = headers
        self.images = images
        self.sessions = sessions
        self.rate_per_minute = rate_per_minute
        self.fail_on_refused = fail_on_refused
        self.progress_interval = progress_interval
        self.max_reconnects = max_reconnects
        self.retry_budget = retry_budget
        self.hve_conn_id = hve_conn_id

    def on_kill(self) -> None:
        """Stop a running merge: hand over nothing more, keep the report (XCom ``hve_summary``) and the delivery log."""
        self._killed = True  # seen by execute() if the merge has not started yet
        merge = getattr(self, "_merge", None)
        if merge is not None:
            self.log.warning("Told to stop: the mail merge hands over nothing more and keeps its report.")
            merge.stop()

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_hve.bulk import MailMerge, TaskStateDeliveryLog
        from airflow_provider_hve.exceptions import HveConfigError, HveSendError
        from airflow_provider_hve.hooks.hve import HveHook
        from airflow_provider_hve.message import attachments_from_files
        from airflow_provider_hve.reports import table_from_data
        from airflow_provider_hve.templating import template_or_file

        rows = table_from_data(self.recipients, argument="recipients").rows
        env = self.get_template_env()
        store = _delivery_store(self, context)
        if _completed_before(self, store) is not None:
            from airflow_provider_hve.bulk.report import BulkReport

            report = BulkReport(total=len(rows))
            report.skipped = len(rows)
            return report.as_dict()
        merge = MailMerge(
            HveHook(hve_conn_id=self.hve_conn_id),
            subject=self.subject,
            html_content=template_or_file(env, self.html_content, "html_content"),
            text_content=template_or_file(env, self.text_content, "text_content"),
            address_key=self.address_key,
            from_email=self.from_email,
            reply_to=self.reply_to,
            headers=self.headers,
            attachments=attachments_from_files(self.files),
            images=self.images,
            sessions=self.sessions,
            rate_per_minute=self.rate_per_minute,
            env=env,
            context=dict(context),
            delivery_log=(
                TaskStateDeliveryLog(store, prefix=f"hve_mail_merge/{self.task_id}") if store is not None else None
            ),
            progress_interval=self.progress_interval,
            max_reconnects=self.max_reconnects,
            retry_budget=self.retry_budget,
            message_id_seed=_task_instance_id(context),
            resend_unknown=self.resend_unknown,
            max_recipients=self.max_recipients,
        )
        self._merge: MailMerge | None = merge
        if getattr(self, "_killed", False):  # on_kill came while the rows and templates were read
            merge.stop()
        try:
            summary = merge.run(rows).as_dict()
        except HveConfigError:
            raise  # found before connecting: nothing was sent, no summary to keep
        except BaseException:
            # HVE's refusals, and the task's own end: execution_timeout, SIGTERM (on_kill), anything unexpected. The
            # report is final by now (the sessions were stopped): keep it, the next try and the on-call need it.
            if merge.last_report is not None:
                context["ti"].xcom_push(key="hve_summary", value=merge.last_report.as_dict())
            raise
        finally:
            self._merge = None
        problems = summary["refused_count"] + len(summary["invalid"]) + len(summary["unknown"])
        if problems and self.fail_on_refused:
            context["ti"].xcom_push(key="hve_summary", value=summary)
            raise HveSendError(
                f"HVE mail merge: {summary['accepted']} of {summary['total']} delivered; {summary['refused_count']} "
                f"refused, {len(summary['invalid'])} invalid, {len(summary['unknown'])} unknown (see XCom "
                f"'hve_summary'). Set fail_on_refused=False to let the task succeed anyway."
                + (
                    " Unknown rows (handed over, no answer from HVE) stay unknown in every retry: check them by "
                    "Message-ID in the message trace, then set resend_unknown=True to send them again."
                    if summary["unknown"]
                    else ""
                ),
                refused={addr: (code, reply) for addr, (code, reply) in summary["refused"].items()},
            )
        if store is not None and summary["unknown"]:
            # The task succeeds with rows whose outcome is unknown (fail_on_refused=False): the record stays, so
            # that clearing the task with resend_unknown=True sends those rows only, under the same Message-IDs.
            _refuse_to_lose_the_record(store, summary, context)
            self.log.warning(
                "%d row(s) unknown (handed over without HVE's answer): the delivery record of this task instance "
                "is kept. To send them again (only them, under the same Message-IDs), set resend_unknown=True on "
                "this task and clear it; its next successful try with nothing unknown deletes the record.",
                len(summary["unknown"]),
            )
        elif store is not None:
            try_number = getattr(context.get("ti"), "try_number", None)
            _succeeded(store, (), {"try_number": try_number, "rows": summary["total"]})
        return summary
