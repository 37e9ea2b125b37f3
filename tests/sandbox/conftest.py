"""Fixtures for testing the sandbox with real clients: MSAL over HTTPS, smtplib over STARTTLS."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

import msal
import pytest

from airflow_provider_hve.sandbox import HveSandbox

from .clients import SandboxHttpSession, xoauth2


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[HveSandbox]:
    """One sandbox for the whole run; most tests only need a clean record list."""
    with HveSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sb(shared_sandbox: HveSandbox) -> Iterator[HveSandbox]:
    """The shared sandbox with empty records and default switches."""
    shared_sandbox.reset_records()
    shared_sandbox.token_lifetime = 3599
    yield shared_sandbox
    shared_sandbox.token_lifetime = 3599
    shared_sandbox.latency_ms = 0
    shared_sandbox.smtp.pipelining = True
    shared_sandbox.smtp.reset_faults()


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., HveSandbox]]:
    """Start a dedicated sandbox with its own switches (starttls=False, auth_in_clear=True...)."""
    started: list[HveSandbox] = []

    def factory(**kwargs: Any) -> HveSandbox:
        sandbox = HveSandbox(**kwargs).start()
        started.append(sandbox)
        return sandbox

    yield factory
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def http(sb: HveSandbox) -> SandboxHttpSession:
    """An HTTP client for MSAL that trusts the sandbox."""
    return SandboxHttpSession(sb)


@pytest.fixture
def confidential(sb: HveSandbox, http: SandboxHttpSession) -> Callable[..., msal.ConfidentialClientApplication]:
    """Build a real MSAL confidential client against the sandbox."""

    def build(credential: Any, client_id: str | None = None, tenant: str | None = None) -> Any:
        return msal.ConfidentialClientApplication(
            client_id or sb.client_id,
            client_credential=credential,
            authority=f"{sb.authority_host}/{tenant or sb.tenant_id}",
            instance_discovery=False,
            http_client=http,
        )

    return build


@pytest.fixture
def public(sb: HveSandbox, http: SandboxHttpSession) -> Callable[..., msal.PublicClientApplication]:
    """Build a real MSAL public client against the sandbox."""

    def build(client_id: str | None = None) -> msal.PublicClientApplication:
        return msal.PublicClientApplication(
            client_id or sb.client_id,
            authority=sb.authority,
            instance_discovery=False,
            http_client=http,
        )

    return build


@contextmanager
def _smtp_client(sandbox: HveSandbox, starttls: bool = True, timeout: float = 5) -> Iterator[smtplib.SMTP]:
    client = smtplib.SMTP(sandbox.smtp_host, sandbox.smtp_port, timeout=timeout)
    try:
        client.ehlo("client.test")
        if starttls:
            client.starttls(context=ssl.create_default_context(cafile=sandbox.ca_bundle))
            # smtplib forgets the EHLO after STARTTLS.
            client.ehlo("client.test")
        yield client
    finally:
        with suppress(smtplib.SMTPServerDisconnected):
            client.quit()


@pytest.fixture
def smtp_client(sb: HveSandbox) -> Callable[..., AbstractContextManager[smtplib.SMTP]]:
    """Open an smtplib connection to the sandbox, after STARTTLS and a fresh EHLO."""
    return lambda sandbox=sb, starttls=True, timeout=5: _smtp_client(sandbox, starttls, timeout)


@pytest.fixture
def authed_client(sb: HveSandbox) -> Iterator[smtplib.SMTP]:
    """An smtplib connection already authenticated as the HVE account."""
    with _smtp_client(sb) as client:
        code, reply = client.docmd("AUTH", "XOAUTH2 " + xoauth2(sb.account, sb.issue_access_token()))
        assert code == 235, reply
        yield client
