"""The outside probe's last hostile inputs (issue 20): each refused before anything is sent, naming the argument.

Every case here failed on the code before the fix. Assertions are on what the sandbox received (or that it
received nothing: no SMTP connection, no token request).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import pytest  # noqa: F401 - used by the cases below

from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox

ConnFactory = Callable[..., str]


def hook_send(conn_factory: ConnFactory, **kwargs: Any) -> Any:
    arguments = {"to": "team@contoso.example", "subject": "Daily report", "text_content": "All good."}
    return HveHook(hve_conn_id=conn_factory()).send_email(**{**arguments, **kwargs})


def assert_nothing_sent(sandbox: HveSandbox, token_posts: Callable[[], list[Any]]) -> None:
    assert not sandbox.smtp_sessions, "an SMTP connection was opened"
    assert not token_posts(), "a token was requested"
    assert not sandbox.messages


# -- CSV attachments: formulas in report data stay text (OWASP, CSV injection) ------------------------------

FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)", "\tx", "\rx"]


def test_csv_formula_cells_are_written_as_text(hve_connection: ConnFactory, sandbox: HveSandbox) -> None:
    from airflow_provider_hve.message import Attachment
    from airflow_provider_hve.reports import table_from_data

    rows = [{"value": text, "n": -3, "ratio": -0.5, "plain": "Zoë"} for text in FORMULAS]
    rows.append({"=evil": "ok"})  # a column name is a cell too
    table = table_from_data(rows)
    hook_send(hve_connection, attachments=[Attachment("report.csv", table.to_csv(), "text/csv")])
    (delivered,) = sandbox.wait_for_messages(1)
    (attachment,) = list(delivered.message.iter_attachments())
    content = attachment.get_content()
    assert content.startswith("\ufeff")
    header, *cells = list(csv.reader(io.StringIO(content.lstrip("\ufeff"))))
    assert header == ["value", "n", "ratio", "plain", "'=evil"]
    for text, written in zip(FORMULAS, cells, strict=False):
        assert written[:4] == ["'" + text, "-3", "-0.5", "Zoë"]  # numbers stay numbers
    assert cells[-1] == ["", "", "", "", "ok"]
