"""The token endpoint's decisions: which grant, which credential, which AADSTS error.

Kept apart from the HTTP plumbing in :mod:`entra` so the rules read top to bottom in the
order Entra applies them: client, credential, scope, then the user for delegated flows.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes

from airflow_provider_hve.sandbox.directory import (
    FEDERATED_AUDIENCE,
    MAIL_SEND,
    AppRegistration,
    Directory,
    User,
)
from airflow_provider_hve.sandbox.tokens import EXCHANGE_AUDIENCES, TokenIssuer, TokenRejected

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Scopes MSAL adds on its own to user flows; Entra ignores them when picking the resource.
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})


@dataclass
class EntraError(Exception):
    """An OAuth error the endpoint answers with; rendered in Entra's JSON shape by :mod:`entra`."""

    status: int
    error: str
    code: int
    message: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _require(form: dict[str, str], name: str) -> str:
    value = form.get(name, "")
    if not value:
        raise EntraError(
            400,
            "invalid_request",
            900144,
            f"The request body must contain the following parameter: '{name}'.",
        )
    return value


class TokenGrants:
    """Turn a token request into a token response or an :class:`EntraError`.

    :param directory: the tenant's apps and users
    :param issuer: signs the access tokens
    """

    def __init__(self, directory: Directory, issuer: TokenIssuer) -> None:
        self.directory = directory
        self.issuer = issuer

    def handle(self, form: dict[str, str], token_endpoint: str) -> dict[str, Any]:
        """Answer one POST to the token endpoint.

        :param form: the posted form fields
        :param token_endpoint: this endpoint's URL, the audience of client assertions
        :raises EntraError: whatever Entra would refuse with
        """
        grant_type = _require(form, "grant_type")
        client_id = _require(form, "client_id")
        app = self.directory.app(client_id)
        if app is None:
            raise EntraError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.directory.tenant_id}'. This can happen if the application has not been "
                "installed by the administrator of the tenant or consented to by any user in the "
                "tenant. You may have sent your authentication request to the wrong tenant.",
            )
        if grant_type == "client_credentials":
            self._authenticate_client(app, form, token_endpoint)
            audience = self._audience(form)
            return self._token_response(app, audience, None)
        if grant_type == "password":
            return self._password_grant(app, form)
        raise EntraError(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )

    def _audience(self, form: dict[str, str]) -> str:
        scopes = [s for s in form.get("scope", "").split() if s not in OIDC_SCOPES]
        for scope in scopes:
            resource = scope.removesuffix("/.default").removesuffix("/Mail.Send").rstrip("/")
            if resource in EXCHANGE_AUDIENCES:
                return resource
        named = scopes[0] if scopes else ""
        raise EntraError(
            400,
            "invalid_resource",
            500011,
            f"The resource principal named {named.removesuffix('/.default')} was not found in the "
            f"tenant named {self.directory.tenant_id}. This can happen if the application has not "
            "been installed by the administrator of the tenant or consented to by any user in the "
            "tenant. You might have sent your authentication request to the wrong tenant.",
        )

    def _authenticate_client(self, app: AppRegistration, form: dict[str, str], endpoint: str) -> None:
        if form.get("client_secret"):
            self._check_secret(app, form["client_secret"])
        elif form.get("client_assertion"):
            if form.get("client_assertion_type") != JWT_BEARER:
                raise EntraError(
                    400,
                    "invalid_request",
                    50027,
                    f"Invalid client_assertion_type; expected '{JWT_BEARER}'.",
                )
            self._check_assertion(app, form["client_assertion"], endpoint)
        else:
            raise EntraError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )

    def _check_secret(self, app: AppRegistration, value: str) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        for secret in app.secrets:
            if secret.value == value:
                if secret.expired(now):
                    raise EntraError(
                        401,
                        "invalid_client",
                        7000222,
                        f"The provided client secret keys for app '{app.client_id}' are expired. "
                        "Visit the Azure portal to create new keys for your app: "
                        "https://aka.ms/NewClientSecret, or consider using certificate credentials "
                        "for added security: https://aka.ms/certCreds.",
                    )
                return
        raise EntraError(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the "
            f"client secret value, not the client secret ID, for a secret added to app "
            f"'{app.client_id}'.",
        )

    def _check_assertion(self, app: AppRegistration, assertion: str, endpoint: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise EntraError(401, "invalid_client", 50027, f"JWT token is invalid or malformed: {exc}.") from exc
        if unverified.get("iss") != app.client_id and app.federated_credentials:
            self._check_federated(app, assertion, unverified)
        else:
            self._check_certificate(app, assertion, header, endpoint)

    def _check_certificate(self, app: AppRegistration, assertion: str, header: dict[str, Any], endpoint: str) -> None:
        bad = EntraError(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation.",
        )
        # MSAL keeps the base64 padding on x5t, other libraries drop it: Entra takes both.
        sha256 = str(header.get("x5t#S256", "")).rstrip("=")
        sha1 = str(header.get("x5t", "")).rstrip("=")
        cert = None
        for candidate in app.certificates:
            if sha256 == _b64url(candidate.fingerprint(hashes.SHA256())) or sha1 == _b64url(
                candidate.fingerprint(hashes.SHA1())
            ):
                cert = candidate
        if cert is None:
            bad.message = (
                "The certificate with identifier used to sign the client assertion is not "
                f"registered on application. [Reason - The key was not found., Thumbprint of key "
                f"used by client: '{header.get('x5t') or header.get('x5t#S256')}', Please visit "
                f"the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys "
                f"for app Id '{app.client_id}'.]"
            )
            raise bad
        try:
            jwt.decode(
                assertion,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=["RS256", "PS256"],
                audience=endpoint,
                issuer=app.client_id,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError as exc:
            bad.message = f"Client assertion failed signature validation. [{type(exc).__name__}: {exc}]"
            raise bad from exc
        if jwt.decode(assertion, options={"verify_signature": False}).get("sub") != app.client_id:
            bad.message = "Client assertion contains an invalid subject; it must be the client id."
            raise bad

    def _check_federated(self, app: AppRegistration, assertion: str, claims: dict[str, Any]) -> None:
        issuer, subject = claims.get("iss"), claims.get("sub")
        matching = [f for f in app.federated_credentials if f.issuer == issuer]
        if not matching:
            raise EntraError(
                400,
                "invalid_client",
                700211,
                f"No matching federated identity record found for presented assertion issuer "
                f"'{issuer}'. Please check your federated identity credential Subject, Audience and "
                "Issuer against the presented assertion.",
            )
        matching = [f for f in matching if f.subject == subject]
        if not matching:
            raise EntraError(
                400,
                "invalid_client",
                700213,
                f"No matching federated identity record found for presented assertion subject "
                f"'{subject}'. Please check your federated identity credential Subject, Audience and "
                "Issuer against the presented assertion.",
            )
        try:
            self.issuer.verify_federated(assertion, audience=matching[0].audience or FEDERATED_AUDIENCE)
        except TokenRejected as exc:
            reason = str(exc)
            if "xpired" in reason:
                raise EntraError(
                    400,
                    "invalid_client",
                    700024,
                    "Client assertion is not within its valid time range.",
                ) from exc
            if "udience" in reason:
                raise EntraError(
                    400,
                    "invalid_client",
                    700212,
                    "No matching federated identity record found for presented assertion audience.",
                ) from exc
            raise EntraError(
                400, "invalid_client", 700027, f"Client assertion failed signature validation. [{reason}]"
            ) from exc

    def _password_grant(self, app: AppRegistration, form: dict[str, str]) -> dict[str, Any]:
        if not app.allow_public_client_flows and not form.get("client_secret"):
            # Entra treats the app as confidential and asks for a credential it never got.
            raise EntraError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        if form.get("client_secret"):
            self._check_secret(app, form["client_secret"])
        username = _require(form, "username")
        password = _require(form, "password")
        user = self.directory.user(username)
        if user is None or user.password != password:
            raise EntraError(
                400,
                "invalid_grant",
                50126,
                "Error validating credentials due to invalid username or password.",
            )
        audience = self._audience(form)
        if MAIL_SEND not in app.delegated_permissions:
            raise EntraError(
                400,
                "invalid_grant",
                65001,
                f"The user or administrator has not consented to use the application with ID "
                f"'{app.client_id}' named '{app.display_name}'. Send an interactive authorization "
                "request for this user and resource.",
            )
        return self._token_response(app, audience, user)

    def _token_response(self, app: AppRegistration, audience: str, user: User | None) -> dict[str, Any]:
        token, lifetime = self.issuer.issue(app, audience=audience, user=user)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }
        if user is not None:
            # A user flow also returns who signed in, so MSAL can cache the account.
            tenant = self.directory.tenant_id
            now = int(time.time())
            id_claims = {
                "aud": app.client_id,
                "iss": f"https://login.microsoftonline.com/{tenant}/v2.0",
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
                "oid": user.object_id,
                "sub": user.object_id,
                "tid": tenant,
                "preferred_username": user.upn,
                "name": user.upn,
                "ver": "2.0",
            }
            body["id_token"] = ".".join(
                [_b64url(b'{"alg":"none","typ":"JWT"}'), _b64url(json.dumps(id_claims).encode()), ""]
            )
            body["client_info"] = _b64url(json.dumps({"uid": user.object_id, "utid": tenant}).encode())
            body["refresh_token"] = f"sandbox-refresh-{uuid.uuid4().hex}"
            body["scope"] = " ".join(f"{audience}/{p}" for p in sorted(app.delegated_permissions))
        return body
