"""The sandbox tenant: app registrations, users, the HVE account and accepted domains.

The defaults are fixed so that connection strings printed once keep working; tests add
variations (no consent, not on the allowed-apps list, expired secret...) with
:meth:`Directory.add_app` and :meth:`Directory.add_user`.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field

from cryptography import x509

TENANT_ID = "8f2c1c9e-5a0b-4c4e-9d7a-5e1d0c0ffee5"
CLIENT_ID = "3b7e4f2a-9c1d-4e8b-a6f5-0d2c4b6a8e10"
CLIENT_SECRET = "sandbox-secret-Not.A.Real.Secret~0123456789"
# Entra shows a secret's ID next to its value; people paste the wrong one (AADSTS7000215).
CLIENT_SECRET_ID = "5d1e9b3c-7a2f-4c6d-8e0b-1f3a5c7e9b2d"
APP_OBJECT_ID = "c0a1b2c3-d4e5-4f60-8718-293a4b5c6d7e"
ACCOUNT = "hve-sender@contoso.example"
ACCOUNT_PASSWORD = "Sandbox-HVE-Passw0rd!"
ACCOUNT_OBJECT_ID = "6e5d4c3b-2a19-4807-b6f5-e4d3c2b1a090"
ACCEPTED_DOMAINS = ("contoso.example", "fabrikam.contoso.example")
FEDERATED_SUBJECT = "system:serviceaccount:airflow:airflow-worker"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
MAIL_SEND = "Mail.Send"


@dataclass
class ClientSecret:
    """A client secret; ``expires`` in the past makes Entra answer AADSTS7000222."""

    value: str
    secret_id: str
    expires: dt.datetime | None = None

    def expired(self, now: dt.datetime) -> bool:
        """Tell whether the secret is past its end date."""
        return self.expires is not None and self.expires <= now


@dataclass
class FederatedCredential:
    """A federated identity credential: trust tokens from ``issuer`` about ``subject``."""

    issuer: str
    subject: str
    audience: str = FEDERATED_AUDIENCE


@dataclass
class AppRegistration:
    """An app registration plus its service principal in the sandbox tenant."""

    client_id: str
    display_name: str
    object_id: str
    secrets: list[ClientSecret] = field(default_factory=list)
    certificates: list[x509.Certificate] = field(default_factory=list)
    federated_credentials: list[FederatedCredential] = field(default_factory=list)
    allow_public_client_flows: bool = True
    application_permissions: set[str] = field(default_factory=lambda: {MAIL_SEND})
    delegated_permissions: set[str] = field(default_factory=lambda: {MAIL_SEND})

    @property
    def secret(self) -> str | None:
        """Return the first secret's value, the one tests usually want."""
        return self.secrets[0].value if self.secrets else None


@dataclass
class User:
    """A user; an HVE account is a user with an allowed-apps list (``Add-HVEAppAccess``)."""

    upn: str
    password: str
    object_id: str
    hve_allowed_apps: set[str] | None = None

    @property
    def is_hve_account(self) -> bool:
        """Tell whether this user is an HVE account."""
        return self.hve_allowed_apps is not None


class Directory:
    """The one tenant the sandbox serves, with its apps and users.

    Servers read it from their threads while tests mutate it; a lock keeps the
    dictionaries consistent.
    """

    def __init__(self, tenant_id: str = TENANT_ID) -> None:
        self.tenant_id = tenant_id
        self.accepted_domains: list[str] = list(ACCEPTED_DOMAINS)
        self._apps: dict[str, AppRegistration] = {}
        self._users: dict[str, User] = {}
        self._lock = threading.Lock()

    def add_app(
        self,
        *,
        client_id: str | None = None,
        display_name: str = "sandbox app",
        secret: str | None = None,
        secret_expired: bool = False,
        certificate: x509.Certificate | None = None,
        federated: FederatedCredential | None = None,
        allow_public_client_flows: bool = True,
        application_permissions: set[str] | frozenset[str] = frozenset({MAIL_SEND}),
        delegated_permissions: set[str] | frozenset[str] = frozenset({MAIL_SEND}),
        hve_allowed: bool = True,
    ) -> AppRegistration:
        """Register an app (and its consented permissions) in the tenant.

        :param client_id: fixed id, or a random GUID
        :param secret: a client secret value; a random readable one if omitted
        :param secret_expired: give the secret an end date in the past
        :param certificate: a certificate credential
        :param federated: a federated identity credential
        :param allow_public_client_flows: the "Allow public client flows" switch
        :param application_permissions: application permissions with admin consent
        :param delegated_permissions: delegated permissions with admin consent
        :param hve_allowed: put the app on every HVE account's allowed-apps list
        :return: the registration, mutable for further tweaks
        """
        now = dt.datetime.now(dt.timezone.utc)
        expires = now - dt.timedelta(days=1) if secret_expired else now + dt.timedelta(days=730)
        app = AppRegistration(
            client_id=client_id or str(uuid.uuid4()),
            display_name=display_name,
            object_id=str(uuid.uuid4()),
            secrets=[
                ClientSecret(
                    value=secret or f"sandbox-secret-{uuid.uuid4().hex}",
                    secret_id=str(uuid.uuid4()),
                    expires=expires,
                )
            ],
            certificates=[certificate] if certificate else [],
            federated_credentials=[federated] if federated else [],
            allow_public_client_flows=allow_public_client_flows,
            application_permissions=set(application_permissions),
            delegated_permissions=set(delegated_permissions),
        )
        with self._lock:
            self._apps[app.client_id] = app
            if hve_allowed:
                for user in self._users.values():
                    if user.hve_allowed_apps is not None:
                        user.hve_allowed_apps.add(app.client_id)
        return app

    def add_user(
        self,
        upn: str,
        password: str,
        *,
        object_id: str | None = None,
        hve_allowed_apps: set[str] | None = None,
    ) -> User:
        """Create a user; pass ``hve_allowed_apps`` (even empty) to make it an HVE account.

        :param upn: the user principal name, also the mail address
        :param password: the password for the ROPC flow
        :param object_id: fixed object id, or a random GUID
        :param hve_allowed_apps: client ids allowed to send as this HVE account
        :return: the user, mutable for further tweaks
        """
        user = User(
            upn=upn,
            password=password,
            object_id=object_id or str(uuid.uuid4()),
            hve_allowed_apps=set(hve_allowed_apps) if hve_allowed_apps is not None else None,
        )
        with self._lock:
            self._users[upn.lower()] = user
        return user

    def app(self, client_id: str) -> AppRegistration | None:
        """Look an app up by client id."""
        with self._lock:
            return self._apps.get(client_id)

    def user(self, upn: str) -> User | None:
        """Look a user up by UPN, case-insensitively as Entra does."""
        with self._lock:
            return self._users.get(upn.lower())

    def hve_accounts_allowing(self, client_id: str) -> list[User]:
        """Return the HVE accounts whose allowed-apps list holds ``client_id``, by UPN."""
        with self._lock:
            users = sorted(self._users.values(), key=lambda user: user.upn.lower())
        return [user for user in users if user.hve_allowed_apps is not None and client_id in user.hve_allowed_apps]

    def accepts(self, address: str) -> bool:
        """Tell whether the address is in one of the tenant's accepted domains."""
        domain = address.rpartition("@")[2].lower()
        return any(domain == d.lower() for d in self.accepted_domains)
