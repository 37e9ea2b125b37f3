"""A local stand-in for Entra ID and Microsoft 365 High Volume Email; see :mod:`.core`."""

from __future__ import annotations

from airflow_provider_hve.sandbox.core import AUTH_MODES, HveSandbox
from airflow_provider_hve.sandbox.directory import AppRegistration, FederatedCredential, User
from airflow_provider_hve.sandbox.records import (
    AuthAttempt,
    DeliveredMessage,
    SandboxStats,
    SmtpSession,
    TokenRequest,
    Transaction,
)

__all__ = [
    "AUTH_MODES",
    "AppRegistration",
    "AuthAttempt",
    "DeliveredMessage",
    "FederatedCredential",
    "HveSandbox",
    "SandboxStats",
    "SmtpSession",
    "TokenRequest",
    "Transaction",
    "User",
]
