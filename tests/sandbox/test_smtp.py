"""The sandbox SMTP server against real smtplib: STARTTLS, XOAUTH2, HVE's sending rules."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable
from contextlib import AbstractContextManager
from email.message import EmailMessage
from pathlib import Path

import msal
import pytest

from airflow_provider_hve.sandbox import HveSandbox

from .clients import SCOPE, xoauth2

SmtpFactory = Callable[..., AbstractContextManager[smtplib.SMTP]]

# Exchange checks the From header against the authenticated account too (550 5.7.60 at DATA).
FROM_ACCOUNT = b"From: hve-sender@contoso.example\r\n"


def auth(client: smtplib.SMTP, user: str, token: str) -> tuple[int, bytes]:
    return client.docmd("AUTH", "XOAUTH2 " + xoauth2(user, token))


def test_one_step_xoauth2_is_recorded_exactly(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    token = sb.issue_access_token()
    with smtp_client() as client:
        assert "xoauth2" in client.esmtp_features["auth"].lower()
        assert auth(client, sb.account, token) == (235, b"2.7.0 Authentication successful")
    (session,) = sb.smtp_sessions
    attempt = session.auth_attempts[0]
    assert attempt.client_lines == ["AUTH XOAUTH2 " + xoauth2(sb.account, token)]
    assert not attempt.two_step
    assert attempt.initial_response == xoauth2(sb.account, token)
    assert (attempt.user, attempt.token, attempt.success) == (sb.account, token, True)
    assert session.starttls and session.authenticated_as == sb.account


def test_two_step_xoauth2_through_smtplib_auth(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    token = sb.issue_access_token()

    def authobject(challenge: bytes | None = None) -> str:
        return f"user={sb.account}\x01auth=Bearer {token}\x01\x01"

    with smtp_client() as client:
        code, _ = client.auth("XOAUTH2", authobject, initial_response_ok=False)
        assert code == 235
    attempt = sb.smtp_sessions[0].auth_attempts[0]
    assert attempt.two_step
    assert attempt.client_lines == ["AUTH XOAUTH2", xoauth2(sb.account, token)]
    assert attempt.reply == "235 2.7.0 Authentication successful"


def test_msal_token_end_to_end_delivers_message(
    sb: HveSandbox, confidential: Callable[..., msal.ConfidentialClientApplication], smtp_client: SmtpFactory
) -> None:
    token = confidential(sb.client_secret).acquire_token_for_client(scopes=[SCOPE])["access_token"]
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sb.account, "ops@contoso.example", "Hello HVE"
    message.set_content("Body text")
    with smtp_client() as client:
        assert auth(client, sb.account, token)[0] == 235
        assert client.send_message(message) == {}
    (delivered,) = sb.wait_for_messages(1)
    assert delivered.mail_from == sb.account
    assert delivered.rcpt_tos == ["ops@contoso.example"]
    assert delivered.message["Subject"] == "Hello HVE"
    assert delivered.path.suffix == ".eml" and delivered.path.parent == sb.mailbox_dir
    assert delivered.path.read_bytes() == delivered.data
    assert delivered.session_id == sb.smtp_sessions[0].session_id


def test_delegated_token_from_password_flow_authenticates(
    sb: HveSandbox, public: Callable[..., msal.PublicClientApplication], smtp_client: SmtpFactory
) -> None:
    result = public().acquire_token_by_username_password(sb.account, sb.account_password, scopes=[SCOPE])
    with smtp_client() as client:
        assert auth(client, sb.account, result["access_token"])[0] == 235


def test_many_messages_over_one_connection_are_numbered(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    for n in range(3):
        authed_client.sendmail(sb.account, ["a@contoso.example"], FROM_ACCOUNT + f"Subject: {n}\r\n\r\nx\r\n".encode())
    messages = sb.wait_for_messages(3)
    assert len(sb.smtp_sessions) == 1
    assert len(sb.smtp_sessions[0].transactions) == 3
    assert [m.path.name for m in messages] == sorted(m.path.name for m in messages)
    assert [m.message["Subject"] for m in messages] == ["0", "1", "2"]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("tampered", id="bad-signature"),
        pytest.param("wrong_user", id="user-is-not-the-hve-account"),
        pytest.param("not_allowed", id="app-not-on-allowed-list"),
        pytest.param("no_role", id="app-token-without-mail-send"),
        pytest.param("no_scp", id="delegated-token-without-mail-send"),
        pytest.param("other_upn", id="delegated-token-of-another-user"),
        pytest.param("wrong_audience", id="graph-audience"),
        pytest.param("expired", id="expired-token"),
    ],
)
def test_refused_tokens_get_535(sb: HveSandbox, smtp_client: SmtpFactory, case: str) -> None:
    user = sb.account
    if case == "tampered":
        token = sb.issue_access_token()[:-4] + "AAAA"
    elif case == "wrong_user":
        token, user = sb.issue_access_token(), "someone@contoso.example"
    elif case == "not_allowed":
        token = sb.issue_access_token(client_id=sb.register_app(hve_allowed=False).client_id)
    elif case == "no_role":
        token = sb.issue_access_token(client_id=sb.register_app(application_permissions=set()).client_id)
    elif case == "no_scp":
        app = sb.register_app(delegated_permissions=set())
        token = sb.issue_access_token(client_id=app.client_id, user=sb.account)
    elif case == "other_upn":
        sb.register_user("other@contoso.example", "pw")
        token = sb.issue_access_token(user="other@contoso.example")
    elif case == "wrong_audience":
        token = sb.issue_access_token(audience="https://graph.microsoft.com")
    else:
        token = sb.issue_access_token(lifetime=-5)
    with smtp_client() as client:
        assert auth(client, user, token) == (535, b"5.7.3 Authentication unsuccessful")
        assert client.docmd("MAIL", f"FROM:<{sb.account}>")[0] == 530
    assert sb.smtp_sessions[0].auth_attempts[0].reason


def test_token_expiring_within_ten_minutes_gets_501(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    with smtp_client() as client:
        code, reply = auth(client, sb.account, sb.issue_access_token(lifetime=590))
    assert (code, reply) == (501, b"5.5.127 Invalid XOAUTH2 auth data - Token will expire soon")


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param("not-base64!", id="not-base64"),
        pytest.param(base64.b64encode(b"user=x auth=y").decode(), id="no-separators"),
    ],
)
def test_malformed_xoauth2_gets_501(sb: HveSandbox, smtp_client: SmtpFactory, blob: str) -> None:
    with smtp_client() as client:
        assert client.docmd("AUTH", "XOAUTH2 " + blob) == (501, b"5.5.124 Invalid XOAUTH2 auth data")


def test_fail_next_auth_overrides_a_good_token(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    sb.smtp.fail_next_auth(count=1)
    token = sb.issue_access_token()
    with smtp_client() as first:
        assert auth(first, sb.account, token)[0] == 501
    with smtp_client() as second:
        assert auth(second, sb.account, token)[0] == 235


def test_no_auth_before_starttls(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    with smtp_client(starttls=False) as client:
        assert "starttls" in client.esmtp_features
        assert "auth" not in client.esmtp_features
        assert auth(client, sb.account, sb.issue_access_token())[0] == 538


def test_starttls_off_switch(make_sandbox: Callable[..., HveSandbox], smtp_client: SmtpFactory) -> None:
    sandbox = make_sandbox(starttls=False)
    with smtp_client(sandbox, starttls=False) as client:
        assert "starttls" not in client.esmtp_features
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.starttls()


def test_auth_in_clear_switch_advertises_auth_before_tls(
    make_sandbox: Callable[..., HveSandbox], smtp_client: SmtpFactory
) -> None:
    sandbox = make_sandbox(auth_in_clear=True)
    with smtp_client(sandbox, starttls=False) as client:
        assert client.esmtp_features["auth"].split() == ["LOGIN", "XOAUTH2"]
        assert "starttls" in client.esmtp_features


def test_login_and_xoauth2_are_offered_as_by_exchange(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    with smtp_client() as client:
        assert client.esmtp_features["auth"].split() == ["LOGIN", "XOAUTH2"]
        assert client.esmtp_features["size"] == "157286400"
        assert client.docmd("AUTH", "PLAIN AGZvbwBiYXI=")[0] == 504


def test_mail_before_auth_gets_530(sb: HveSandbox, smtp_client: SmtpFactory) -> None:
    with smtp_client() as client:
        assert client.docmd("MAIL", f"FROM:<{sb.account}>") == (
            530,
            b"5.7.57 Client not authenticated to send mail",
        )


def test_wrong_sender_gets_550_5_7_60(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        authed_client.sendmail("boss@contoso.example", ["a@contoso.example"], FROM_ACCOUNT + b"Subject: x\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.60")


def test_from_header_of_another_sender_gets_550_5_7_60_at_data(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        authed_client.sendmail(
            sb.account, ["a@contoso.example"], b"From: boss@contoso.example\r\nSubject: x\r\n\r\nx\r\n"
        )
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.60")
    assert not sb.messages


def test_sender_match_is_case_insensitive(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    authed_client.sendmail(sb.account.upper(), ["a@contoso.example"], FROM_ACCOUNT + b"Subject: x\r\n\r\nx\r\n")
    assert sb.wait_for_messages(1)[0].mail_from == sb.account.upper()


def test_foreign_domain_is_refused_and_the_rest_delivered(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    refused = authed_client.sendmail(
        sb.account,
        ["a@contoso.example", "x@gmail.example", "b@fabrikam.contoso.example"],
        FROM_ACCOUNT + b"Subject: x\r\n\r\nx\r\n",
    )
    assert refused == {"x@gmail.example": (550, b"5.7.54 SMTP; Unable to relay recipient in non-accepted domain")}
    assert sb.wait_for_messages(1)[0].rcpt_tos == ["a@contoso.example", "b@fabrikam.contoso.example"]


def test_51st_recipient_gets_452(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    recipients = [f"user{n}@contoso.example" for n in range(51)]
    refused = authed_client.sendmail(sb.account, recipients, FROM_ACCOUNT + b"Subject: x\r\n\r\nx\r\n")
    assert refused == {"user50@contoso.example": (452, b"4.5.3 Too many recipients")}
    assert len(sb.wait_for_messages(1)[0].rcpt_tos) == 50
    replies = sb.smtp_sessions[0].transactions[0].rcpt_replies
    assert replies[-1] == ("user50@contoso.example", "452 4.5.3 Too many recipients")


BIG_BODY = FROM_ACCOUNT + b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 10_600


def test_message_over_10_mb_gets_552_after_data(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    # No SIZE= on MAIL FROM, so the server only finds out while reading DATA.
    assert authed_client.mail(sb.account)[0] == 250
    assert authed_client.rcpt("a@contoso.example")[0] == 250
    assert authed_client.data(BIG_BODY) == (552, b"5.3.4 Message size exceeds fixed maximum message size")
    assert len(sb.messages) == 0


def test_declared_size_over_10_mb_gets_552_at_mail_from(sb: HveSandbox, authed_client: smtplib.SMTP) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        authed_client.sendmail(sb.account, ["a@contoso.example"], BIG_BODY)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        552,
        b"5.3.4 Message size exceeds fixed maximum message size",
    )


def test_wait_for_messages_times_out(sb: HveSandbox) -> None:
    with pytest.raises(TimeoutError):
        sb.wait_for_messages(1, timeout=0.1)


def test_given_mailbox_is_kept(tmp_path: Path, make_sandbox: Callable[..., HveSandbox]) -> None:
    sandbox = make_sandbox(mailbox_dir=tmp_path / "mail")
    sandbox.stop()
    assert (tmp_path / "mail").is_dir()
