"""HveEmailOperator: templated reports and messages through Microsoft 365 High Volume Email."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_hve.connection import DEFAULT_CONN_ID
from airflow_provider_hve.templating import EmailTemplating

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.message import OutgoingMessage

AddressArg = str | Iterable[str] | None


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
    :param data: report rows: a list of dicts, usually an upstream task's output (XComArg). (templated)
    :param title: report title; defaults to the subject. (templated)
    :param csv_filename: also attach ``data`` as a CSV file of this name. (templated)
    :param dry_run: render and validate everything and write the ``.eml`` instead of sending it.
    :param dry_run_dir: where a dry run writes (default: ``$AIRFLOW_HOME/hve_dry_run``).
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
        hve_conn_id: str = DEFAULT_CONN_ID,
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
        from airflow_provider_hve.hooks.hve import HveHook

        hook = HveHook(hve_conn_id=self.hve_conn_id)
        outgoing = self._build(hook)
        if self.send_dry_run:
            path = _write_eml(outgoing, self._dry_run_path(context))
            self.log.info(
                "Dry run: not sent. Would send %s to %d recipient(s) (%s); wrote %s",
                outgoing.message["Message-ID"],
                len(outgoing.recipients),
                ", ".join(outgoing.recipients),
                path,
            )
            return {
                "dry_run": True,
                "eml_path": path,
                "message_id": outgoing.message["Message-ID"],
                "recipients": list(outgoing.recipients),
            }
        result = hook.send_message(outgoing)
        return {"dry_run": False, **result.as_dict()}

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
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.dag_id}__{self.task_id}__{run_id}")
        return os.path.join(folder, f"{name}.eml")


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
    with open(path, "wb") as handle:
        handle.write(outgoing.message.as_bytes())
    return path
