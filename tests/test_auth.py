"""Entra tokens through real MSAL against the sandbox's HTTPS token endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt
import pytest

from airflow_provider_hve.auth import REFRESH_MARGIN
from airflow_provider_hve.exceptions import HveAuthError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox

ConnFactory = Callable[..., str]


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.mark.parametrize(
    ("auth_mode", "grant_type", "claim"),
    [
        ("client_secret", "client_credentials", "roles"),
        ("certificate", "client_credentials", "roles"),
        ("workload_identity", "client_credentials", "roles"),
        ("password", "password", "scp"),
    ],
    ids=["client-secret", "certificate", "workload-identity", "delegated-password"],
)
def test_each_auth_mode_gets_a_mail_send_token(
    sandbox: HveSandbox,
    hve_connection: ConnFactory,
    token_posts: Callable[[], list[Any]],
    auth_mode: str,
    grant_type: str,
    claim: str,
) -> None:
    if auth_mode == "workload_identity":
        sandbox.write_federated_token()
    token = HveHook(hve_conn_id=hve_connection(auth_mode=auth_mode)).get_access_token()

    assert "Mail.Send" in claims(token)[claim]
    (request,) = token_posts()
    assert request.grant_type == grant_type
    assert request.status == 200


def test_client_secret_flow_posts_the_secret_to_the_tenant(
    sandbox: HveSandbox, hve_connection: ConnFactory, token_posts: Callable[[], list[Any]]
) -> None:
    HveHook(hve_conn_id=hve_connection()).get_access_token()
    (request,) = token_posts()
    assert request.path == f"/{sandbox.tenant_id}/oauth2/v2.0/token"
    assert request.form["client_secret"] == sandbox.client_secret
    assert request.form["scope"] == "https://outlook.office365.com/.default"


def test_certificate_flow_sends_a_signed_assertion_not_a_secret(
    hve_connection: ConnFactory, token_posts: Callable[[], list[Any]]
) -> None:
    HveHook(hve_conn_id=hve_connection(auth_mode="certificate")).get_access_token()
    (request,) = token_posts()
    assert "client_secret" not in request.form
    assert request.form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def test_delegated_flow_posts_the_accounts_credentials_and_no_client_secret(
    sandbox: HveSandbox, hve_connection: ConnFactory, token_posts: Callable[[], list[Any]]
) -> None:
    token = HveHook(hve_conn_id=hve_connection(auth_mode="password")).get_access_token()

    (request,) = token_posts()
    assert request.form["username"] == sandbox.account
    assert request.form["password"] == sandbox.account_password
    assert "client_secret" not in request.form
    assert "client_assertion" not in request.form
    assert claims(token)["upn"] == sandbox.account


def test_one_token_request_for_many_hooks(hve_connection: ConnFactory, token_posts: Callable[[], list[Any]]) -> None:
    conn_id = hve_connection()
    tokens = {HveHook(hve_conn_id=conn_id).get_access_token() for _ in range(25)}
    assert len(tokens) == 1
    assert len(token_posts()) == 1


def test_token_inside_hve_refusal_window_is_replaced(
    sandbox: HveSandbox, hve_connection: ConnFactory, token_posts: Callable[[], list[Any]]
) -> None:
    # MSAL would serve this token from its cache for 6 more minutes; HVE would refuse it.
    sandbox.token_lifetime = REFRESH_MARGIN - 60
    hook = HveHook(hve_conn_id=hve_connection())
    first = hook.get_access_token()
    second = hook.get_access_token()
    assert first != second
    assert len(token_posts()) == 2


def test_force_refresh_asks_entra_again(hve_connection: ConnFactory, token_posts: Callable[[], list[Any]]) -> None:
    hook = HveHook(hve_conn_id=hve_connection())
    first = hook.get_access_token()
    assert hook.get_access_token(force_refresh=True) != first
    assert len(token_posts()) == 2


def test_token_is_registered_with_the_secret_masker(hve_connection: ConnFactory) -> None:
    from airflow.providers.common.compat.sdk import redact

    token = HveHook(hve_conn_id=hve_connection()).get_access_token()
    assert token not in str(redact(f"token was {token}"))


def _wrong_secret(sb: HveSandbox) -> dict[str, Any]:
    return {"password": "5d1e9b3c-7a2f-4c6d-8e0b-1f3a5c7e9b2d"}


def _expired_secret(sb: HveSandbox) -> dict[str, Any]:
    app = sb.register_app(secret_expired=True)
    return {"client_id": app.client_id, "password": app.secret}


def _unknown_client(sb: HveSandbox) -> dict[str, Any]:
    return {"client_id": "0f0f0f0f-1111-2222-3333-444444444444"}


def _unknown_tenant(sb: HveSandbox) -> dict[str, Any]:
    return {"tenant_id": "11111111-0000-0000-0000-000000000000"}


def _wrong_password(sb: HveSandbox) -> dict[str, Any]:
    return {"auth_mode": "password", "password": "not-the-password"}


def _public_flows_off(sb: HveSandbox) -> dict[str, Any]:
    app = sb.register_app(allow_public_client_flows=False)
    return {"auth_mode": "password", "client_id": app.client_id}


def _no_delegated_consent(sb: HveSandbox) -> dict[str, Any]:
    app = sb.register_app(delegated_permissions=set())
    return {"auth_mode": "password", "client_id": app.client_id}


def _unknown_scope(sb: HveSandbox) -> dict[str, Any]:
    return {"scope": "https://graph.contoso.example/.default"}


@pytest.mark.parametrize(
    ("setup", "code", "advice"),
    [
        (_wrong_secret, "AADSTS7000215", "Value"),
        (_expired_secret, "AADSTS7000222", "expired"),
        (_unknown_client, "AADSTS700016", "'client_id'"),
        (_unknown_tenant, "AADSTS90002", "'tenant_id'"),
        (_wrong_password, "AADSTS50126", "Wrong user name or password"),
        (_public_flows_off, "AADSTS7000218", "Allow public client flows"),
        (_no_delegated_consent, "AADSTS65001", "Grant admin consent"),
        (_unknown_scope, "AADSTS500011", "'scope'"),
    ],
    ids=[
        "wrong-secret",
        "expired-secret",
        "unknown-client",
        "unknown-tenant",
        "wrong-password",
        "public-client-flows-off",
        "delegated-consent-missing",
        "unknown-scope",
    ],
)
def test_entra_errors_are_diagnosed(
    sandbox: HveSandbox,
    hve_connection: ConnFactory,
    setup: Callable[[HveSandbox], dict[str, Any]],
    code: str,
    advice: str,
) -> None:
    overrides = setup(sandbox)
    auth_mode = overrides.pop("auth_mode", "client_secret")
    secret = overrides.get("password")
    hook = HveHook(hve_conn_id=hve_connection(conn_id="hve_broken", auth_mode=auth_mode, **overrides))

    with pytest.raises(HveAuthError) as info:
        hook.get_access_token()

    message = str(info.value)
    assert info.value.code == code
    assert code in message
    assert advice in message
    assert "'hve_broken'" in message
    # The correlation id Microsoft support asks for is the one the server logged.
    logged = [r for r in sandbox.token_requests if r.error_code == int(code.removeprefix("AADSTS"))]
    assert logged
    assert info.value.correlation_id
    assert info.value.correlation_id in message
    if secret:
        assert secret not in message
    assert sandbox.client_secret not in message
    assert sandbox.account_password not in message


def test_untrusted_token_endpoint_certificate(hve_connection: ConnFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    hook = HveHook(hve_conn_id=hve_connection(ca_bundle=None))
    with pytest.raises(HveAuthError, match="certificate of the Entra token endpoint .* is not trusted.*'ca_bundle'"):
        hook.get_access_token()


def test_ca_bundle_wins_over_requests_ca_bundle(
    sandbox: HveSandbox, hve_connection: ConnFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many machines set REQUESTS_CA_BUNDLE to the system store, which does not hold the sandbox CA.
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    assert HveHook(hve_conn_id=hve_connection()).get_access_token()


@pytest.mark.parametrize("status", [429, 503], ids=["throttled", "unavailable"])
def test_entra_throttling_is_waited_out_with_retry_after(
    sandbox: HveSandbox, hve_connection: ConnFactory, token_posts: Callable[[], list[Any]], status: int
) -> None:
    import time

    sandbox.entra.throttle(1, status=status, retry_after=1)
    started = time.monotonic()
    assert HveHook(hve_conn_id=hve_connection()).get_access_token()
    assert time.monotonic() - started >= 1.0  # Retry-After honoured
    assert [r.status for r in token_posts()] == [status, 200]


def test_entra_asking_for_a_long_wait_fails_at_once_with_the_wait(
    sandbox: HveSandbox, hve_connection: ConnFactory, token_posts: Callable[[], list[Any]]
) -> None:
    sandbox.entra.throttle(5, status=429, retry_after=600)
    with pytest.raises(HveAuthError, match=r"HTTP 429 \(throttled\).*wait 600 s") as info:
        HveHook(hve_conn_id=hve_connection()).get_access_token()
    assert info.value.code == "AADSTS50196" and info.value.correlation_id
    assert len(token_posts()) == 1
