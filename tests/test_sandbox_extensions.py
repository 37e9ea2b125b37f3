"""The sandbox's Exchange Online extensions with raw smtplib: its EHLO, BDAT (RFC 3030), SMTPUTF8 (RFC 6531),
DSN parameters and AUTH LOGIN; each extension's off switch. Assertions read what the server recorded."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.records import SmtpSession
from airflow_provider_hve.sandbox.smtp_server import SUBMISSION_QUOTA_EXCEEDED, TOO_BIG

EXCHANGE_AFTER_STARTTLS = [
    "SIZE 157286400",
    "PIPELINING",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "AUTH LOGIN XOAUTH2",
    "8BITMIME",
    "BINARYMIME",
    "CHUNKING",
    "SMTPUTF8",
]
EXCHANGE_BEFORE_STARTTLS = [
    "SIZE 157286400",
    "PIPELINING",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "STARTTLS",
    "8BITMIME",
    "BINARYMIME",
    "CHUNKING",
    "SMTPUTF8",
]


def _xoauth2(user: str, token: str) -> str:
    import base64

    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


@contextmanager
def _client(sandbox: HveSandbox, *, starttls: bool = True, auth: bool = True) -> Iterator[smtplib.SMTP]:
    client = smtplib.SMTP(sandbox.smtp_host, sandbox.smtp_port, timeout=10)
    try:
        client.ehlo("client.test")
        if starttls:
            client.starttls(context=ssl.create_default_context(cafile=sandbox.ca_bundle))
            client.ehlo("client.test")
        if auth:
            code, reply = client.docmd("AUTH", "XOAUTH2 " + _xoauth2(sandbox.account, sandbox.issue_access_token()))
            assert code == 235, reply
        yield client
    finally:
        with suppress(smtplib.SMTPServerDisconnected):
            client.quit()


@pytest.fixture
def client(sandbox: HveSandbox) -> Iterator[smtplib.SMTP]:
    """An smtplib connection after STARTTLS, authenticated as the HVE account."""
    with _client(sandbox) as smtp:
        yield smtp


def keywords(client: smtplib.SMTP) -> list[str]:
    assert client.ehlo_resp is not None
    return client.ehlo_resp.decode().splitlines()[1:]


def message(sandbox: HveSandbox, body: bytes = b"hello\r\n") -> bytes:
    return b"From: " + sandbox.account.encode() + b"\r\nSubject: s\r\n\r\n" + body


def bdat_transaction(sandbox: HveSandbox, content: bytes, *recipients: str, mail_options: str = "") -> bytes:
    """MAIL, RCPT..., ``BDAT <n> LAST`` and the content, as one pipelined write."""
    lines = [f"MAIL FROM:<{sandbox.account}>{mail_options}", *(f"RCPT TO:<{r}>" for r in recipients)]
    head = "".join(line + "\r\n" for line in lines).encode("utf-8")
    return head + f"BDAT {len(content)} LAST\r\n".encode() + content


def replies(client: smtplib.SMTP, n: int) -> list[tuple[int, bytes]]:
    return [client.getreply() for _ in range(n)]


def session_of(sandbox: HveSandbox) -> SmtpSession:
    (session,) = sandbox.smtp_sessions
    return session


# -- EHLO -----------------------------------------------------------------------------------------------------------


def test_ehlo_after_starttls_is_exchange_onlines(sandbox: HveSandbox) -> None:
    with _client(sandbox, auth=False) as client:
        assert keywords(client) == EXCHANGE_AFTER_STARTTLS


def test_ehlo_before_starttls_offers_starttls_and_no_auth(sandbox: HveSandbox) -> None:
    with _client(sandbox, starttls=False, auth=False) as client:
        assert keywords(client) == EXCHANGE_BEFORE_STARTTLS


@pytest.mark.parametrize(
    ("switch", "gone"),
    [
        ("chunking", ["BINARYMIME", "CHUNKING"]),
        ("smtputf8", ["SMTPUTF8"]),
        ("pipelining", ["PIPELINING"]),
        ("eight_bit_mime", ["8BITMIME"]),
    ],
    ids=["chunking", "smtputf8", "pipelining", "8bitmime"],
)
def test_each_extension_has_an_off_switch(sandbox: HveSandbox, switch: str, gone: list[str]) -> None:
    setattr(sandbox.smtp, switch, False)
    with _client(sandbox, auth=False) as client:
        assert keywords(client) == [word for word in EXCHANGE_AFTER_STARTTLS if word not in gone]
    sandbox.smtp.reset_faults()
    sandbox.smtp.pipelining = True
    with _client(sandbox, auth=False) as client:
        assert keywords(client) == EXCHANGE_AFTER_STARTTLS


def test_size_advertises_exchanges_figure_but_hve_still_refuses_over_10_mb(
    sandbox: HveSandbox, client: smtplib.SMTP
) -> None:
    assert client.esmtp_features["size"] == "157286400"
    assert client.docmd("MAIL", f"FROM:<{sandbox.account}> SIZE={10 * 1024 * 1024 + 1}") == (552, TOO_BIG[4:].encode())
    assert client.docmd("MAIL", f"FROM:<{sandbox.account}> SIZE=1000")[0] == 250


def test_advertised_size_switch(sandbox: HveSandbox) -> None:
    sandbox.smtp.advertised_size = 10 * 1024 * 1024
    with _client(sandbox, auth=False) as client:
        assert client.esmtp_features["size"] == "10485760"


# -- BDAT -----------------------------------------------------------------------------------------------------------


def test_bdat_last_delivers_the_exact_octets(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    # 8-bit text, a line that is a lone dot and a bare LF: with BDAT nothing is dot-stuffed or rewritten.
    content = message(sandbox, "Grüße\r\n.\r\n..two\r\nbare\nlf\r\n".encode())
    client.send(bdat_transaction(sandbox, content, "a@contoso.example", mail_options=" BODY=8BITMIME"))
    got = replies(client, 3)
    assert [code for code, _ in got] == [250, 250, 250]
    assert got[2][1].startswith(b"2.0.0 OK <")
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.data == content and delivered.rcpt_tos == ["a@contoso.example"]
    (transaction,) = session_of(sandbox).transactions
    assert transaction.bdat_chunks == 1 and transaction.data_reply is not None
    assert transaction.data_reply.startswith("250 2.0.0 OK")


def test_several_chunks_are_joined_and_binarymime_is_accepted(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    content = message(sandbox, bytes(range(256)) * 4 + b"\r\n")
    parts = [content[:10], content[10:700], content[700:]]
    client.send(
        f"MAIL FROM:<{sandbox.account}> BODY=BINARYMIME\r\nRCPT TO:<a@contoso.example>\r\n".encode()
        + b"".join(f"BDAT {len(p)}\r\n".encode() + p for p in parts)
        + b"BDAT 0 LAST\r\n"
    )
    got = replies(client, 6)
    assert [code for code, _ in got] == [250, 250, 250, 250, 250, 250]
    assert got[2][1] == b"2.0.0 10 octets received"
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.data == content
    assert session_of(sandbox).transactions[0].bdat_chunks == 4


def test_pipelined_bdat_transactions_are_answered_in_order_in_one_round_trip(
    sandbox: HveSandbox, client: smtplib.SMTP
) -> None:
    session = session_of(sandbox)
    before = (session.round_trips, session.commands)
    batch = b"".join(
        bdat_transaction(sandbox, message(sandbox, f"number {n}\r\n".encode()), f"u{n}@contoso.example")
        for n in range(5)
    )
    client.send(batch)
    got = replies(client, 15)
    assert [code for code, _ in got] == [250] * 15
    # Five messages, one write: the client waited once, for the last reply; 3 command lines each.
    assert (session.round_trips - before[0], session.commands - before[1]) == (1, 15)
    delivered = sandbox.wait_for_messages(5)
    assert [m.rcpt_tos for m in delivered] == [[f"u{n}@contoso.example"] for n in range(5)]
    assert [m.data.endswith(f"number {n}\r\n".encode()) for n, m in enumerate(delivered)] == [True] * 5


def test_bdat_without_mail_or_rcpt_gets_503_and_the_chunk_is_drained(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    chunk = b"NOOP\r\nNOOP\r\n"  # were it read as commands, it would get two 250s
    client.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk + b"NOOP\r\n")
    assert replies(client, 2) == [(503, b"5.5.2 Need mail command"), (250, b"OK")]
    client.send(
        f"MAIL FROM:<{sandbox.account}>\r\nRCPT TO:<x@fabrikam.example>\r\nBDAT {len(chunk)} LAST\r\n".encode()
        + chunk
        + b"RSET\r\n"
    )
    assert [reply for reply in replies(client, 4)] == [
        (250, b"2.1.0 Sender OK"),
        (550, b"5.7.54 SMTP; Unable to relay recipient in non-accepted domain"),
        (503, b"5.5.2 Need rcpt command"),
        (250, b"OK"),
    ]
    # A refused MAIL FROM (pipelined): every command of the group is refused, the chunk still drained.
    client.send(bdat_transaction(sandbox, chunk, "a@contoso.example").replace(sandbox.account.encode(), b"x@y.z"))
    assert [code for code, _ in replies(client, 3)] == [550, 503, 503]
    client.send(bdat_transaction(sandbox, message(sandbox), "a@contoso.example"))
    assert [code for code, _ in replies(client, 3)] == [250, 250, 250]
    assert len(sandbox.wait_for_messages(1)) == 1


def test_over_10_mb_by_bdat_gets_552_after_the_last_chunk(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    piece = b"x" * (6 * 1024 * 1024)
    client.send(f"MAIL FROM:<{sandbox.account}>\r\nRCPT TO:<a@contoso.example>\r\n".encode())
    client.send(f"BDAT {len(piece)}\r\n".encode() + piece)
    client.send(f"BDAT {len(piece)} LAST\r\n".encode() + piece)
    got = replies(client, 4)
    assert [code for code, _ in got[:3]] == [250, 250, 250]
    assert got[3] == (552, TOO_BIG[4:].encode())
    assert session_of(sandbox).transactions[0].data_reply == TOO_BIG
    # The transaction is over: the session goes on.
    client.send(bdat_transaction(sandbox, message(sandbox), "a@contoso.example"))
    assert [code for code, _ in replies(client, 3)] == [250, 250, 250]
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.data == message(sandbox)


def test_bdat_content_gets_the_same_from_check_as_data(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    content = b"From: boss@contoso.example\r\nSubject: s\r\n\r\nx\r\n"
    client.send(bdat_transaction(sandbox, content, "a@contoso.example"))
    assert replies(client, 3)[2] == (550, b"5.7.60 SMTP; Client does not have permissions to send as this sender")
    assert not sandbox.messages


def test_content_faults_apply_to_bdat_last(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    sandbox.smtp.fail_next_data(count=1)
    client.send(bdat_transaction(sandbox, message(sandbox), "a@contoso.example"))
    client.send(bdat_transaction(sandbox, message(sandbox), "b@contoso.example"))
    got = replies(client, 6)
    assert got[2] == (554, SUBMISSION_QUOTA_EXCEEDED[4:].encode())
    assert [code for code, _ in got[3:]] == [250, 250, 250]
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == ["b@contoso.example"]


def test_a_hang_up_mid_pipeline_answers_nothing_behind_it(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    sandbox.smtp.disconnect_after(1)
    client.send(b"".join(bdat_transaction(sandbox, message(sandbox), f"u{n}@contoso.example") for n in range(3)))
    got = replies(client, 4)
    assert [code for code, _ in got] == [250, 250, 250, 421]
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.getreply()
    assert [m.rcpt_tos for m in sandbox.wait_for_messages(1)] == [["u0@contoso.example"]]
    assert len(sandbox.messages) == 1


def test_data_is_still_served_and_refused_inside_bdat_or_for_binarymime(
    sandbox: HveSandbox, client: smtplib.SMTP
) -> None:
    client.sendmail(sandbox.account, ["a@contoso.example"], message(sandbox))
    assert session_of(sandbox).transactions[0].bdat_chunks == 0
    client.send(f"MAIL FROM:<{sandbox.account}> BODY=BINARYMIME\r\nRCPT TO:<a@contoso.example>\r\nDATA\r\n".encode())
    assert replies(client, 3)[2] == (503, b"5.5.1 BODY=BINARYMIME requires BDAT, not DATA")
    client.send(b"RSET\r\n" + bdat_transaction(sandbox, b"abc", "a@contoso.example").replace(b" LAST", b""))
    client.send(b"DATA\r\n")
    assert [code for code, _ in replies(client, 5)] == [250, 250, 250, 250, 503]
    assert len(sandbox.wait_for_messages(1)) == 1


def test_no_chunking_switch_refuses_bdat_and_keeps_data(sandbox: HveSandbox) -> None:
    sandbox.smtp.chunking = False
    with _client(sandbox) as client:
        client.send(bdat_transaction(sandbox, message(sandbox), "a@contoso.example") + b"NOOP\r\n")
        got = replies(client, 4)
        assert got[2] == (502, b"5.5.1 BDAT is not offered by this server (no CHUNKING)") and got[3][0] == 250
        assert client.docmd("RSET")[0] == 250
        client.sendmail(sandbox.account, ["a@contoso.example"], message(sandbox))
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.data == message(sandbox)


# -- SMTPUTF8, DSN, AUTH LOGIN ----------------------------------------------------------------------------------------


def test_smtputf8_accepts_internationalised_addresses(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    content = message(sandbox, "für Jürgen\r\n".encode())
    client.send(bdat_transaction(sandbox, content, "jürgen@contoso.example", mail_options=" SMTPUTF8 BODY=8BITMIME"))
    assert [code for code, _ in replies(client, 3)] == [250, 250, 250]
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == ["jürgen@contoso.example"]
    transaction = session_of(sandbox).transactions[0]
    assert "SMTPUTF8" in transaction.mail_options


def test_non_ascii_address_without_smtputf8_gets_553_5_6_7(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    client.send(f"MAIL FROM:<{sandbox.account}>\r\nRCPT TO:<jürgen@contoso.example>\r\n".encode())
    assert replies(client, 2)[1] == (553, b"5.6.7 Non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM")
    client.send("RSET\r\nMAIL FROM:<jürgen@contoso.example>\r\n".encode())
    assert replies(client, 2)[1][0] == 553
    assert session_of(sandbox).transactions[0].rcpt_tos == []


def test_no_smtputf8_switch_refuses_the_parameter(sandbox: HveSandbox) -> None:
    sandbox.smtp.smtputf8 = False
    with _client(sandbox) as client:
        assert client.docmd("MAIL", f"FROM:<{sandbox.account}> SMTPUTF8") == (
            555,
            b"5.5.4 SMTPUTF8 is not offered by this server",
        )


def test_dsn_parameters_are_accepted(sandbox: HveSandbox, client: smtplib.SMTP) -> None:
    client.sendmail(
        sandbox.account,
        ["a@contoso.example"],
        message(sandbox),
        mail_options=["RET=HDRS", "ENVID=run-42"],
        rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;a@contoso.example"],
    )
    (transaction,) = session_of(sandbox).transactions
    assert transaction.mail_options[-2:] == ["RET=HDRS", "ENVID=RUN-42"]
    assert len(sandbox.wait_for_messages(1)) == 1


def test_auth_login_is_refused_after_its_challenges_without_recording_the_password(sandbox: HveSandbox) -> None:
    import base64

    with _client(sandbox, auth=False) as client:
        assert client.docmd("AUTH", "LOGIN") == (334, base64.b64encode(b"Username:"))
        assert client.docmd(base64.b64encode(sandbox.account.encode()).decode())[0] == 334
        secret = "correct horse battery staple"
        assert client.docmd(base64.b64encode(secret.encode()).decode()) == (
            535,
            b"5.7.139 Authentication unsuccessful, basic authentication is disabled",
        )
        assert client.docmd("MAIL", f"FROM:<{sandbox.account}>")[0] == 530
    (attempt,) = session_of(sandbox).auth_attempts
    assert (attempt.mechanism, attempt.user, attempt.success) == ("LOGIN", sandbox.account, False)
    assert secret not in repr(session_of(sandbox))
