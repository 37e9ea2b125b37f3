"""Client-side helpers shared by the sandbox tests."""

from __future__ import annotations

import base64
from typing import Any

import requests

from airflow_provider_hve.sandbox import HveSandbox

SCOPE = "https://outlook.office365.com/.default"


class SandboxHttpSession(requests.Session):
    """A requests session that trusts the sandbox CA and ignores proxy/CA environment variables.

    MSAL asks ``https://localhost/common/userrealm/...`` without the port during the password
    flow; this session puts the sandbox's port back, as the provider's client does.
    """

    def __init__(self, sandbox: HveSandbox) -> None:
        super().__init__()
        # REQUESTS_CA_BUNDLE is set on many machines and would override verify= otherwise.
        self.trust_env = False
        self.verify = sandbox.ca_bundle
        self._authority_host = sandbox.authority_host

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if isinstance(url, str) and url.startswith("https://localhost/"):
            url = self._authority_host + url[len("https://localhost") :]
        return super().request(method, url, *args, **kwargs)


def xoauth2(user: str, token: str) -> str:
    """Return the base64 XOAUTH2 initial response."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()
