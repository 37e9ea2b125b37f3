"""XOAUTH2 SMTP sessions with real smtplib against the sandbox's STARTTLS server; assertions on what it saw."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_hve.exceptions import HveAuthError, HveConfigError, HveConnectionError, HveSendError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.message import build_message
from airflow_provider_hve.sandbox import HveSandbox

ConnFactory = Callable[..., str]


@pytest.fixture
def hook(hve_connection: ConnFactory) -> HveHook:
    return HveHook(hve_conn_id=hve_connection())


def test_auth_line_is_the_exact_xoauth2_string_in_two_steps(sandbox: HveSandbox, hook: HveHook) -> None:
    hook.send_email(to="alice@contoso.example", subject="Hi", html_content="<p>hi</p>")

    (session,) = sandbox.smtp_sessions
    assert session.starttls
    (attempt,) = session.auth_attempts
    token = hook.get_access_token()  # the cached token the session used
    expected = base64.b64encode(f"user={sandbox.account}\x01auth=Bearer {token}\x01\x01".encode()).decode()
    assert attempt.client_lines == ["AUTH XOAUTH2", expected]
    assert attempt.two_step
    assert attempt.reply.startswith("235")
    # EHLO again after STARTTLS, as smtplib forgets the first answer.
    assert len(session.ehlo_names) == 2


def test_a_session_left_by_an_exception_is_dropped_without_quit(sandbox: HveSandbox, hook: HveHook) -> None:
    # `with hook.get_conn() as s:` interrupted (a timeout, SIGTERM) may be mid-message: a QUIT would be read as its
    # content and wait for the timeout. The connection is dropped instead, as smtp_session() does.
    import pytest

    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted), hook.get_conn():
        raise Interrupted
    (record,) = sandbox.smtp_sessions
    assert record.authenticated_as == sandbox.account and not record.quit


def test_get_conn_returns_an_open_authenticated_session(sandbox: HveSandbox, hook: HveHook) -> None:
    """The Airflow convention: get_conn() hands back the hook's client, ready to use; the caller closes it."""
    from airflow_provider_hve.smtp import HveSmtpSession

    session = hook.get_conn()
    try:
        assert isinstance(session, HveSmtpSession) and session.is_open
        (record,) = sandbox.smtp_sessions
        assert record.starttls and record.authenticated_as == sandbox.account  # before anything is sent
        (attempt,) = record.auth_attempts
        assert attempt.success and attempt.reply.startswith("235")
        outgoing = build_message(sender=sandbox.account, to="alice@contoso.example", subject="Hi", text_content="x")
        result = session.send(outgoing.message, outgoing.recipients)
    finally:
        session.close()
    assert result.accepted == ("alice@contoso.example",) and not session.is_open
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.message["Subject"] == "Hi"
    assert len(sandbox.smtp_sessions) == 1 and sandbox.smtp_sessions[0].quit
    with hook.get_conn() as second:  # a new session each call, usable as a context manager
        assert second.is_open
    assert len(sandbox.smtp_sessions) == 2 and sandbox.smtp_sessions[1].quit


def test_many_messages_one_connection_one_token(
    sandbox: HveSandbox, hook: HveHook, token_posts: Callable[[], list[Any]]
) -> None:
    with hook.smtp_session() as session:
        for n in range(20):
            outgoing = build_message(
                sender=sandbox.account,
                to=f"user{n}@contoso.example",
                subject=f"Report {n}",
                text_content=f"#{n}",
            )
            result = session.send(outgoing.message, outgoing.recipients)
            assert result.accepted == (f"user{n}@contoso.example",)

    assert len(sandbox.smtp_sessions) == 1
    assert len(sandbox.smtp_sessions[0].transactions) == 20
    assert len(token_posts()) == 1
    delivered = sandbox.wait_for_messages(20)
    assert sorted(m.message["Subject"] for m in delivered) == sorted(f"Report {n}" for n in range(20))


def test_bcc_is_delivered_but_absent_from_headers(sandbox: HveSandbox, hook: HveHook) -> None:
    result = hook.send_email(
        to=["Alice <alice@contoso.example>"],
        cc="carol@contoso.example",
        bcc=["secret-auditor@contoso.example"],
        subject="Quarterly numbers",
        html_content="<h1>Numbers</h1>",
        text_content="Numbers",
    )

    (delivered,) = sandbox.wait_for_messages(1)
    assert sorted(delivered.rcpt_tos) == [
        "alice@contoso.example",
        "carol@contoso.example",
        "secret-auditor@contoso.example",
    ]
    assert b"secret-auditor" not in delivered.data
    assert delivered.message["Bcc"] is None
    assert delivered.message["To"] == "Alice <alice@contoso.example>"
    assert delivered.message.get_content_type() == "multipart/alternative"
    assert delivered.path.suffix == ".eml" and delivered.path.read_bytes() == delivered.data
    assert result.message_id == delivered.message["Message-ID"]
    assert set(result.accepted) == set(delivered.rcpt_tos)


def test_more_than_fifty_recipients_are_split_into_transactions(sandbox: HveSandbox, hook: HveHook) -> None:
    recipients = [f"person{n:03d}@contoso.example" for n in range(120)]
    result = hook.send_email(to=recipients, subject="All hands", text_content="See you there")

    transactions = sandbox.smtp_sessions[0].transactions
    assert [len(t.rcpt_tos) for t in transactions] == [50, 50, 20]
    assert sorted(r for t in transactions for r in t.rcpt_tos) == recipients
    assert sorted(result.accepted) == recipients
    delivered = sandbox.wait_for_messages(3)
    assert {m.message["Message-ID"] for m in delivered} == {result.message_id}


def test_refused_recipient_is_reported_others_delivered(sandbox: HveSandbox, hook: HveHook) -> None:
    result = hook.send_email(to=["alice@contoso.example", "someone@gmail.com"], subject="Hi", text_content="hello")
    assert result.accepted == ("alice@contoso.example",)
    code, reply = result.refused["someone@gmail.com"]
    assert code == 550 and "5.7.54" in reply
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == ["alice@contoso.example"]


def test_all_recipients_refused_raises_with_each_reason(sandbox: HveSandbox, hook: HveHook) -> None:
    with pytest.raises(HveSendError) as info:
        hook.send_email(to="someone@gmail.com", subject="Hi", text_content="hello")
    assert info.value.refused["someone@gmail.com"][0] == 550
    assert "accepted domains" in str(info.value)
    assert not sandbox.messages


def test_wrong_sender_is_explained(sandbox: HveSandbox, hook: HveHook) -> None:
    outgoing = build_message(sender="other@contoso.example", to="a@contoso.example", subject="x", text_content="x")
    with hook.smtp_session() as session, pytest.raises(HveSendError, match="5.7.60.*only as the HVE account"):
        session.send(outgoing.message, outgoing.recipients, envelope_from="other@contoso.example")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"to": "not-an-address"}, "'to'"),
        ({"to": "a@contoso.example", "cc": "b@@contoso.example"}, "'cc'"),
        ({"to": "a@contoso.example", "bcc": ["ok@contoso.example", "bad address"]}, "'bcc'"),
        ({"to": []}, "'to'"),
        ({"to": "a@contoso.example", "subject": "Hi\r\nBcc: victim@contoso.example"}, "'subject'"),
        ({"to": "a@contoso.example\r\nBcc: victim@contoso.example"}, "'to'"),
        ({"to": "a@contoso.example", "headers": {"X-Run": "1\nBcc: v@contoso.example"}}, "headers"),
        ({"to": "a@contoso.example", "headers": {"Bcc": "v@contoso.example"}}, "'headers'"),
        ({"to": "a@contoso.example", "files": ["/nonexistent/report.csv"]}, "'files'"),
        ({"to": "a@contoso.example", "from_email": "Reports"}, "'from_email'"),
    ],
    ids=[
        "bad-to",
        "bad-cc",
        "bad-bcc-in-list",
        "no-recipients",
        "subject-injection",
        "address-injection",
        "header-value-injection",
        "reserved-header",
        "missing-file",
        "bad-from",
    ],
)
def test_bad_input_is_refused_before_connecting(
    sandbox: HveSandbox,
    hook: HveHook,
    token_posts: Callable[[], list[Any]],
    kwargs: dict[str, Any],
    argument: str,
) -> None:
    kwargs.setdefault("subject", "Hello")
    with pytest.raises(HveConfigError) as info:
        hook.send_email(text_content="body", **kwargs)
    assert argument in str(info.value)
    assert not sandbox.smtp_sessions
    assert not token_posts()


def test_expiring_token_is_refreshed_and_auth_retried_once(
    sandbox: HveSandbox, hook: HveHook, token_posts: Callable[[], list[Any]]
) -> None:
    sandbox.smtp.fail_next_auth("501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon", count=1)
    hook.send_email(to="alice@contoso.example", subject="Hi", text_content="hello")

    (session,) = sandbox.smtp_sessions
    first, second = session.auth_attempts
    assert first.reply.startswith("501 5.5.127") and second.reply.startswith("235")
    assert first.token != second.token
    assert len(token_posts()) == 2
    assert len(sandbox.wait_for_messages(1)) == 1


def test_token_still_expiring_after_refresh_is_diagnosed(sandbox: HveSandbox, hook: HveHook) -> None:
    # Entra keeps issuing a token HVE finds too short-lived: the real 10-minute rule, not an injected fault.
    sandbox.token_lifetime = 9 * 60
    with pytest.raises(HveAuthError) as info:
        hook.send_email(to="alice@contoso.example", subject="Hi", text_content="hello")
    assert "5.5.127" in str(info.value) and "clock" in str(info.value)
    assert len(sandbox.smtp_sessions[0].auth_attempts) == 2
    assert not sandbox.messages


def _app_not_allowed(sb: HveSandbox) -> dict[str, Any]:
    app = sb.register_app(hve_allowed=False)
    return {"client_id": app.client_id, "password": app.secret}


def _no_mail_send(sb: HveSandbox) -> dict[str, Any]:
    app = sb.register_app(application_permissions=set())
    return {"client_id": app.client_id, "password": app.secret}


def _wrong_account(sb: HveSandbox) -> dict[str, Any]:
    return {"login": "someone-else@contoso.example"}


@pytest.mark.parametrize(
    "setup",
    [_app_not_allowed, _no_mail_send, _wrong_account],
    ids=["app-not-on-hve-allowed-list", "no-mail-send-consent", "login-not-the-hve-account"],
)
def test_hve_auth_refusal_is_diagnosed(
    sandbox: HveSandbox, hve_connection: ConnFactory, setup: Callable[[HveSandbox], dict[str, Any]]
) -> None:
    hook = HveHook(hve_conn_id=hve_connection(conn_id="hve_refused", **setup(sandbox)))
    with pytest.raises(HveAuthError) as info:
        hook.send_email(to="alice@contoso.example", subject="Hi", text_content="hello")

    message = str(info.value)
    assert info.value.code == "535"
    for fragment in (
        "535 5.7.3",
        "'hve_refused'",
        "Mail.Send",
        "Add-HVEAppAccess",
        "Login is the HVE account",
    ):
        assert fragment in message
    (attempt,) = sandbox.smtp_sessions[0].auth_attempts
    assert attempt.token and attempt.token not in message
    assert not sandbox.messages


def test_test_connection_reports_success_and_failure(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    ok, message = HveHook(hve_conn_id=hve_connection()).test_connection()
    assert ok, message
    assert "STARTTLS" in message and sandbox.account in message
    session = sandbox.smtp_sessions[0]
    assert session.auth_attempts[0].success and not session.transactions

    ok, message = HveHook(hve_conn_id=hve_connection(conn_id="hve_bad", password="wrong")).test_connection()
    assert not ok
    assert "AADSTS7000215" in message and "wrong" not in message.split("AADSTS7000215")[0]


@pytest.fixture(params=[False, True], ids=["no-starttls", "auth-offered-in-clear"])
def plaintext_sandbox(request: pytest.FixtureRequest) -> Iterator[HveSandbox]:
    with HveSandbox(starttls=False, auth_in_clear=request.param) as sb:
        yield sb


def test_no_token_is_sent_without_starttls(plaintext_sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("AIRFLOW_CONN_HVE_PLAIN", json.dumps(plaintext_sandbox.connection()))
    with pytest.raises(HveConnectionError, match="does not offer STARTTLS, so no token was sent"):
        HveHook(hve_conn_id="hve_plain").send_email(to="a@contoso.example", subject="x", text_content="x")

    (session,) = plaintext_sandbox.smtp_sessions
    assert not session.starttls
    assert not session.auth_attempts


def test_untrusted_smtp_certificate_is_refused(
    sandbox: HveSandbox, hve_connection: ConnFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Entra is trusted through the environment; the SMTP server's CA is trusted nowhere.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sandbox.ca_bundle)
    hook = HveHook(hve_conn_id=hve_connection(ca_bundle=None))
    with pytest.raises(HveConnectionError, match="certificate of the SMTP server .* failed verification"):
        hook.send_email(to="a@contoso.example", subject="x", text_content="x")

    assert all(not s.auth_attempts for s in sandbox.smtp_sessions)


def test_unreachable_server_names_host_and_port(hve_connection: ConnFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from airflow_provider_hve import smtp

    waits: list[float] = []
    monkeypatch.setattr(smtp, "_sleep", waits.append)  # the clock: retries back off without waiting here

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = HveHook(hve_conn_id=hve_connection(port=port))
    with pytest.raises(HveConnectionError, match=f"localhost:{port}.*'hve_default'.*Gave up after 4 attempt"):
        hook.send_email(to="a@contoso.example", subject="x", text_content="x")
    assert len(waits) == 3  # connection refused may be a restart: retried, then reported


def test_size_limit_counts_crlf_line_ends(
    sandbox: HveSandbox, hook: HveHook, token_posts: Callable[[], list[Any]], tmp_path: Any
) -> None:
    # base64 of this file is ~10.4 MB with LF line ends (under 10 MiB) and ~10.54 MB as sent with CRLF.
    big = tmp_path / "export.bin"
    big.write_bytes(b"\x00" * 7_700_000)
    with pytest.raises(HveConfigError, match="HVE accepts at most 10 MB"):
        hook.send_email(to="a@contoso.example", subject="big", text_content="x", files=[str(big)])
    assert not sandbox.smtp_sessions and not token_posts()


def test_from_address_other_than_the_account_is_warned_then_refused_by_hve(
    sandbox: HveSandbox, hook: HveHook, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(HveSendError, match="5.7.60.*only as the HVE account"):
        hook.send_email(to="a@contoso.example", subject="x", text_content="x", from_email="CEO <ceo@contoso.example>")
    assert "is not the HVE account" in caplog.text
    assert not sandbox.messages


def test_display_name_on_the_account_is_fine(sandbox: HveSandbox, hook: HveHook) -> None:
    hook.send_email(
        to="a@contoso.example",
        subject="x",
        text_content="x",
        from_email=f"Nightly Reports <{sandbox.account}>",
    )
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.message["From"] == f"Nightly Reports <{sandbox.account}>"


@pytest.mark.parametrize(
    ("reply", "fix"),
    [
        ("550 5.7.30 Basic authentication is not supported for Client Submission", "smtp.hve.mx.microsoft"),
        ("535 5.7.139 Authentication unsuccessful, the user credentials were incorrect", "SmtpClientAuthentication"),
        ("535 5.7.139 Authentication unsuccessful, basic authentication is disabled", "security defaults"),
        ("530 5.7.57 Client not authenticated to send mail", "TLS-inspecting proxy"),
    ],
    ids=["550-5.7.30-basic-auth-retired", "535-5.7.139-policy", "535-5.7.139-security-defaults", "530-5.7.57"],
)
def test_exchange_online_auth_refusals_get_their_own_diagnosis(
    sandbox: HveSandbox, hook: HveHook, reply: str, fix: str
) -> None:
    """The replies users of Exchange Online now meet (basic auth retired, tenant policy, not authenticated)."""
    sandbox.smtp.fail_next_auth(reply, count=2)
    with pytest.raises(HveAuthError) as info:
        hook.send_email(to="alice@contoso.example", subject="Hi", text_content="hello")
    message = str(info.value)
    code, enhanced = reply.split()[:2]
    assert info.value.code == code and f"{code} {enhanced}" in message
    assert "Likely cause and fix:" in message and fix in message
    assert "Check, in this order" not in message  # not the generic 5.7.3 diagnosis
    assert not sandbox.messages
