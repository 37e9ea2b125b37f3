"""HVE's cost and recipient guardrails (issue 20): accepted domains, a per-run recipient cap, the estimated cost.

HVE delivers only inside the tenant's accepted domains and bills per delivered recipient: a mistaken list
must be refused before anything is sent. Assertions are on what the sandbox received.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_hve.exceptions import HveConfigError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox

ConnFactory = Callable[..., str]


@pytest.fixture
def internal_only(hve_connection: ConnFactory, sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch) -> HveHook:
    """A tenant whose accepted domains are contoso.example and fabrikam.example, and a connection that says so."""
    monkeypatch.setattr(sandbox.directory, "accepted_domains", [*sandbox.accepted_domains, "fabrikam.example"])
    return HveHook(hve_conn_id=hve_connection(accepted_domains="contoso.example, Fabrikam.example"))


@pytest.mark.parametrize("argument", ["to", "cc", "bcc"])
def test_a_recipient_outside_the_accepted_domains_is_refused_before_sending(
    internal_only: HveHook, sandbox: HveSandbox, token_posts: Callable[[], list[Any]], argument: str
) -> None:
    kwargs: dict[str, Any] = {"to": "team@contoso.example", argument: "Partner <partner@gmail.example>"}
    with pytest.raises(HveConfigError) as info:
        internal_only.send_email(subject="Report", text_content="x", **kwargs)
    message = str(info.value)
    assert f"Argument {argument!r}: partner@gmail.example is outside the accepted domains" in message
    assert "contoso.example, fabrikam.example" in message and "550 5.7.54" in message and "accepted_domains" in message
    assert not sandbox.smtp_sessions and not token_posts() and not sandbox.messages


def test_recipients_inside_the_accepted_domains_go_through(internal_only: HveHook, sandbox: HveSandbox) -> None:
    internal_only.send_email(to="team@contoso.example", cc="ops@FABRIKAM.example", subject="Report", text_content="x")
    (delivered,) = sandbox.wait_for_messages(1)
    assert sorted(delivered.rcpt_tos) == ["ops@fabrikam.example", "team@contoso.example"]


def test_a_mail_merge_refuses_rows_outside_the_accepted_domains(internal_only: HveHook, sandbox: HveSandbox) -> None:
    from airflow_provider_hve.bulk import MailMerge

    rows = [{"email": "a@contoso.example"}, {"email": "b@outside.example"}, {"email": "c@fabrikam.example"}]
    report = MailMerge(internal_only, subject="Hi", text_content="x", sessions=1).run(rows)
    assert report.accepted == 2 and list(report.invalid) == ["row 1"]
    assert "b@outside.example is outside the accepted domains" in report.invalid["row 1"]
    delivered = sandbox.wait_for_messages(2)
    assert sorted(m.rcpt_tos[0] for m in delivered) == ["a@contoso.example", "c@fabrikam.example"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [(["contoso.example", "not a domain!"], "not a domain name"), ({"contoso.example": 1}, "must be a list")],
    ids=["bad-domain", "not-a-list"],
)
def test_bad_accepted_domains_are_named(hve_connection: ConnFactory, value: Any, problem: str) -> None:
    with pytest.raises(HveConfigError, match=f"'accepted_domains'.*{problem}"):
        HveHook(hve_conn_id=hve_connection(accepted_domains=value)).config  # noqa: B018 - reading it validates
