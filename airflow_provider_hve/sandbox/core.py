"""A local stand-in for Entra ID and Microsoft 365 High Volume Email.

:class:`HveSandbox` starts, on 127.0.0.1 and free ports, an HTTPS token endpoint that
real MSAL talks to (client secret, certificate, workload identity and password flows,
with Entra's error codes) and a STARTTLS SMTP server that real smtplib talks to
(XOAUTH2 only, HVE's limits and replies). Accepted messages land as ``.eml`` files.
Nothing leaves the machine.

Example::

    from airflow_provider_hve.sandbox import HveSandbox

    with HveSandbox() as sb:
        os.environ["AIRFLOW_CONN_HVE_DEFAULT"] = sb.connection_json()
        ...  # run the DAG or the hook
        sb.wait_for_messages(1)
        print(sb.messages[0].message["Subject"])

The tenant is fixed (:data:`~airflow_provider_hve.sandbox.directory.TENANT_ID`, one app,
one HVE account ``hve-sender@contoso.example``); :meth:`HveSandbox.register_app` and
:meth:`HveSandbox.register_user` add the broken variants tests need.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow_provider_hve.sandbox import directory as d
from airflow_provider_hve.sandbox.directory import AppRegistration, Directory, FederatedCredential, User
from airflow_provider_hve.sandbox.entra import EntraServer
from airflow_provider_hve.sandbox.files import private_dir, write_private
from airflow_provider_hve.sandbox.grants import TokenGrants
from airflow_provider_hve.sandbox.introspection import Introspection
from airflow_provider_hve.sandbox.pki import SandboxPki
from airflow_provider_hve.sandbox.records import (
    DeliveredMessage,
    RecordList,
    SandboxStats,
    SmtpSession,
    TokenRequest,
)
from airflow_provider_hve.sandbox.smtp_server import HveHandler, SmtpServer
from airflow_provider_hve.sandbox.tokens import DEFAULT_LIFETIME, EXCHANGE_AUDIENCES, TokenIssuer

AUTH_MODES = ("client_secret", "certificate", "password", "workload_identity")
DEFAULT_SCOPE = "https://outlook.office365.com/.default"


def free_port() -> int:
    """Return a port free on 127.0.0.1 right now (aiosmtpd cannot bind port 0 itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HveSandbox:
    """Entra ID + HVE on localhost, for tests, demos and trying DAGs.

    :param mailbox_dir: where delivered ``.eml`` files go; a temporary folder (removed on
        stop) if omitted
    :param state_dir: where certificates and the federated token file go; temporary if omitted
    :param token_lifetime: access token lifetime in seconds (also settable later)
    :param starttls: offer STARTTLS; turn off to prove a client refuses plaintext
    :param auth_in_clear: advertise AUTH before TLS; turn on to prove a client still refuses
    :param smtp_port: fixed SMTP port, or a free one
    :param token_port: fixed HTTPS port, or a free one
    :param pipelining: advertise SMTP PIPELINING (RFC 2920) in the EHLO answer
    :param latency_ms: emulated network round-trip time in milliseconds, added to every SMTP reply the
        client waits for (a pipelined batch pays it once) and to every token endpoint response; also
        settable later through :attr:`latency_ms`
    """

    tenant_id: str = d.TENANT_ID
    client_id: str = d.CLIENT_ID
    client_secret: str = d.CLIENT_SECRET
    client_secret_id: str = d.CLIENT_SECRET_ID
    account: str = d.ACCOUNT
    account_password: str = d.ACCOUNT_PASSWORD
    federated_subject: str = d.FEDERATED_SUBJECT
    smtp_host: str = "localhost"

    def __init__(
        self,
        mailbox_dir: str | Path | None = None,
        state_dir: str | Path | None = None,
        token_lifetime: int = DEFAULT_LIFETIME,
        starttls: bool = True,
        auth_in_clear: bool = False,
        *,
        smtp_port: int | None = None,
        token_port: int | None = None,
        pipelining: bool = True,
        latency_ms: float = 0,
    ) -> None:
        if latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, not {latency_ms!r}.")
        self._pipelining = pipelining
        self._latency_ms = latency_ms
        self._given_mailbox = Path(mailbox_dir) if mailbox_dir is not None else None
        self._given_state = Path(state_dir) if state_dir is not None else None
        self._starttls = starttls
        self._auth_in_clear = auth_in_clear
        self._requested_smtp_port = smtp_port
        self._requested_token_port = token_port
        self._temp_dirs: list[Path] = []
        self.directory = Directory()
        self.issuer = TokenIssuer(self.directory.tenant_id, token_lifetime)
        self._entra: EntraServer | None = None
        self._smtp: SmtpServer | None = None
        self._handler: HveHandler | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> HveSandbox:
        """Create keys and the directory, then start both servers."""
        self.mailbox_dir = self._dir(self._given_mailbox, "hve-sandbox-mailbox-")
        self.state_dir = self._dir(self._given_state, "hve-sandbox-state-")
        self.pki = SandboxPki.create(self.state_dir)
        self._populate_directory()
        self.write_federated_token()
        grants = TokenGrants(self.directory, self.issuer)
        self._entra = EntraServer(
            grants, self.pki, self._requested_token_port or free_port(), latency_ms=self._latency_ms
        )
        self._handler = HveHandler(
            self.directory, self.issuer, self.mailbox_dir, pipelining=self._pipelining, latency_ms=self._latency_ms
        )
        self._smtp = SmtpServer(
            self._handler,
            self._requested_smtp_port or free_port(),
            self.pki.server_ssl_context(),
            starttls=self._starttls,
            auth_in_clear=self._auth_in_clear,
        )
        self._entra.start()
        try:
            self._smtp.start()
        except BaseException:
            self._entra.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers and remove the temporary folders this sandbox created."""
        if self._smtp is not None:
            self._smtp.stop()
            self._smtp = None
        if self._entra is not None:
            self._entra.stop()
            self._entra = None
        for path in self._temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._temp_dirs.clear()

    def __enter__(self) -> HveSandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _dir(self, given: Path | None, prefix: str) -> Path:
        if given is not None:
            return private_dir(given)
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self._temp_dirs.append(path)
        return path

    def _populate_directory(self) -> None:
        self.directory.add_user(
            self.account, self.account_password, object_id=d.ACCOUNT_OBJECT_ID, hve_allowed_apps=set()
        )
        app = self.directory.add_app(
            client_id=self.client_id,
            display_name="HVE sandbox app",
            secret=self.client_secret,
            certificate=self.pki.client_cert,
            federated=FederatedCredential(self.issuer.workload_issuer, self.federated_subject),
        )
        app.object_id = d.APP_OBJECT_ID
        app.secrets[0].secret_id = self.client_secret_id

    # -- what clients need ----------------------------------------------------------------

    @property
    def smtp(self) -> SmtpServer:
        """Return the running SMTP server (fault switches such as ``fail_next_auth``)."""
        if self._smtp is None:
            raise RuntimeError("The sandbox is not running; call start() or use it as a context manager.")
        return self._smtp

    @property
    def entra(self) -> EntraServer:
        """Return the running token endpoint."""
        if self._entra is None:
            raise RuntimeError("The sandbox is not running; call start() or use it as a context manager.")
        return self._entra

    @property
    def smtp_port(self) -> int:
        """Return the SMTP (STARTTLS) port."""
        return self.smtp.port

    @property
    def token_port(self) -> int:
        """Return the HTTPS token endpoint port."""
        return self.entra.port

    @property
    def authority_host(self) -> str:
        """Return ``https://localhost:PORT``."""
        return self.entra.authority_host

    @property
    def authority(self) -> str:
        """Return the full authority URL for MSAL: ``https://localhost:PORT/<tenant>``."""
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def token_endpoint(self) -> str:
        """Return the tenant's token endpoint URL."""
        return self.entra.token_endpoint(self.tenant_id)

    def introspection_endpoint(self, host: str = "localhost") -> str:
        """Return the token introspection URL (RFC 7662) a real MTA checks tokens with; not an Entra endpoint.

        :param host: ``localhost`` or ``127.0.0.1`` (both are in the sandbox's certificate)
        """
        return self.entra.introspection_endpoint(self.tenant_id, host)

    @property
    def ca_bundle(self) -> str:
        """Return the path of the CA certificate to trust."""
        return str(self.pki.ca_path)

    @property
    def client_certificate_path(self) -> str:
        """Return the path of the PEM holding the client private key and certificate."""
        return str(self.pki.client_cert_path)

    @property
    def client_certificate_thumbprint(self) -> str:
        """Return the client certificate's SHA-1 thumbprint in hex."""
        return self.pki.client_thumbprint

    @property
    def federated_token_file(self) -> str:
        """Return the path of the workload-identity token file."""
        return str(self.state_dir / "federated-token.jwt")

    @property
    def token_lifetime(self) -> int:
        """Return the lifetime in seconds of access tokens issued from now on."""
        return self.issuer.lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int) -> None:
        self.issuer.lifetime = seconds

    @property
    def latency_ms(self) -> float:
        """Return the emulated round-trip time in milliseconds (SMTP replies and token responses)."""
        return self._latency_ms

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"latency_ms must be >= 0, not {value!r}.")
        self._latency_ms = value
        if self._smtp is not None:
            self._smtp.latency_ms = value
        if self._entra is not None:
            self._entra.latency_ms = value

    @property
    def accepted_domains(self) -> list[str]:
        """Return the tenant's accepted domains (mutable)."""
        return self.directory.accepted_domains

    def write_federated_token(
        self, *, subject: str | None = None, lifetime: int = 3600, issuer: str | None = None
    ) -> str:
        """Write a fresh workload-identity token to :attr:`federated_token_file`.

        :param subject: the ``sub`` claim; the registered subject if omitted
        :param lifetime: seconds until expiry (negative writes an expired token)
        :param issuer: the ``iss`` claim; the sandbox's issuer if omitted
        :return: the token written
        """
        token = self.issuer.issue_federated(subject or self.federated_subject, lifetime=lifetime, issuer=issuer)
        write_private(Path(self.federated_token_file), token.encode())
        return token

    def issue_access_token(
        self,
        *,
        client_id: str | None = None,
        user: str | None = None,
        lifetime: int | None = None,
        audience: str = EXCHANGE_AUDIENCES[0],
    ) -> str:
        """Sign an access token directly, without going through the token endpoint.

        :param client_id: the app; the default app if omitted
        :param user: UPN for a delegated token; an app token if omitted
        :param lifetime: seconds until expiry; :attr:`token_lifetime` if omitted
        :param audience: the ``aud`` claim
        """
        app = self.directory.app(client_id or self.client_id)
        if app is None:
            raise KeyError(f"No app {client_id!r} in the sandbox directory.")
        account = self.directory.user(user) if user else None
        if user and account is None:
            raise KeyError(f"No user {user!r} in the sandbox directory.")
        token, _ = self.issuer.issue(app, audience=audience, user=account, lifetime=lifetime)
        return token

    def register_app(self, **kwargs: Any) -> AppRegistration:
        """Add an app registration; see :meth:`Directory.add_app` for the switches.

        Example: ``sb.register_app(application_permissions=set())`` for an app without
        Mail.Send consent, ``sb.register_app(hve_allowed=False)`` for one missing from
        ``Add-HVEAppAccess``, ``sb.register_app(secret_expired=True)`` for AADSTS7000222.
        """
        return self.directory.add_app(**kwargs)

    def register_user(self, upn: str, password: str, **kwargs: Any) -> User:
        """Add a user; see :meth:`Directory.add_user`."""
        return self.directory.add_user(upn, password, **kwargs)

    def connection(self, auth_mode: str = "client_secret", **extra_overrides: Any) -> dict[str, Any]:
        """Return an Airflow connection dict pointing at this sandbox.

        :param auth_mode: one of ``client_secret``, ``certificate``, ``password``,
            ``workload_identity``
        :param extra_overrides: extra fields to add or replace (``None`` removes one)
        """
        if auth_mode not in AUTH_MODES:
            raise ValueError(f"auth_mode must be one of {', '.join(AUTH_MODES)}, not {auth_mode!r}.")
        password = {"client_secret": self.client_secret, "password": self.account_password}.get(auth_mode, "")
        extra: dict[str, Any] = {
            "tenant_id": self.tenant_id,
            "client_id": self.client_id,
            "auth_mode": auth_mode,
            "authority_host": self.authority_host,
            # The sandbox is no Microsoft host: the connection must opt in to sending credentials to it.
            "allow_custom_authority": True,
            "ca_bundle": self.ca_bundle,
            "scope": DEFAULT_SCOPE,
        }
        if auth_mode == "certificate":
            extra["certificate_path"] = self.client_certificate_path
        if auth_mode == "workload_identity":
            extra["federated_token_file"] = self.federated_token_file
        for key, value in extra_overrides.items():
            if value is None:
                extra.pop(key, None)
            else:
                extra[key] = value
        return {
            "conn_type": "hve",
            "host": self.smtp_host,
            "port": self.smtp_port,
            "login": self.account,
            "password": password,
            "extra": extra,
        }

    def connection_json(self, auth_mode: str = "client_secret", **extra_overrides: Any) -> str:
        """Return :meth:`connection` as JSON, for ``AIRFLOW_CONN_HVE_DEFAULT``."""
        return json.dumps(self.connection(auth_mode, **extra_overrides))

    # -- what happened ----------------------------------------------------------------------

    @property
    def token_requests(self) -> RecordList[TokenRequest]:
        """Return every request the Entra endpoints received."""
        return self.entra.requests

    @property
    def introspections(self) -> RecordList[Introspection]:
        """Return every token introspection a real MTA asked for, with the sandbox's verdict."""
        return self.entra.introspections

    @property
    def smtp_sessions(self) -> RecordList[SmtpSession]:
        """Return every SMTP connection that sent at least one command."""
        assert self._handler is not None, "The sandbox is not running."
        return self._handler.sessions

    @property
    def messages(self) -> RecordList[DeliveredMessage]:
        """Return every accepted message."""
        assert self._handler is not None, "The sandbox is not running."
        return self._handler.messages

    def wait_for_messages(self, n: int, timeout: float = 5) -> list[DeliveredMessage]:
        """Wait until ``n`` messages have been accepted.

        :raises TimeoutError: if fewer arrived within ``timeout`` seconds
        """
        received = self.messages.wait_for(n, timeout)
        if len(received) < n:
            raise TimeoutError(f"Expected {n} messages within {timeout}s, got {len(received)}.")
        return received

    def smtp_round_trips(self) -> int:
        """Return the round trips of every recorded SMTP session (see :class:`SmtpSession`)."""
        return sum(session.round_trips for session in self.smtp_sessions)

    def smtp_commands(self) -> int:
        """Return the command lines of every recorded SMTP session."""
        return sum(session.commands for session in self.smtp_sessions)

    def stats(self) -> SandboxStats:
        """Return the counters a benchmark reports, since the last :meth:`reset_records`."""
        sessions = self.smtp_sessions.snapshot()
        return SandboxStats(
            messages=len(self.messages),
            token_posts=sum(1 for request in self.token_requests if request.method == "POST"),
            smtp_sessions=len(sessions),
            smtp_round_trips=sum(session.round_trips for session in sessions),
            smtp_commands=sum(session.commands for session in sessions),
        )

    def reset_records(self) -> None:
        """Forget recorded requests, sessions and messages (files stay in the mailbox)."""
        self.token_requests.clear()
        self.introspections.clear()
        self.smtp_sessions.clear()
        self.messages.clear()
