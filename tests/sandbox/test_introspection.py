"""The sandbox's token introspection (RFC 7662), which a real MTA (Dovecot's oauth2 passdb) checks tokens with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_hve.sandbox import HveSandbox

from .clients import SandboxHttpSession


@pytest.fixture
def introspect(sb: HveSandbox, http: SandboxHttpSession) -> Callable[[str], dict[str, Any]]:
    """POST a token as Dovecot does (form field ``token``) and return the JSON answer."""

    def post(token: str) -> dict[str, Any]:
        response = http.post(sb.introspection_endpoint("127.0.0.1"), data={"token": token})
        assert response.status_code == 200  # inactive is an answer, not an HTTP error (RFC 7662 section 2.2)
        return dict(response.json())

    return post


def test_app_token_is_active_for_the_hve_account_that_allows_the_app(
    sb: HveSandbox, introspect: Callable[[str], dict[str, Any]]
) -> None:
    assert introspect(sb.issue_access_token()) == {
        "active": True,
        "username": "hve-sender@contoso.example",
        "token_type": "Bearer",
    }
    assert [(v.active, v.reason) for v in sb.introspections] == [(True, "ok")]
    assert not sb.token_requests  # kept apart from the client's token requests


def test_delegated_token_is_active_for_its_user(sb: HveSandbox, introspect: Callable[[str], dict[str, Any]]) -> None:
    answer = introspect(sb.issue_access_token(user=sb.account))
    assert (answer["active"], answer["username"]) == (True, sb.account)


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        pytest.param(lambda sb: sb.issue_access_token(lifetime=-60), "ExpiredSignatureError", id="expired"),
        pytest.param(
            lambda sb: sb.issue_access_token(audience="https://graph.microsoft.com"), "InvalidAudience", id="audience"
        ),
        pytest.param(lambda sb: "not-a-jwt", "not a JWT", id="garbage"),
        pytest.param(
            lambda sb: sb.issue_access_token(client_id=sb.register_app(hve_allowed=False).client_id),
            "no HVE account allows the app",
            id="app-not-allowed",
        ),
        pytest.param(
            lambda sb: sb.issue_access_token(client_id=sb.register_app(application_permissions=set()).client_id),
            "lacks the Mail.Send role",
            id="no-Mail.Send",
        ),
        pytest.param(
            lambda sb: sb.issue_access_token(
                user=sb.register_user("plain@contoso.example", "pw").upn, client_id=sb.client_id
            ),
            "is not an HVE account",
            id="delegated-not-hve-account",
        ),
    ],
)
def test_tokens_hve_would_refuse_are_inactive_and_say_nothing_more(
    sb: HveSandbox, introspect: Callable[[str], dict[str, Any]], make_token: Callable[[HveSandbox], str], reason: str
) -> None:
    assert introspect(make_token(sb)) == {"active": False}
    [verdict] = sb.introspections.snapshot()
    assert not verdict.active and reason in verdict.reason


def test_an_app_allowed_by_two_accounts_is_refused(sb: HveSandbox, introspect: Callable[[str], dict[str, Any]]) -> None:
    other = sb.register_user("hve-other@contoso.example", "pw", hve_allowed_apps={sb.client_id})
    try:
        assert introspect(sb.issue_access_token()) == {"active": False}
        assert "several HVE accounts" in sb.introspections[0].reason
    finally:
        other.hve_allowed_apps = None  # the shared sandbox's directory outlives this test
