"""The provider against a real MTA: Postfix 3.7 (strict pipelining, CHUNKING, anvil limits) with Dovecot's XOAUTH2.

Postfix stands in for HVE and Dovecot asks the sandbox's introspection endpoint whether a token is good, so the
client meets a second, independent implementation of SMTP, STARTTLS, SASL and pipelining: what the aiosmtpd
sandbox lets pass and a real server does not shows up here. Run with ``make test-mta`` (installs Postfix and
Dovecot as root where they are missing); skipped, saying why, elsewhere.

Deliveries are counted in the Maildir (one file per recipient copy, ``Delivered-To`` naming the recipient), and
transactions in Postfix's own log (one queue file per MAIL...DATA/BDAT, with its ``nrcpt``).
"""

from __future__ import annotations

import collections
import re
import socket
from collections.abc import Callable
from email import message_from_bytes, policy
from typing import Any

import pytest

from airflow_provider_hve.bulk import MailMerge
from airflow_provider_hve.exceptions import HveAuthError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox

from .conftest import REQUIRED, UNAVAILABLE, LogWatch

pytestmark = [
    pytest.mark.mta,
    # make test-mta sets HVE_MTA_REQUIRED: there a missing MTA is an error, not a skip.
    pytest.mark.skipif(UNAVAILABLE is not None and not REQUIRED, reason=f"real MTA unavailable: {UNAVAILABLE}"),
]

HookFactory = Callable[..., HveHook]
IMPROPER_PIPELINING = "improper command pipelining"


def rows(count: int) -> list[dict[str, Any]]:
    return [{"email": f"user{n:04d}@contoso.example", "name": f"User {n}", "n": n} for n in range(count)]


def delivered_to(mta: Any, expected: int, timeout: float = 120) -> collections.Counter[str]:
    """Wait for ``expected`` copies in the Maildir and for an empty queue, then count the copies per recipient."""
    mta.wait_for_delivered(expected, timeout)
    mta.wait_until_idle(timeout)  # so that a duplicate still in the queue is counted too
    return collections.Counter(mta.recipient_of(path) for path in mta.delivered())


def smtp_commands(log: str) -> collections.Counter[str]:
    """Sum the per-session command counts Postfix logs at disconnect (``mail=3 rcpt=120 data=3 ...``)."""
    counts: collections.Counter[str] = collections.Counter()
    for stats in re.findall(r"postfix/smtpd\[\d+\]: disconnect from \S+ (.*)$", log, re.MULTILINE):
        for name, value in re.findall(r"(\w+)=(\d+)", stats):
            counts[name] += int(value)
    return counts


@pytest.mark.parametrize("window", [16, 1], ids=["bdat-window-16", "bdat-window-1"])
def test_thousand_messages_delivered_exactly_once(
    mta: Any, mta_log: LogWatch, mta_hook: HookFactory, window: int
) -> None:
    # Postfix offers CHUNKING, so the client sends BDAT: a window of 16 transactions written at once (with
    # smtpd_forbid_unauth_pipelining on, Postfix would log and refuse any pipelining it takes for improper),
    # and the cautious window of 1.
    merge = MailMerge(
        mta_hook(conn_id=f"hve_mta_w{window}", bdat_window=window),
        subject="Statement {{ recipient.n }} for {{ recipient.name }}",
        text_content="Dear {{ recipient.name }}, this is message {{ recipient.n }}.",
        sessions=2,
    )
    report = merge.run(rows(1000))

    assert (report.accepted, report.refused, report.invalid, report.unknown, report.not_sent) == (1000, {}, {}, [], [])
    by_recipient = delivered_to(mta, 1000)
    assert sum(by_recipient.values()) == 1000, f"{sum(by_recipient.values())} copies delivered for 1000 rows"
    assert sorted(by_recipient) == [row["email"] for row in rows(1000)]
    assert set(by_recipient.values()) == {1}, [r for r, n in by_recipient.items() if n > 1][:10]
    log = mta_log.wait(lambda text: smtp_commands(text)["mail"] >= 1000)
    sample = next(path for path in mta.delivered() if mta.recipient_of(path) == "user0042@contoso.example")
    message = message_from_bytes(sample.read_bytes(), policy=policy.default)
    assert message["Subject"] == "Statement 42 for User 42"
    assert "Dear User 42, this is message 42." in message.get_body(("plain",)).get_content()
    commands = smtp_commands(log)
    # One transaction per row, in two sessions, each as one BDAT ... LAST (Postfix offers CHUNKING); no DATA.
    assert commands["mail"] == 1000 and commands["rcpt"] == 1000
    assert commands["data"] == 0 and commands["bdat"] == 1000, commands
    assert len(re.findall(r"sasl_method=XOAUTH2, sasl_username=hve-sender@contoso.example", log)) == 1000


def test_120_recipients_go_in_three_transactions(mta: Any, mta_log: LogWatch, mta_hook: HookFactory) -> None:
    recipients = [f"many{n:03d}@contoso.example" for n in range(120)]

    result = mta_hook().send_email(recipients, "One message, 120 recipients", "<p>Hello all</p>")

    assert sorted(result.accepted) == recipients and result.refused == {}
    assert delivered_to(mta, 120) == dict.fromkeys(recipients, 1)
    log = mta_log.wait(
        lambda text: sum(mta.transactions(text, result.message_id).values()) >= 120 and "disconnect from" in text
    )
    # Postfix refuses a 51st RCPT (smtpd_recipient_limit = 50, HVE's limit): the client split it itself.
    assert sorted(mta.transactions(log, result.message_id).values()) == [20, 50, 50]
    commands = smtp_commands(log)
    assert (commands["mail"], commands["rcpt"]) == (3, 120)


def test_refused_recipient_is_reported_and_the_others_delivered(
    mta: Any, mta_log: LogWatch, mta_hook: HookFactory
) -> None:
    to = ["first@contoso.example", "refused@contoso.example", "last@contoso.example"]

    result = mta_hook().send_email(to, "Partly refused", "<p>Hi</p>")

    assert sorted(result.accepted) == ["first@contoso.example", "last@contoso.example"]
    code, reply = result.refused["refused@contoso.example"]
    assert code == 550 and "5.1.1" in reply and "refused by the HVE test MTA" in reply
    assert delivered_to(mta, 2) == {"first@contoso.example": 1, "last@contoso.example": 1}
    log = mta_log.wait(lambda text: "reject: RCPT from" in text)
    assert re.search(r"reject: RCPT from .*: 550 5\.1\.1 .*to=<refused@contoso\.example>", log), log


def test_refused_row_in_a_mail_merge(mta: Any, mta_log: LogWatch, mta_hook: HookFactory) -> None:
    data = [*rows(3), {"email": "refused@contoso.example", "name": "Nobody", "n": 99}, *rows(5)[3:]]

    report = MailMerge(mta_hook(), subject="Hi {{ recipient.name }}", text_content="x", sessions=1).run(data)

    assert report.accepted == 5 and report.unknown == [] and report.not_sent == []
    assert list(report.refused) == ["refused@contoso.example"] and report.refused["refused@contoso.example"][0] == 550
    assert delivered_to(mta, 5) == {row["email"]: 1 for row in rows(5)}


@pytest.mark.parametrize(
    "app_switches",
    [
        pytest.param({"hve_allowed": False}, id="app-not-on-the-accounts-allowed-list"),
        pytest.param({"application_permissions": set()}, id="app-without-Mail.Send"),
    ],
)
def test_a_token_dovecot_refuses_gives_535_and_nothing_is_sent(
    sandbox: HveSandbox,
    mta: Any,
    mta_log: LogWatch,
    mta_hook: HookFactory,
    app_switches: dict[str, Any],
) -> None:
    app = sandbox.register_app(**app_switches)
    hook = mta_hook(conn_id="hve_mta_wrong", client_id=app.client_id, password=app.secret)

    with pytest.raises(HveAuthError) as caught:
        hook.send_email(["someone@contoso.example"], "Must not arrive", "<p>x</p>")

    # Dovecot answers the bad token with a 334 JSON error challenge; the client answers it with an empty line and
    # gets the final 535 (Postfix's "535 5.7.8 Error: authentication failed").
    assert caught.value.code == "535", caught.value
    assert str(caught.value.smtp_reply).startswith("535 5.7.8")
    assert app.secret not in str(caught.value)
    verdicts = sandbox.introspections.snapshot()
    assert verdicts and not any(v.active for v in verdicts), verdicts
    log = mta_log.wait(lambda text: "auth=0/1" in text)  # the session's disconnect line
    assert "SASL XOAUTH2 authentication failed" in log
    assert smtp_commands(log)["mail"] == 0
    # The right token still works from the same address, and Dovecot holds no penalty against it (with one, every
    # later AUTH from 127.0.0.1 would wait up to 15 s, or get 454 4.7.0).
    result = mta_hook().send_email(["after@contoso.example"], "Right token", "<p>x</p>")
    assert result.accepted == ("after@contoso.example",)
    assert delivered_to(mta, 1) == {"after@contoso.example": 1}
    assert mta.auth_penalties() == []


def sessions_ended(log: str) -> bool:
    return len(re.findall(r"\]: connect from ", log)) == len(re.findall(r"\]: disconnect from ", log))


def test_no_improper_pipelining_in_the_whole_log(mta: Any) -> None:
    """Runs after the tests above (file order): Postfix saw no command sent ahead where RFC 2920 forbids it."""
    log = LogWatch(mta, whole=True).wait(sessions_ended)
    if "sasl_method=XOAUTH2" not in log:
        pytest.skip("no authenticated session in Postfix's log: this checks what the tests above sent; run them too")
    offending = [line for line in log.splitlines() if IMPROPER_PIPELINING in line]
    assert offending == []


def test_postfix_does_log_improper_pipelining(mta: Any, mta_log: LogWatch) -> None:
    """The check above can fail: a client that sends EHLO and NOOP in one write before TLS is caught and cut off."""
    with socket.create_connection(("127.0.0.1", mta.smtp_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.example.com\r\nNOOP\r\n")
        replies = reader.read()  # Postfix hangs up (smtpd_forbid_unauth_pipelining = yes)
    assert replies == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert IMPROPER_PIPELINING in mta_log.wait(lambda text: IMPROPER_PIPELINING in text)
