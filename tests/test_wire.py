"""The wire layer (HveSmtpSession.send, Pipeline.submit): what reaches the server whoever built the message.

Assertions read what the sandbox's SMTP server received: the envelope, the MAIL FROM parameters, the EHLO
name, QUIT, and whether the client closed its socket.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

from airflow_provider_hve.exceptions import HveAuthError, HveConfigError, HveConnectionError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.message import build_message
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.smtp_server import NOT_AUTHENTICATED

ConnFactory = Callable[..., str]
ALICE, BOB, CAROL = "alice@contoso.example", "bob@contoso.example", "carol@contoso.example"


@pytest.fixture
def hook(hve_connection: ConnFactory) -> HveHook:
    return HveHook(hve_conn_id=hve_connection())


def plain_message(sandbox: HveSandbox, body: str = "hello") -> EmailMessage:
    message = EmailMessage()
    message["From"] = sandbox.account
    message["Subject"] = "Hi"
    message["Message-ID"] = "<wire-test@contoso.example>"
    message.set_content(body)
    return message


def test_recipients_default_to_to_cc_and_bcc_and_bcc_is_not_sent(sandbox: HveSandbox, hook: HveHook) -> None:
    message = plain_message(sandbox)
    message["To"] = f"Alice <{ALICE}>"
    message["Cc"] = BOB
    message["Bcc"] = CAROL
    with hook.smtp_session() as session:
        result = session.send(message)

    assert sorted(result.accepted) == [ALICE, BOB, CAROL]
    (delivered,) = sandbox.wait_for_messages(1)
    assert sorted(delivered.rcpt_tos) == [ALICE, BOB, CAROL]
    assert b"Bcc" not in delivered.data and CAROL.encode() not in delivered.data
    assert message["Bcc"] == CAROL  # the caller's message is left as it was


def test_resent_headers_give_the_recipients_and_resent_bcc_is_not_sent(sandbox: HveSandbox, hook: HveHook) -> None:
    message = plain_message(sandbox)
    message["To"] = ALICE
    message["Resent-Date"] = "Wed, 02 Dec 2026 10:00:00 +0000"
    message["Resent-To"] = BOB
    message["Resent-Bcc"] = CAROL
    with hook.smtp_session() as session:
        session.send(message)
    (delivered,) = sandbox.wait_for_messages(1)
    assert sorted(delivered.rcpt_tos) == [BOB, CAROL]
    assert b"Resent-Bcc" not in delivered.data


def test_a_bare_string_is_refused_as_a_recipient_list(sandbox: HveSandbox, hook: HveHook) -> None:
    message = plain_message(sandbox)
    with hook.smtp_session() as session, pytest.raises(HveConfigError, match="'recipients' is a single string"):
        session.send(message, ALICE)  # type: ignore[arg-type]
    assert sandbox.smtp_sessions[0].transactions == []


@pytest.mark.parametrize(
    "address",
    [
        f"{ALICE}>\r\nRCPT TO:<{BOB}",
        f"{ALICE}\n",
        f"{ALICE}\r",
        f"{ALICE}\x00",
        f"<{ALICE}",
        f"alice smith@{ALICE.split('@')[1]}",
        "zoë@contoso.example",
        "alice",
    ],
    ids=["rcpt-injection", "lf", "cr", "nul", "angle-bracket", "space", "non-ascii", "no-at"],
)
def test_envelope_addresses_are_checked_before_a_byte_is_written(
    sandbox: HveSandbox, hook: HveHook, address: str
) -> None:
    # A non-ASCII address is refused only by a server without SMTPUTF8 (see the tests below).
    sandbox.smtp.smtputf8 = address.isascii()
    message = plain_message(sandbox)
    with hook.smtp_session() as session:
        commands = sandbox.smtp_sessions[0].commands
        with pytest.raises(HveConfigError, match="'recipients'.*envelope address"):
            session.send(message, [ALICE, address])
        with pytest.raises(HveConfigError, match="'envelope_from'"):
            session.send(message, [ALICE], envelope_from=address)
        pipeline = session.pipeline()
        with pytest.raises(HveConfigError, match="'recipients'"):
            pipeline.submit("row", b"Subject: x\r\n\r\nx\r\n", [address])
        assert sandbox.smtp_sessions[0].commands == commands  # nothing was written
        # The session is still in step: the next message goes, its replies counted right.
        result = session.send(message, [CAROL])
    assert result.accepted == (CAROL,)
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == [CAROL]
    assert [t.rcpt_tos for t in sandbox.smtp_sessions[0].transactions] == [[CAROL]]


def test_8bit_content_declares_body_8bitmime_when_offered(sandbox: HveSandbox, hook: HveHook) -> None:
    hook.send_email(to=ALICE, subject="Grüße", text_content="Grüße aus München — Zoë")
    (transaction,) = sandbox.smtp_sessions[0].transactions
    assert "BODY=8BITMIME" in transaction.mail_options
    (delivered,) = sandbox.wait_for_messages(1)
    assert not delivered.data.isascii()
    assert delivered.message.get_content().rstrip() == "Grüße aus München — Zoë"


def test_7bit_content_declares_nothing(sandbox: HveSandbox, hook: HveHook) -> None:
    hook.send_email(to=ALICE, subject="Hello", text_content="plain ASCII")
    (transaction,) = sandbox.smtp_sessions[0].transactions
    assert not any(option.startswith("BODY=") for option in transaction.mail_options)


def test_8bit_content_is_encoded_7bit_for_a_server_without_8bitmime(sandbox: HveSandbox, hook: HveHook) -> None:
    sandbox.smtp.eight_bit_mime = False
    hook.send_email(to=ALICE, subject="Grüße", html_content="<p>Grüße — Zoë</p>", text_content="Grüße — Zoë")
    (transaction,) = sandbox.smtp_sessions[0].transactions
    assert not any(option.startswith("BODY=") for option in transaction.mail_options)
    size = next(option for option in transaction.mail_options if option.startswith("SIZE="))
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.data.isascii()
    assert size == f"SIZE={len(delivered.data)}"  # the size declared is the size of what was sent
    text, html = (part.get_content() for part in delivered.message.iter_parts())
    assert text.replace("\r\n", "\n") == "Grüße — Zoë\n" and "<p>Grüße — Zoë</p>" in html


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [("vm", "[127.0.0.1]"), ("worker-1.contoso.example", "worker-1.contoso.example"), ("", "[127.0.0.1]")],
    ids=["bare-name-gives-address-literal", "fqdn-kept", "no-name"],
)
def test_ehlo_sends_a_fully_qualified_name_or_an_address_literal(
    sandbox: HveSandbox, hook: HveHook, monkeypatch: pytest.MonkeyPatch, hostname: str, expected: str
) -> None:
    # The machine's own name, as a container or a VM may have it (Postfix refused every recipient after EHLO vm).
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    hook.send_email(to=ALICE, subject="x", text_content="x")
    assert sandbox.smtp_sessions[0].ehlo_names == [expected, expected]


def test_quit_after_a_failed_auth(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    hook = HveHook(hve_conn_id=hve_connection(login="someone-else@contoso.example"))
    with pytest.raises(HveAuthError):
        hook.send_email(to=ALICE, subject="x", text_content="x")
    (session,) = sandbox.smtp_sessions
    assert not session.auth_attempts[0].success
    assert session.quit


def test_a_broken_session_closes_its_socket(sandbox: HveSandbox, hook: HveHook) -> None:
    # 530 at MAIL FROM: the server keeps the connection open; the client must close it, not leak it.
    sandbox.smtp.throttle(NOT_AUTHENTICATED, command="MAIL", count=1)
    message = build_message(sender=sandbox.account, to=ALICE, subject="x", text_content="x")
    with hook.smtp_session() as session:
        with pytest.raises(HveConnectionError, match="530 5.7.57") as caught:
            session.send(message.message, message.recipients, retries=0)
        assert not session.is_open
        (record,) = sandbox.smtp_sessions
        deadline = time.monotonic() + 10
        while not record.closed and time.monotonic() < deadline:
            time.sleep(0.02)  # polling the server's record for a condition, bounded: not a timing assumption
        assert record.closed, "the broken connection's socket is still open"
        assert caught.value.unsent  # certainly not delivered: safe to send again


# -- a split message (over 50 recipients) whose second batch is refused with a 421 -------------------------------

SIXTY = [f"user{n:02d}@contoso.example" for n in range(60)]


def test_a_421_to_the_second_batch_is_a_refusal_of_that_batch_only(sandbox: HveSandbox, hook: HveHook) -> None:
    # Batch 1 (50 recipients) gets its 250; HVE answers batch 2's content with 421 and hangs up. Those 10 were
    # certainly not accepted (a definite reply), the 50 certainly were: neither "unknown" nor "safe to resend".
    sandbox.smtp.throttle("421 4.3.2 Service not available", command="content", count=1, after_messages=1)
    message = build_message(sender=sandbox.account, to=SIXTY, subject="x", text_content="x")
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        with pytest.raises(HveConnectionError, match="1 partly delivered") as caught:
            pipeline.submit("m", message.payload, message.recipients, "<m@x>")
            pipeline.flush()
    assert caught.value.in_flight == [] and caught.value.unsent == []
    (partly,) = caught.value.completed
    assert partly.accepted == SIXTY[:50]
    assert sorted(partly.refused) == SIXTY[50:] and {code for code, _ in partly.refused.values()} == {421}
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == SIXTY[:50]


def test_send_retries_only_the_batch_refused_with_a_421(
    sandbox: HveSandbox, hook: HveHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_hve import smtp

    delays: list[float] = []
    monkeypatch.setattr(smtp, "_sleep", delays.append)  # the backoff is recorded, not waited out
    sandbox.smtp.throttle("421 4.3.2 Service not available", command="content", count=1, after_messages=1)
    result = hook.send_message(build_message(sender=sandbox.account, to=SIXTY, subject="x", text_content="x"))
    assert sorted(result.accepted) == SIXTY and result.refused == {}
    delivered = sandbox.wait_for_messages(2)
    assert sorted(a for m in delivered for a in m.rcpt_tos) == SIXTY  # each exactly once
    assert [m.rcpt_tos for m in delivered][1] == SIXTY[50:]  # the retry: the refused batch only
    assert len(delays) == 1 and len(sandbox.smtp_sessions) == 2


def test_leaving_a_session_by_an_exception_closes_it_without_quit(
    sandbox: HveSandbox, hook: HveHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With pipelining the server has answered 354 and waits for the content: a QUIT would be read as content
    # (and smtplib would take the queued reply to MAIL FROM for QUIT's). Left by an exception, the socket just
    # closes. A spy that calls through (smtplib still does the work) records whether QUIT was said.
    import smtplib

    from airflow_provider_hve.message import wire_bytes

    quits: list[object] = []
    real_quit = smtplib.SMTP.quit

    def spy(self: smtplib.SMTP) -> object:
        quits.append(self)
        return real_quit(self)

    monkeypatch.setattr(smtplib.SMTP, "quit", spy)
    sandbox.smtp.chunking = False  # the DATA path: a BDAT window writes nothing before it is full
    with pytest.raises(RuntimeError, match="the DAG author's bug"), hook.smtp_session() as session:
        pipeline = session.pipeline()
        assert pipeline.submit("k", wire_bytes(plain_message(sandbox)), [ALICE]) == []
        raise RuntimeError("the DAG author's bug")
    assert quits == []
    (record,) = sandbox.smtp_sessions
    deadline = time.monotonic() + 10
    while not record.closed and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the server's record for a condition, bounded: not a timing assumption
    assert record.closed and not record.quit
    assert [t.mail_from for t in record.transactions] == [sandbox.account]  # it had begun the message...
    assert not sandbox.messages  # ...and, without its end of data, it was never delivered


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_a_partly_delivered_message_is_reported_when_the_pipeline_drains(
    sandbox: HveSandbox, hook: HveHook, chunking: bool
) -> None:
    # A quota reply stops a run while a 120-recipient message is on its way: its first batches may already be
    # accepted. drain() reports them (delivered) and the others (temporary refusal: sent by a later run), so a
    # retry never mails the accepted ones twice and nobody is lost.
    from airflow_provider_hve.message import wire_bytes
    from airflow_provider_hve.sandbox.smtp_server import SUBMISSION_QUOTA_EXCEEDED

    sandbox.smtp.chunking = chunking
    sandbox.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="content", count=1)
    many = [f"user{n:03d}@contoso.example" for n in range(120)]
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        done = pipeline.submit("first", wire_bytes(plain_message(sandbox)), [ALICE])
        done += pipeline.submit("many", wire_bytes(plain_message(sandbox, "to many")), many)
        done += pipeline.drain()
    by_key = {delivery.key: delivery for delivery in done}
    assert by_key["first"].refused[ALICE][0] == 554
    # The batches written before the stop reply was read were accepted (the protocol's order, not timing:
    # a batch goes out before the reply to the one before it is read).
    big = by_key["many"]
    delivered = [r for m in sandbox.messages for r in m.rcpt_tos]
    assert big.accepted and sorted(big.accepted) == sorted(delivered)
    assert sorted([*big.accepted, *big.refused]) == many
    # DATA hands the batches over one by one, so the last is not sent; BDAT writes a message's batches together.
    assert {reply[0] for reply in big.refused.values()} == (set() if chunking else {451})


def test_an_internationalised_address_goes_with_smtputf8_when_the_server_offers_it(
    sandbox: HveSandbox, hook: HveHook
) -> None:
    message = plain_message(sandbox)
    with hook.smtp_session() as session:
        result = session.send(message, [ALICE, "zoë@contoso.example"])
        pipeline = session.pipeline()
        pipeline.submit("row", wire_bytes_of(message), ["jürgen@contoso.example"])
        (delivery,) = pipeline.flush()
    assert result.accepted == (ALICE, "zoë@contoso.example")
    assert delivery.accepted == ["jürgen@contoso.example"]
    first, second = sandbox.smtp_sessions[0].transactions
    assert first.rcpt_tos == [ALICE, "zoë@contoso.example"] and "SMTPUTF8" in first.mail_options
    assert second.rcpt_tos == ["jürgen@contoso.example"] and "SMTPUTF8" in second.mail_options
    assert len(sandbox.wait_for_messages(2)) == 2


def test_an_ascii_envelope_does_not_ask_for_smtputf8(sandbox: HveSandbox, hook: HveHook) -> None:
    hook.send_email(to=ALICE, subject="x", text_content="y")
    (transaction,) = sandbox.smtp_sessions[0].transactions
    assert "SMTPUTF8" not in transaction.mail_options


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_an_internationalised_address_is_refused_clearly_without_smtputf8(
    sandbox: HveSandbox, hook: HveHook, chunking: bool
) -> None:
    sandbox.smtp.smtputf8 = False
    sandbox.smtp.chunking = chunking
    message = plain_message(sandbox)
    with hook.smtp_session() as session:
        commands = sandbox.smtp_sessions[0].commands
        with pytest.raises(HveConfigError, match=r"'recipients'.*non-ASCII.*does not offer SMTPUTF8.*Nothing was sent"):
            session.send(message, [ALICE, "zoë@contoso.example"])
        with pytest.raises(HveConfigError, match=r"does not offer SMTPUTF8"):
            session.pipeline().submit("row", wire_bytes_of(message), ["zoë@contoso.example"])
        assert sandbox.smtp_sessions[0].commands == commands  # nothing was written


def wire_bytes_of(message: Any) -> bytes:
    from airflow_provider_hve.message import wire_bytes

    return wire_bytes(message)


def test_an_internationalised_address_is_sent_by_a_session_not_opened_yet(sandbox: HveSandbox, hook: HveHook) -> None:
    # send() opens a session on first use: whether the server offers SMTPUTF8 is known only after its EHLO.
    from airflow_provider_hve.smtp import HveSmtpSession

    session = HveSmtpSession(hook.config, hook.token_provider.get_token)
    try:
        result = session.send(plain_message(sandbox), ["zoë@contoso.example"])
    finally:
        session.close()
    assert result.accepted == ("zoë@contoso.example",)
    (transaction,) = sandbox.smtp_sessions[0].transactions
    assert transaction.rcpt_tos == ["zoë@contoso.example"] and "SMTPUTF8" in transaction.mail_options
