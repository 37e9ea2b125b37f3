"""The SMTP fault switches: refused recipients, failed DATA, hang-ups, throttling, stalls, session limits."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.smtp_server import (
    SUBMISSION_QUOTA_EXCEEDED,
    TEMPORARY_FAILURE,
    TOO_MANY_CONNECTIONS,
)

from .clients import xoauth2

SmtpFactory = Callable[..., AbstractContextManager[smtplib.SMTP]]

BODY = b"From: hve-sender@contoso.example\r\nSubject: fault\r\n\r\nx\r\n"


def login(client: smtplib.SMTP, sb: HveSandbox) -> smtplib.SMTP:
    assert client.docmd("AUTH", "XOAUTH2 " + xoauth2(sb.account, sb.issue_access_token()))[0] == 235
    return client


def test_refuse_recipient_refuses_only_that_address(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    sb.smtp.refuse_recipient("Gone@contoso.example")
    refused = authed_client.sendmail(sb.account, ["ops@contoso.example", "gone@CONTOSO.example"], BODY)
    assert refused == {
        "gone@CONTOSO.example": (
            550,
            b"5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        )
    }
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        authed_client.sendmail(sb.account, ["gone@contoso.example"], BODY)
    authed_client.rset()
    (delivered,) = sb.wait_for_messages(1)
    assert delivered.rcpt_tos == ["ops@contoso.example"]


def test_fail_next_data_refuses_that_many_messages_then_delivers(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    sb.smtp.fail_next_data("451 4.3.0 Temporary failure", count=2)
    for _ in range(2):
        with pytest.raises(smtplib.SMTPDataError) as raised:
            authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY)
        assert (raised.value.smtp_code, raised.value.smtp_error) == (451, b"4.3.0 Temporary failure")
    sb.smtp.fail_next_data()
    with pytest.raises(smtplib.SMTPDataError) as raised:
        authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY)
    assert raised.value.smtp_code == 554 and b"SubmissionQuotaExceededException" in raised.value.smtp_error
    assert authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    assert len(sb.wait_for_messages(1)) == 1
    data_replies = [t.data_reply for t in sb.smtp_sessions[0].transactions]
    assert data_replies[:3] == ["451 4.3.0 Temporary failure"] * 2 + [SUBMISSION_QUOTA_EXCEEDED]
    assert data_replies[3] is not None and data_replies[3].startswith("250")


def test_fail_next_data_with_421_closes_the_connection(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    sb.smtp.fail_next_data("421 4.3.2 Service not available", count=1)
    with pytest.raises(smtplib.SMTPDataError):
        authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        authed_client.noop()


def test_disconnect_after_counts_across_sessions_and_repeats(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    sb.smtp.disconnect_after(1, times=2)
    for _ in range(2):
        with smtp_client() as client:
            login(client, sb)
            assert client.sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
            with pytest.raises(smtplib.SMTPSenderRefused) as raised:
                client.sendmail(sb.account, ["ops@contoso.example"], BODY)
            assert raised.value.smtp_code == 421
            assert raised.value.smtp_error == b"4.3.2 Service not available, closing transmission channel"
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
    with smtp_client() as client:
        login(client, sb)
        for _ in range(3):
            assert client.sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    assert len(sb.wait_for_messages(5)) == 5
    assert [session.closed for session in sb.smtp_sessions][:2] == [True, True]


def test_disconnect_answers_nothing_pipelined_behind_it(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    sb.smtp.disconnect_after(0)
    authed_client.send(f"MAIL FROM:<{sb.account}>\r\nRCPT TO:<ops@contoso.example>\r\nDATA\r\n".encode())
    assert authed_client.getreply()[0] == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        authed_client.getreply()
    assert not sb.smtp_sessions[0].transactions


def test_reset_faults_clears_every_switch(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    sb.smtp.refuse_recipient("ops@contoso.example")
    sb.smtp.fail_next_data(count=3)
    sb.smtp.fail_next_auth(count=3)
    sb.smtp.disconnect_after(0, times=3)
    sb.smtp.reset_faults()
    with smtp_client() as client:
        assert login(client, sb).sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    assert len(sb.wait_for_messages(1)) == 1


def test_switches_flipped_from_other_threads_while_sending(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    flips = threading.Thread(
        target=lambda: [(sb.smtp.refuse_recipient(f"r{n}@contoso.example"), sb.smtp.reset_faults()) for n in range(200)]
    )
    flips.start()
    for _ in range(10):
        assert authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    flips.join()
    assert len(sb.wait_for_messages(10)) == 10


def test_disconnect_after_validates_its_arguments(sb: HveSandbox) -> None:
    with pytest.raises(ValueError, match="disconnect_after"):
        sb.smtp.disconnect_after(-1)
    with pytest.raises(ValueError, match="disconnect_after"):
        sb.smtp.disconnect_after(1, times=0)


def test_throttle_for_a_while_then_normal_again(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    sb.smtp.throttle(TOO_MANY_CONNECTIONS, command="MAIL", seconds=0.6)
    code, reply = authed_client.mail(sb.account)
    assert (code, reply.decode()) == (432, TOO_MANY_CONNECTIONS[4:])
    time.sleep(0.7)
    assert authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    assert len(sb.wait_for_messages(1)) == 1


def test_throttle_by_count_after_messages_on_the_content(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    sb.smtp.throttle(TEMPORARY_FAILURE, command="content", count=2, after_messages=1)
    assert authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    for _ in range(2):
        with pytest.raises(smtplib.SMTPDataError) as raised:
            authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY)
        assert raised.value.smtp_code == 451
    assert authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    assert len(sb.wait_for_messages(2)) == 2


def test_stalled_content_reply_is_delivered_but_late(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    sb.smtp.stall_after(0, 1.5)
    with smtp_client(timeout=0.5) as client:
        login(client, sb)
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            client.sendmail(sb.account, ["ops@contoso.example"], BODY)
        assert time.monotonic() - started < 1.4
    # The server took the message: a client that resent it now would duplicate it.
    (delivered,) = sb.wait_for_messages(1)
    assert delivered.rcpt_tos == ["ops@contoso.example"]


def test_limit_sessions_answers_432_to_the_extra_session(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    sb.smtp.limit_sessions(1)
    with smtp_client() as first, smtp_client() as second:
        login(first, sb)
        login(second, sb)
        assert second.mail(sb.account)[0] == 432
        assert first.sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    # Once the others closed, a new session is within the limit.
    with smtp_client() as third:
        assert login(third, sb).sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    assert len(sb.wait_for_messages(2)) == 2


def test_new_switches_validate_their_arguments(sb: HveSandbox) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        sb.smtp.throttle(seconds=1, count=1)
    with pytest.raises(ValueError, match="command must be one of"):
        sb.smtp.throttle(command="HELO", count=1)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        sb.smtp.throttle("250 OK", count=1)
    with pytest.raises(ValueError, match="stall_after"):
        sb.smtp.stall_after(0, 0)
    with pytest.raises(ValueError, match="limit_sessions"):
        sb.smtp.limit_sessions(0)


def _connect(sb: HveSandbox) -> smtplib.SMTP:
    return smtplib.SMTP(sb.smtp_host, sb.smtp_port, timeout=5)


def test_refuse_connections_drops_open_sessions_refuses_new_ones_then_listens_again(
    sb: HveSandbox, authed_client: smtplib.SMTP, smtp_client: SmtpFactory
) -> None:
    assert authed_client.sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    started = time.monotonic()
    sb.smtp.refuse_connections(1.0)
    assert sb.smtp.refusing_connections
    # The open session is gone without a word; a new connection is refused by the kernel, not by an SMTP reply.
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
        authed_client.noop()
    with pytest.raises(ConnectionRefusedError):
        _connect(sb)
    # Then the same port listens again and serves as before.
    deadline = time.monotonic() + 10
    while sb.smtp.refusing_connections:
        assert time.monotonic() < deadline, "still refusing connections 10 s after a 1 s outage"
        time.sleep(0.05)
    assert time.monotonic() - started >= 1.0
    with smtp_client() as client:
        assert login(client, sb).sendmail(sb.account, ["ops@contoso.example"], BODY) == {}
    assert len(sb.wait_for_messages(2)) == 2


def test_reset_faults_ends_refused_connections_at_once(sb: HveSandbox) -> None:
    sb.smtp.refuse_connections(300)
    sb.smtp.refuse_connections(300)  # again while refusing: still one outage
    with pytest.raises(ConnectionRefusedError):
        _connect(sb)
    sb.smtp.reset_faults()
    assert not sb.smtp.refusing_connections
    client = _connect(sb)  # listening by the time reset_faults returned
    client.quit()
    with pytest.raises(ValueError, match="refuse_connections"):
        sb.smtp.refuse_connections(0)
