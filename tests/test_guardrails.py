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


# bücher.example and faß.example as DNS, Exchange and email-validator write them (IDNA 2008, UTS #46). The
# standard library's IDNA 2003 codec maps faß to fass.example, another domain.
BUECHER, FASS = "xn--bcher-kva.example", "xn--fa-hia.example"


@pytest.mark.parametrize(
    ("accepted", "recipient", "received"),
    [
        ("bücher.example", f"anna@{BUECHER}", f"anna@{BUECHER}"),
        (BUECHER, "anna@bücher.example", f"anna@{BUECHER}"),
        ("BÜCHER.example", "anna@Bücher.example", f"anna@{BUECHER}"),
        ("faß.example", f"jo@{FASS}", f"jo@{FASS}"),
        (FASS.upper(), "jo@faß.example", f"jo@{FASS}"),
    ],
    ids=[
        "u-label-extra-a-label-recipient",
        "a-label-extra-u-label-recipient",
        "upper-case",
        "eszett-u-label-extra",
        "eszett-a-label-extra",
    ],
)
def test_accepted_domains_match_an_idn_written_either_way(
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    monkeypatch: pytest.MonkeyPatch,
    accepted: str,
    recipient: str,
    received: str,
) -> None:
    monkeypatch.setattr(sandbox.directory, "accepted_domains", [*sandbox.accepted_domains, BUECHER, FASS])
    hook = HveHook(hve_conn_id=hve_connection(accepted_domains=["contoso.example", accepted]))
    hook.send_email(to=recipient, subject="Bestellung", text_content="x")
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == [received]


def test_accepted_domains_are_not_matched_by_the_idna_2003_spelling(
    hve_connection: ConnFactory, sandbox: HveSandbox, token_posts: Callable[[], list[Any]]
) -> None:
    # faß.example is not fass.example: IDNA 2003 (the standard library's codec) said it was.
    hook = HveHook(hve_conn_id=hve_connection(accepted_domains="faß.example"))
    with pytest.raises(HveConfigError, match=r"Argument 'to': jo@fass\.example is outside the accepted domains"):
        hook.send_email(to="jo@fass.example", subject="s", text_content="x")
    assert f"{FASS}" in str(hook.config.accepted_domains) and not sandbox.smtp_sessions and not token_posts()


# -- A per-run recipient cap and the estimated cost --------------------------------------------------------------


def test_a_mail_merge_over_max_recipients_refuses_before_sending_anything(
    hve_connection: ConnFactory, sandbox: HveSandbox, token_posts: Callable[[], list[Any]]
) -> None:
    from airflow_provider_hve.bulk import MailMerge

    rows = [{"email": f"user{n}@contoso.example"} for n in range(1001)]
    merge = MailMerge(HveHook(hve_conn_id=hve_connection()), subject="Hi", text_content="x", max_recipients=1000)
    with pytest.raises(HveConfigError) as info:
        merge.run(rows)
    message = str(info.value)
    assert "Argument 'max_recipients'" in message and "1,001 rows" in message and "Nothing was sent" in message
    assert "USD 0.0420 (1,001 recipients x USD 42 per million" in message
    assert not sandbox.smtp_sessions and not token_posts() and not sandbox.messages


@pytest.mark.parametrize("value", [0, -1, True])
def test_max_recipients_must_be_a_positive_number(hve_connection: ConnFactory, value: Any) -> None:
    from airflow_provider_hve.bulk import MailMerge

    with pytest.raises(HveConfigError, match="'max_recipients'"):
        MailMerge(HveHook(hve_conn_id=hve_connection()), subject="Hi", text_content="x", max_recipients=value)


@pytest.mark.parametrize(("price", "expected"), [(None, 3 * 42 / 1e6), ("1000000", 3.0)], ids=["default", "configured"])
def test_the_estimated_cost_is_logged_and_in_the_summary(
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    price: str | None,
    expected: float,
) -> None:
    import logging

    from airflow_provider_hve.bulk import MailMerge

    if price is not None:
        monkeypatch.setenv("AIRFLOW__HVE__PRICE_PER_MILLION_RECIPIENTS", price)
    rows = [{"email": f"user{n}@contoso.example"} for n in range(3)] + [{"email": "bad"}]
    merge = MailMerge(HveHook(hve_conn_id=hve_connection()), subject="Hi", text_content="x", max_recipients=4)
    with caplog.at_level(logging.INFO, logger="airflow_provider_hve.bulk"):
        summary = merge.run(rows).as_dict()
    assert len(sandbox.wait_for_messages(3)) == 3
    assert summary["accepted"] == 3 and summary["estimated_cost_usd"] == pytest.approx(expected)
    assert summary["price_per_million_recipients_usd"] == (42.0 if price is None else 1e6)
    assert "HVE mail merge of 4 row(s): estimated cost at most USD" in caplog.text
    assert f"estimated cost USD {expected:.4f} (3 delivered" in caplog.text


def test_a_generator_of_recipients_is_checked_too(
    internal_only: HveHook, sandbox: HveSandbox, token_posts: Callable[[], list[Any]]
) -> None:
    # A generator was read by the builder, then found empty by the domain check: the outside address went through.
    with pytest.raises(HveConfigError, match="Argument 'to': partner@gmail.example is outside the accepted domains"):
        internal_only.send_email(to=(a for a in ["partner@gmail.example"]), subject="Report", text_content="x")
    assert not sandbox.smtp_sessions and not token_posts() and not sandbox.messages


def test_a_message_built_without_the_check_is_refused_when_sent(
    internal_only: HveHook, hve_connection: ConnFactory, sandbox: HveSandbox
) -> None:
    # Built through a connection without accepted_domains, sent through one with them: refused before connecting.
    outgoing = HveHook(hve_conn_id=hve_connection(conn_id="hve_open")).build_message("x@gmail.example", "R", "x")
    with pytest.raises(HveConfigError, match="Argument 'recipients': x@gmail.example is outside"):
        internal_only.send_message(outgoing)
    assert not sandbox.smtp_sessions and not sandbox.messages
