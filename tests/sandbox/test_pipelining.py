"""PIPELINING (RFC 2920), the round-trip counter and the latency switch, with raw pipelined writes."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
import struct
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
import requests

from airflow_provider_hve.sandbox import HveSandbox, SmtpSession

from .clients import xoauth2

SmtpFactory = Callable[..., AbstractContextManager[smtplib.SMTP]]

MESSAGE = b"From: hve-sender@contoso.example\r\nSubject: pipelined\r\n\r\nbody\r\n.\r\n"


def batch(sb: HveSandbox, *recipients: str) -> bytes:
    """One RFC 2920 group: MAIL FROM, every RCPT TO, DATA, written at once."""
    lines = [f"MAIL FROM:<{sb.account}>", *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]
    return "".join(line + "\r\n" for line in lines).encode()


def replies(client: smtplib.SMTP, n: int) -> list[tuple[int, bytes]]:
    return [client.getreply() for _ in range(n)]


def session_of(sb: HveSandbox) -> SmtpSession:
    (session,) = sb.smtp_sessions
    return session


def test_pipelining_is_advertised_before_and_after_starttls(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    with smtp_client(starttls=False) as plain:
        assert plain.has_extn("pipelining") and plain.has_extn("starttls")
    with smtp_client() as tls:
        assert tls.has_extn("pipelining") and tls.has_extn("auth")
        # The keyword must not displace the final line of the multi-line reply.
        assert tls.ehlo_resp is not None and tls.ehlo_resp.endswith(b"\nSMTPUTF8")


def test_no_pipelining_switch_stops_advertising_it(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    sb.smtp.pipelining = False
    with smtp_client() as client:
        assert not client.has_extn("pipelining")
        assert client.has_extn("auth")


def test_pipelined_batches_deliver_and_cost_one_round_trip_per_message(
    sb: HveSandbox, authed_client: smtplib.SMTP
) -> None:
    session = session_of(sb)
    # Greeting, EHLO, STARTTLS, EHLO, AUTH: the client waited for each.
    assert (session.round_trips, session.commands) == (5, 4)
    authed_client.send(batch(sb, "a@contoso.example", "b@contoso.example"))
    assert [code for code, _ in replies(authed_client, 4)] == [250, 250, 250, 354]
    assert (session.round_trips, session.commands) == (6, 8)
    # The content, its terminating dot and the next group in one write: the DATA reply arrives
    # together with the next group's replies.
    authed_client.send(MESSAGE + batch(sb, "c@contoso.example"))
    got = replies(authed_client, 4)
    assert got[0][0] == 250 and got[0][1].startswith(b"2.0.0 OK <")
    assert [code for code, _ in got[1:]] == [250, 250, 354]
    assert (session.round_trips, session.commands) == (7, 11)
    authed_client.send(MESSAGE)
    assert authed_client.getreply()[0] == 250
    assert session.round_trips == 8
    first, second = sb.wait_for_messages(2)
    assert first.rcpt_tos == ["a@contoso.example", "b@contoso.example"] and second.rcpt_tos == ["c@contoso.example"]
    assert [t.data_reply is not None and t.data_reply.startswith("250") for t in session.transactions] == [True, True]


def test_sequential_commands_cost_one_round_trip_each(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    before = sb.smtp_round_trips()
    authed_client.sendmail(sb.account, ["a@contoso.example", "b@contoso.example"], MESSAGE[:-3])
    # MAIL, RCPT, RCPT, DATA (354), content (250).
    assert sb.smtp_round_trips() - before == 5
    stats = sb.stats()
    assert (stats.messages, stats.smtp_sessions, stats.smtp_round_trips) == (1, 1, before + 5)
    assert stats.smtp_commands == sb.smtp_commands() == 4 + 4


def test_data_after_refused_recipients_gets_503_not_354(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    # RFC 2920: a pipelining client has already sent DATA; without an accepted recipient it must not get 354.
    authed_client.send(batch(sb, "x@fabrikam.example"))
    got = replies(authed_client, 3)
    assert [code for code, _ in got] == [250, 550, 503]
    assert got[2][1] == b"5.5.2 Need rcpt command"
    # The transaction stays open after the refused DATA, as in SMTP generally: RSET ends it. A refused
    # MAIL FROM then leaves the whole next group without a transaction.
    authed_client.send(b"RSET\r\nMAIL FROM:<other@contoso.example>\r\nRCPT TO:<a@contoso.example>\r\nDATA\r\n")
    assert replies(authed_client, 4) == [
        (250, b"OK"),
        (550, b"5.7.60 SMTP; Client does not have permissions to send as this sender"),
        (503, b"5.5.2 Need mail command"),
        (503, b"5.5.2 Need rcpt command"),
    ]
    # The session is still usable for a good group.
    authed_client.send(batch(sb, "a@contoso.example"))
    assert [code for code, _ in replies(authed_client, 3)] == [250, 250, 354]
    authed_client.send(MESSAGE)
    assert authed_client.getreply()[0] == 250
    assert len(sb.wait_for_messages(1)) == 1


def test_latency_costs_one_delay_per_pipelined_batch_and_one_per_waited_reply(
    sb: HveSandbox, authed_client: smtplib.SMTP
) -> None:
    sb.latency_ms = 50
    delay = 0.05
    recipients = ("a@contoso.example", "b@contoso.example")

    started = time.perf_counter()
    authed_client.send(batch(sb, *recipients))
    assert [code for code, _ in replies(authed_client, 4)] == [250, 250, 250, 354]
    pipelined = time.perf_counter() - started
    authed_client.send(b".\r\n")  # an empty message: refused at DATA (no From header), ends the transaction
    assert authed_client.getreply()[0] == 550

    started = time.perf_counter()
    assert authed_client.docmd("MAIL", f"FROM:<{sb.account}>")[0] == 250
    for recipient in recipients:
        assert authed_client.docmd("RCPT", f"TO:<{recipient}>")[0] == 250
    assert authed_client.docmd("DATA")[0] == 354
    one_by_one = time.perf_counter() - started
    authed_client.send(MESSAGE)
    assert authed_client.getreply()[0] == 250

    # Latency, not a slow server: a command sent shortly after another, without waiting for its reply,
    # is answered one delay after it was sent, not one delay after the previous reply.
    started = time.perf_counter()
    authed_client.send(b"NOOP\r\n")
    time.sleep(0.005)
    authed_client.send(b"NOOP\r\n")
    assert [code for code, _ in replies(authed_client, 2)] == [250, 250]
    staggered = time.perf_counter() - started

    assert 0.9 * delay <= pipelined < 1.7 * delay, pipelined
    assert 3.6 * delay <= one_by_one < 8 * delay, one_by_one
    assert 0.9 * delay <= staggered < 1.7 * delay, staggered

    # The greeting is delayed too: connect-to-banner is one round trip.
    started = time.perf_counter()
    with smtplib.SMTP(sb.smtp_host, sb.smtp_port, timeout=5) as fresh:
        greeted = time.perf_counter() - started
        fresh.ehlo("client.test")
        fresh.starttls(context=ssl.create_default_context(cafile=sb.ca_bundle))
    assert 0.9 * delay <= greeted < 3 * delay, greeted


def test_latency_delays_token_endpoint_responses(sb: HveSandbox) -> None:
    http = requests.Session()
    http.trust_env = False
    form = {
        "grant_type": "client_credentials",
        "client_id": sb.client_id,
        "client_secret": sb.client_secret,
        "scope": "https://outlook.office365.com/.default",
    }

    def post() -> float:
        started = time.perf_counter()
        assert http.post(sb.token_endpoint, data=form, verify=sb.ca_bundle).status_code == 200
        return time.perf_counter() - started

    post()  # connect and handshake outside the measurement
    baseline = post()
    sb.latency_ms = 50
    delayed = post()
    assert delayed >= 0.045 and delayed - baseline >= 0.04, (baseline, delayed)
    assert sb.stats().token_posts == 3


def test_a_client_that_resets_with_commands_pipelined_gets_no_more_writes(
    sb: HveSandbox, smtp_client: SmtpFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A client (or a path) that dies under load leaves commands the server has read but not answered. The server
    # learns of the reset from its TLS layer a loop turn after the socket: writing the replies in between made
    # asyncio log "socket.send() raised exception." once per reply (40 lines per reset in make bench).
    caplog.set_level(logging.WARNING, logger="asyncio")
    with smtp_client() as client:
        code, reply = client.docmd("AUTH", "XOAUTH2 " + xoauth2(sb.account, sb.issue_access_token()))
        assert code == 235, reply
        assert client.sock is not None
        client.sock.settimeout(30)
        client.send(b"NOOP\r\n" * 5_000)  # a quarter of a second of replies: the server is still writing at the reset
        assert client.getreply()[0] == 250  # it is answering them
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # an RST (the reply file holds the socket too: smtplib's close closes both)
        deadline = time.monotonic() + 10
        while not session_of(sb).closed and time.monotonic() < deadline:
            time.sleep(0.01)
    assert session_of(sb).closed
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING] == []
