"""The bad-input table: every mistake a DAG author makes with the connection or the arguments fails with a
clear error that names the connection or the argument, holds no secret, and comes before any connection:
the sandbox sees no SMTP session and no token request.

Each case goes through a public surface: ``HveHook.send_email`` or an operator run as the task runner runs
it (``render_template_fields`` then ``execute``). The control test sends the same good input through the
same surfaces, so "nothing reached the sandbox" is an assertion that can fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pendulum
import pytest

from airflow_provider_hve.exceptions import HveConfigError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.operators.hve import HveEmailOperator, HveMailMergeOperator
from airflow_provider_hve.sandbox import HveSandbox

CONN_ID = "hve_bad_input"
CONN = f"'{CONN_ID}'"
GOOD = {"to": "team@contoso.example", "subject": "Daily report", "text_content": "All good."}
MISSING_FILE = "/nonexistent/hve-tests/report.csv"
INJECTED = "\r\nBcc: victim@contoso.example"
SECRET = object()
"""Stands for the connection's client secret, which is only known once the sandbox runs."""


@dataclass
class Env:
    sandbox: HveSandbox
    monkeypatch: pytest.MonkeyPatch

    def conn(self, **overrides: Any) -> str:
        """Define ``CONN_ID`` as the sandbox's connection with some fields or extras replaced (None: removed)."""
        conn = self.sandbox.connection()
        for name, value in overrides.items():
            value = self.sandbox.client_secret if value is SECRET else value
            if name in ("host", "port", "login", "password"):
                conn[name] = value
            elif value is None:
                conn["extra"].pop(name, None)
            else:
                conn["extra"][name] = value
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
        return CONN_ID


Act = Callable[[Env], Any]


def hook_send(conn: dict[str, Any] | None = None, **kwargs: Any) -> Act:
    """``HveHook(...).send_email(...)`` with the good arguments, ``kwargs`` replacing some."""

    def act(env: Env) -> Any:
        conn_id = env.conn(**(conn or {}))
        return HveHook(hve_conn_id=conn_id).send_email(**{**GOOD, **kwargs})

    return act


def run_task(operator_class: type[Any], **kwargs: Any) -> Any:
    """Build the operator in a DAG and run it as the task runner does: render the templates, then execute."""
    from airflow.providers.common.compat.sdk import DAG

    kwargs.setdefault("hve_conn_id", CONN_ID)
    with DAG("hve_bad_input", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
        task = operator_class(task_id="mail", **kwargs)
    context: dict[str, Any] = {"run_id": "manual__bad_input", "ds": "2026-01-01", "params": {}}
    task.render_template_fields(context)
    return task.execute(context)  # type: ignore[arg-type]


def email_operator(**kwargs: Any) -> Act:
    def act(env: Env) -> Any:
        env.conn()
        return run_task(HveEmailOperator, **{**GOOD, **kwargs})

    return act


def merge_operator(**kwargs: Any) -> Act:
    def act(env: Env) -> Any:
        env.conn()
        arguments = {"recipients": [{"email": "team@contoso.example"}], "subject": "Hi", "text_content": "x"}
        return run_task(HveMailMergeOperator, **{**arguments, **kwargs})

    return act


CASES = [
    # -- the connection ---------------------------------------------------------------------------------
    pytest.param(hook_send({"client_id": None}), (CONN, "'client_id'", "missing"), id="conn-missing-client-id"),
    pytest.param(hook_send({"tenant_id": None}), (CONN, "'tenant_id'", "missing"), id="conn-missing-tenant-id"),
    pytest.param(hook_send({"password": ""}), (CONN, "'password'", "empty"), id="conn-missing-secret"),
    pytest.param(hook_send({"login": ""}), (CONN, "'login'", "empty"), id="conn-missing-login"),
    pytest.param(hook_send({"port": 465}), (CONN, "'port'", "465", "587"), id="conn-port-465"),
    pytest.param(hook_send({"port": 70000}), (CONN, "'port'", "70000"), id="conn-port-out-of-range"),
    pytest.param(
        hook_send({"tenant_id": None, "tenat_id": "contoso.example"}),  # the typo is ignored; tenant_id is missing
        (CONN, "'tenant_id' is missing", "'tenat_id'", "did you mean 'tenant_id'"),
        id="conn-typo-extra",
    ),
    pytest.param(
        hook_send({"auth_mode": "oauth"}), (CONN, "'auth_mode'", "'oauth'", "client_secret"), id="conn-bad-auth-mode"
    ),
    pytest.param(hook_send({"client_id": SECRET}), (CONN, "'client_id'", "GUID"), id="conn-secret-as-client-id"),
    pytest.param(hook_send({"tenant_id": SECRET}), (CONN, "'tenant_id'", "GUID"), id="conn-secret-as-tenant-id"),
    pytest.param(
        hook_send({"authority_host": "http://login.microsoftonline.com"}),
        (CONN, "'authority_host'", "https://"),
        id="conn-plain-http-authority",
    ),
    pytest.param(
        lambda env: HveHook(hve_conn_id="hve_undefined").send_email(**GOOD),
        ("'hve_undefined'", "not defined", "AIRFLOW_CONN_HVE_UNDEFINED"),
        id="conn-undefined",
    ),
    # -- addresses ----------------------------------------------------------------------------------------
    pytest.param(hook_send(to="not-an-address"), ("'to'", "not-an-address"), id="to-malformed"),
    pytest.param(
        hook_send(to=["ok@contoso.example", "team@contoso"]), ("'to'", "team@contoso"), id="to-malformed-in-list"
    ),
    pytest.param(hook_send(to=42), ("'to'", "42", "int"), id="to-not-a-string"),
    pytest.param(hook_send(to=[]), ("'to'", "empty"), id="to-empty-list"),
    pytest.param(hook_send(to=" ; "), ("'to'", "empty"), id="to-only-separators"),
    pytest.param(hook_send(cc="lead@@contoso.example"), ("'cc'",), id="cc-malformed"),
    pytest.param(hook_send(from_email="Reports"), ("'from_email'", "Reports"), id="from-email-no-address"),
    # -- files --------------------------------------------------------------------------------------------
    pytest.param(hook_send(files=[MISSING_FILE]), ("'files'", MISSING_FILE), id="attachment-missing"),
    pytest.param(
        hook_send(html_content='<img src="cid:logo">', images={"logo": MISSING_FILE}),
        ("'images'", MISSING_FILE),
        id="inline-image-missing",
    ),
    # -- header injection -------------------------------------------------------------------------------
    pytest.param(hook_send(subject="Report" + INJECTED), ("'subject'", "line break"), id="subject-crlf"),
    pytest.param(hook_send(subject="Report\nX-Spam: yes"), ("'subject'", "line break"), id="subject-lf"),
    pytest.param(
        hook_send(headers={"X-Run-Id": "42" + INJECTED}), ("headers", "'X-Run-Id'", "line break"), id="header-crlf"
    ),
    pytest.param(
        hook_send(headers={"X-Run-Id:Bcc": "42"}), ("'headers'", "not a valid header name"), id="header-name-colon"
    ),
    pytest.param(hook_send(headers={"Bcc": "v@contoso.example"}), ("'headers'", "'Bcc'"), id="header-reserved"),
    pytest.param(
        hook_send(to=f'"Team{INJECTED}" <team@contoso.example>'), ("'to'", "line break"), id="to-display-name-crlf"
    ),
    pytest.param(
        hook_send(from_email='"Reports\nBcc: victim@contoso.example" <hve-sender@contoso.example>'),
        ("'from_email'", "line break"),
        id="from-display-name-lf",
    ),
    # -- HveEmailOperator: templates, data, and the same checks through the task -----------------------
    pytest.param(
        email_operator(subject="Report {{ nosuch }}"), ("'subject'", "'nosuch' is undefined"), id="op-subject-undefined"
    ),
    pytest.param(
        email_operator(text_content=None, html_content="<p>{{ params.missing }}</p>"),
        ("'html_content'", "'missing'"),
        id="op-html-body-undefined",
    ),
    pytest.param(
        email_operator(text_content="Rows: {{ rows | length }}"),
        ("'text_content'", "'rows' is undefined"),
        id="op-text-body-undefined",
    ),
    pytest.param(email_operator(data="not rows"), ("'data'", "is a string, not a list of rows"), id="op-data-string"),
    pytest.param(email_operator(data={"name": "Ada"}), ("'data'", "got dict"), id="op-data-dict"),
    pytest.param(email_operator(data=[1, 2]), ("'data'", "row 0 is a int"), id="op-data-rows-not-dicts"),
    pytest.param(email_operator(to="team-at-contoso"), ("'to'", "team-at-contoso"), id="op-to-malformed"),
    pytest.param(email_operator(files=[MISSING_FILE]), ("'files'", MISSING_FILE), id="op-attachment-missing"),
    pytest.param(email_operator(subject="Report" + INJECTED), ("'subject'", "line break"), id="op-subject-crlf"),
    pytest.param(email_operator(csv_filename="rows.csv"), ("'csv_filename'", "'data'"), id="op-csv-without-data"),
    pytest.param(
        email_operator(hve_conn_id="hve_undefined"), ("'hve_undefined'", "not defined"), id="op-conn-undefined"
    ),
    # -- HveMailMergeOperator ----------------------------------------------------------------------------
    pytest.param(
        merge_operator(recipients={"email": "a@contoso.example"}), ("'recipients'", "got dict"), id="merge-rows-dict"
    ),
    pytest.param(
        merge_operator(recipients="a@contoso.example"), ("'recipients'", "is a string"), id="merge-rows-string"
    ),
    pytest.param(
        merge_operator(recipients=[["a@contoso.example"]]), ("'recipients'", "row 0 is a list"), id="merge-row-list"
    ),
    pytest.param(merge_operator(files=[MISSING_FILE]), ("'files'", MISSING_FILE), id="merge-attachment-missing"),
    pytest.param(
        merge_operator(subject="Hi {{ recipient.nmae }}"),
        ("'subject'", "'nmae'", "Row 0"),
        id="merge-subject-undefined",
    ),
    pytest.param(
        merge_operator(text_content="{{ recipient.email }} {{ balance }}"),
        ("'text_content'", "'balance' is undefined"),
        id="merge-body-undefined",
    ),
]


def error_text(exc: BaseException) -> str:
    """The error and everything chained to it, as a traceback in the task log shows them."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(("act", "mentions"), CASES)
def test_bad_input_fails_clearly_before_connecting(
    act: Act,
    mentions: tuple[str, ...],
    sandbox: HveSandbox,
    monkeypatch: pytest.MonkeyPatch,
    token_posts: Callable[[], list[Any]],
) -> None:
    with pytest.raises(HveConfigError) as info:
        act(Env(sandbox, monkeypatch))

    message = str(info.value)
    missing = [text for text in mentions if text not in message]
    assert not missing, f"{message!r} should mention {missing}"
    assert sandbox.client_secret not in error_text(info.value)
    assert not sandbox.smtp_sessions, "an SMTP connection was opened"
    assert not token_posts(), "a token was requested"
    assert not sandbox.messages


@pytest.mark.parametrize(
    "act",
    [
        pytest.param(hook_send(), id="hook"),
        pytest.param(email_operator(subject="Report {{ ds }}", data=[{"name": "Ada"}]), id="email-operator"),
    ],
)
def test_good_input_through_the_same_surfaces_reaches_the_sandbox(
    act: Act, sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch, token_posts: Callable[[], list[Any]]
) -> None:
    act(Env(sandbox, monkeypatch))
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == ["team@contoso.example"]
    assert len(sandbox.smtp_sessions) == 1 and len(token_posts()) == 1
