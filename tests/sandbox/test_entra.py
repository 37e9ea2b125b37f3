"""The sandbox token endpoint against real MSAL: every credential kind, every Entra error."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
from cryptography.hazmat.primitives import serialization

from airflow_provider_hve.sandbox import FederatedCredential, HveSandbox
from airflow_provider_hve.sandbox.pki import SandboxPki

from .clients import SCOPE, SandboxHttpSession

Confidential = Callable[..., msal.ConfidentialClientApplication]
Public = Callable[..., msal.PublicClientApplication]


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_discovery_document_points_at_the_sandbox(sb: HveSandbox, http: SandboxHttpSession) -> None:
    doc = http.get(f"{sb.authority}/v2.0/.well-known/openid-configuration").json()
    assert doc["token_endpoint"] == f"{sb.authority_host}/{sb.tenant_id}/oauth2/v2.0/token"
    assert doc["issuer"] == f"{sb.authority}/v2.0"
    assert http.get(doc["jwks_uri"]).json()["keys"][0]["kid"] == sb.issuer.kid


def test_client_secret_gets_app_token(sb: HveSandbox, confidential: Confidential) -> None:
    result = confidential(sb.client_secret).acquire_token_for_client(scopes=[SCOPE])
    assert result["token_type"] == "Bearer"
    assert result["expires_in"] == 3599
    token = claims(result["access_token"])
    assert token["aud"] == "https://outlook.office365.com"
    assert token["iss"] == f"https://sts.windows.net/{sb.tenant_id}/"
    assert token["roles"] == ["Mail.Send"]
    assert token["appid"] == sb.client_id
    assert {"tid", "oid", "iat", "nbf", "exp"} <= token.keys()
    assert jwt.get_unverified_header(result["access_token"])["kid"] == sb.issuer.kid
    posted = [r for r in sb.token_requests if r.method == "POST"]
    assert [(r.grant_type, r.form["client_secret"], r.status) for r in posted] == [
        ("client_credentials", sb.client_secret, 200)
    ]


def test_msal_cache_means_one_token_request(sb: HveSandbox, confidential: Confidential) -> None:
    app = confidential(sb.client_secret)
    sources = [app.acquire_token_for_client(scopes=[SCOPE])["token_source"] for _ in range(3)]
    assert sources == ["identity_provider", "cache", "cache"]
    assert len([r for r in sb.token_requests if r.method == "POST"]) == 1


def test_outlook_office_scope_sets_its_audience(sb: HveSandbox, confidential: Confidential) -> None:
    result = confidential(sb.client_secret).acquire_token_for_client(scopes=["https://outlook.office.com/.default"])
    assert claims(result["access_token"])["aud"] == "https://outlook.office.com"


def test_token_lifetime_changes_at_runtime(sb: HveSandbox, confidential: Confidential) -> None:
    sb.token_lifetime = 1200
    result = confidential(sb.client_secret).acquire_token_for_client(scopes=[SCOPE])
    assert result["expires_in"] == 1200
    token = claims(result["access_token"])
    assert token["exp"] - token["iat"] == 1200


def _pem(sb: HveSandbox) -> str:
    return Path(sb.client_certificate_path).read_text()


@pytest.mark.parametrize(
    "style",
    [
        pytest.param("thumbprint", id="sha1-thumbprint-RS256"),
        pytest.param("public_certificate", id="public-certificate-PS256"),
    ],
)
def test_certificate_gets_app_token(sb: HveSandbox, confidential: Confidential, style: str) -> None:
    credential: dict[str, str] = {"private_key": _pem(sb)}
    if style == "thumbprint":
        credential["thumbprint"] = sb.client_certificate_thumbprint
    else:
        credential["public_certificate"] = sb.pki.client_cert_pem
    result = confidential(credential).acquire_token_for_client(scopes=[SCOPE])
    assert "access_token" in result, result
    form = sb.token_requests[-1].form
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in form


def test_workload_identity_gets_app_token(sb: HveSandbox, confidential: Confidential) -> None:
    sb.write_federated_token()
    token_file = Path(sb.federated_token_file)
    result = confidential({"client_assertion": lambda: token_file.read_text()}).acquire_token_for_client(scopes=[SCOPE])
    assert claims(result["access_token"])["roles"] == ["Mail.Send"]


def test_password_flow_gets_delegated_token(sb: HveSandbox, public: Public) -> None:
    result = public().acquire_token_by_username_password(sb.account, sb.account_password, scopes=[SCOPE])
    assert "access_token" in result, result
    token = claims(result["access_token"])
    assert token["scp"] == "Mail.Send"
    assert token["upn"] == token["unique_name"] == sb.account
    assert "roles" not in token
    realm = [r for r in sb.token_requests if r.path.startswith("/common/userrealm/")]
    assert len(realm) == 1 and realm[0].status == 200
    posted = [r for r in sb.token_requests if r.method == "POST"]
    assert len(posted) == 1
    assert posted[0].grant_type == "password"
    assert posted[0].form["username"] == sb.account
    assert posted[0].form["password"] == sb.account_password
    assert "client_secret" not in posted[0].form


def test_app_without_consent_gets_token_without_roles(sb: HveSandbox, confidential: Confidential) -> None:
    app = sb.register_app(application_permissions=set())
    result = confidential(app.secret, client_id=app.client_id).acquire_token_for_client(scopes=[SCOPE])
    assert claims(result["access_token"])["roles"] == []


def _other_certificate(tmp_path: Path) -> dict[str, str]:
    pki = SandboxPki.create(tmp_path)
    key = pki.client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"private_key": key.decode(), "thumbprint": pki.client_thumbprint}


ERROR_CASES = [
    pytest.param("wrong_secret", 7000215, "invalid_client", id="7000215-wrong-secret"),
    pytest.param("secret_id", 7000215, "invalid_client", id="7000215-secret-id-pasted"),
    pytest.param("expired_secret", 7000222, "invalid_client", id="7000222-expired-secret"),
    pytest.param("unknown_client", 700016, "unauthorized_client", id="700016-unknown-client"),
    pytest.param("unknown_scope", 500011, "invalid_resource", id="500011-unknown-scope"),
    pytest.param("foreign_certificate", 700027, "invalid_client", id="700027-bad-certificate"),
    pytest.param("wrong_subject", 700213, "invalid_client", id="700213-federated-subject"),
    pytest.param("wrong_issuer", 700211, "invalid_client", id="700211-federated-issuer"),
    pytest.param("wrong_password", 50126, "invalid_grant", id="50126-wrong-password"),
    pytest.param("no_delegated_consent", 65001, "invalid_grant", id="65001-no-consent"),
    pytest.param("public_flows_off", 7000218, "invalid_client", id="7000218-public-flows-off"),
]


@pytest.mark.parametrize(("case", "code", "error"), ERROR_CASES)
def test_entra_errors_in_entra_shape(
    sb: HveSandbox,
    confidential: Confidential,
    public: Public,
    tmp_path: Path,
    case: str,
    code: int,
    error: str,
) -> None:
    if case == "wrong_secret":
        result = confidential("not-the-secret").acquire_token_for_client(scopes=[SCOPE])
    elif case == "secret_id":
        result = confidential(sb.client_secret_id).acquire_token_for_client(scopes=[SCOPE])
    elif case == "expired_secret":
        app = sb.register_app(secret_expired=True)
        result = confidential(app.secret, client_id=app.client_id).acquire_token_for_client(scopes=[SCOPE])
    elif case == "unknown_client":
        result = confidential("x", client_id=str(uuid.uuid4())).acquire_token_for_client(scopes=[SCOPE])
    elif case == "unknown_scope":
        result = confidential(sb.client_secret).acquire_token_for_client(
            scopes=["https://graph.microsoft.com/.default"]
        )
    elif case == "foreign_certificate":
        result = confidential(_other_certificate(tmp_path)).acquire_token_for_client(scopes=[SCOPE])
    elif case in ("wrong_subject", "wrong_issuer"):
        token = (
            sb.issuer.issue_federated("system:serviceaccount:other:other")
            if case == "wrong_subject"
            else sb.issuer.issue_federated(sb.federated_subject, issuer="https://elsewhere.example/")
        )
        result = confidential({"client_assertion": lambda: token}).acquire_token_for_client(scopes=[SCOPE])
    elif case == "wrong_password":
        result = public().acquire_token_by_username_password(sb.account, "nope", scopes=[SCOPE])
    elif case == "no_delegated_consent":
        app = sb.register_app(delegated_permissions=set())
        result = public(app.client_id).acquire_token_by_username_password(
            sb.account, sb.account_password, scopes=[SCOPE]
        )
    else:
        app = sb.register_app(allow_public_client_flows=False)
        result = public(app.client_id).acquire_token_by_username_password(
            sb.account, sb.account_password, scopes=[SCOPE]
        )

    assert result["error"] == error
    assert result["error_codes"] == [code]
    assert result["error_description"].startswith(f"AADSTS{code}: ")
    assert f"Trace ID: {result['trace_id']}" in result["error_description"]
    assert f"Correlation ID: {result['correlation_id']}" in result["error_description"]
    assert "Timestamp: " in result["error_description"]
    assert result["error_uri"] == f"{sb.authority_host}/error?code={code}"
    assert result["timestamp"]
    posted = sb.token_requests[-1]
    assert posted.error_code == code
    # MSAL sends client-request-id; Entra echoes it as the correlation id.
    assert posted.client_request_id and result["correlation_id"] == posted.client_request_id


@pytest.mark.parametrize(
    ("case", "status"),
    [
        pytest.param("wrong_secret", 401, id="7000215-401"),
        pytest.param("unknown_client", 400, id="700016-400"),
        pytest.param("unknown_scope", 400, id="500011-400"),
    ],
)
def test_error_http_status(sb: HveSandbox, http: SandboxHttpSession, case: str, status: int) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": str(uuid.uuid4()) if case == "unknown_client" else sb.client_id,
        "client_secret": "wrong" if case == "wrong_secret" else sb.client_secret,
        "scope": "api://nothing/.default" if case == "unknown_scope" else SCOPE,
    }
    response = http.post(sb.token_endpoint, data=form, headers={"client-request-id": "abc-123"})
    assert response.status_code == status
    assert response.json()["correlation_id"] == "abc-123"


def test_unknown_tenant_fails_discovery_with_90002(sb: HveSandbox, confidential: Confidential) -> None:
    with pytest.raises(ValueError, match="Unable to get authority configuration") as raised:
        confidential(sb.client_secret, tenant=str(uuid.uuid4()))
    # MSAL 1.39 re-raises without the body; Entra's text survives only on the implicit context.
    assert "AADSTS90002" in str(raised.value.__context__)
    assert sb.token_requests[-1].error_code == 90002
    assert sb.token_requests[-1].status == 400


def test_unknown_tenant_on_token_endpoint(sb: HveSandbox, http: SandboxHttpSession) -> None:
    response = http.post(
        f"{sb.authority_host}/{uuid.uuid4()}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": sb.client_id,
            "client_secret": "x",
            "scope": SCOPE,
        },
    )
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_expired_federated_token_is_refused(sb: HveSandbox, confidential: Confidential) -> None:
    token = sb.issuer.issue_federated(sb.federated_subject, lifetime=-60)
    result = confidential({"client_assertion": lambda: token}).acquire_token_for_client(scopes=[SCOPE])
    assert result["error_codes"] == [700024]


def test_registered_federated_credential_for_another_app(sb: HveSandbox, confidential: Confidential) -> None:
    app = sb.register_app(federated=FederatedCredential(sb.issuer.workload_issuer, "system:serviceaccount:x:y"))
    token = sb.issuer.issue_federated("system:serviceaccount:x:y")
    result = confidential({"client_assertion": lambda: token}, client_id=app.client_id).acquire_token_for_client(
        scopes=[SCOPE]
    )
    assert claims(result["access_token"])["appid"] == app.client_id
