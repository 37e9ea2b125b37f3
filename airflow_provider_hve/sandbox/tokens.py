"""Access tokens the sandbox issues and the SMTP server checks, plus workload-identity tokens.

Tokens are RS256 JWTs shaped like Entra v1 access tokens for Exchange Online (``aud`` is
the resource, ``iss`` is ``https://sts.windows.net/{tenant}/``), so a client that
peeks at ``exp`` sees what it would see in production.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from airflow_provider_hve.sandbox.directory import FEDERATED_AUDIENCE, AppRegistration, User
from airflow_provider_hve.sandbox.pki import rsa_key

EXCHANGE_AUDIENCES = ("https://outlook.office365.com", "https://outlook.office.com")
DEFAULT_LIFETIME = 3599
WORKLOAD_ISSUER = "https://oidc.hve-sandbox.example/8f2c1c9e-5a0b-4c4e-9d7a-5e1d0c0ffee5/"


class TokenRejected(Exception):
    """A token failed verification; the message says why (for records, never for clients)."""


def _kid(key: rsa.RSAPrivateKey) -> str:
    numbers = key.public_key().public_numbers()
    digest = hashlib.sha1(numbers.n.to_bytes(256, "big")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class TokenIssuer:
    """Sign and verify the sandbox's access tokens and workload-identity tokens.

    :param tenant_id: the tenant the tokens belong to
    :param lifetime: access token lifetime in seconds; may be changed at any time
    """

    def __init__(self, tenant_id: str, lifetime: int = DEFAULT_LIFETIME) -> None:
        self.tenant_id = tenant_id
        self.lifetime = lifetime
        self._key = rsa_key()
        self.kid = _kid(self._key)
        # A separate key stands in for the Kubernetes service-account issuer.
        self._workload_key = rsa_key()
        self.workload_issuer = WORKLOAD_ISSUER

    @property
    def issuer(self) -> str:
        """Return the ``iss`` of access tokens, as Entra v1 tokens carry it."""
        return f"https://sts.windows.net/{self.tenant_id}/"

    def jwks(self) -> dict[str, Any]:
        """Return the public signing key as a JWKS document."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def issue(
        self,
        app: AppRegistration,
        *,
        audience: str = EXCHANGE_AUDIENCES[0],
        user: User | None = None,
        lifetime: int | None = None,
    ) -> tuple[str, int]:
        """Sign an access token for an app, or for a user through an app (delegated).

        :param app: the client the token is issued to
        :param audience: the Exchange resource named by the scope
        :param user: the signed-in user for a delegated token
        :param lifetime: seconds until expiry; the issuer's current lifetime if omitted
        :return: the token and its lifetime in seconds
        """
        now = int(time.time())
        seconds = self.lifetime if lifetime is None else lifetime
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + seconds,
            "tid": self.tenant_id,
            "appid": app.client_id,
            "app_displayname": app.display_name,
            "ver": "1.0",
            "uti": uuid.uuid4().hex[:22],
        }
        if user is None:
            claims["oid"] = app.object_id
            claims["sub"] = app.object_id
            claims["idtyp"] = "app"
            # Client credentials succeed without consent, just with no roles: as Entra does.
            claims["roles"] = sorted(app.application_permissions)
        else:
            claims["oid"] = user.object_id
            claims["sub"] = user.object_id
            claims["upn"] = user.upn
            claims["unique_name"] = user.upn
            claims["scp"] = " ".join(sorted(app.delegated_permissions))
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        return token, seconds

    def verify(self, token: str) -> dict[str, Any]:
        """Check signature, Exchange audience and expiry; return the claims.

        :raises TokenRejected: with the reason
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"not a JWT: {exc}") from exc
        if header.get("kid") != self.kid:
            raise TokenRejected("unknown signing key")
        try:
            return jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                audience=list(EXCHANGE_AUDIENCES),
                issuer=self.issuer,
                options={"require": ["exp", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"{type(exc).__name__}: {exc}") from exc

    def issue_federated(
        self,
        subject: str,
        *,
        audience: str = FEDERATED_AUDIENCE,
        issuer: str | None = None,
        lifetime: int = 3600,
    ) -> str:
        """Sign a workload-identity token, like the one AKS projects into a pod.

        :param subject: the ``sub`` claim (the service account)
        :param audience: the ``aud`` claim
        :param issuer: the ``iss`` claim; the sandbox's own issuer if omitted
        :param lifetime: seconds until expiry (negative for an expired token)
        """
        now = int(time.time())
        claims = {
            "iss": issuer or self.workload_issuer,
            "sub": subject,
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
        }
        return jwt.encode(claims, self._workload_key, algorithm="RS256", headers={"kid": "workload"})

    def verify_federated(self, token: str, audience: str) -> dict[str, Any]:
        """Verify a workload-identity token signed by the sandbox's issuer key.

        :raises TokenRejected: with the reason
        """
        try:
            return jwt.decode(
                token,
                self._workload_key.public_key(),
                algorithms=["RS256"],
                audience=audience,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"{type(exc).__name__}: {exc}") from exc
