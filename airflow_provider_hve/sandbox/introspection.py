"""Token introspection (RFC 7662) for a real mail server in front of the sandbox.

Entra ID has no introspection endpoint: Exchange checks its tokens itself. A real MTA that
stands in for HVE in tests (Postfix with Dovecot's ``oauth2`` passdb, see
``docs/development.md``) needs one, so the sandbox serves ``POST /<tenant>/sandbox/introspect``
with a form field ``token``. The answer is ``{"active": true, "username": <HVE account>}`` only
when the token is one HVE could accept: signed by this sandbox, for Exchange Online, not
expired, with Mail.Send, for an app on the account's allowed-apps list (``Add-HVEAppAccess``).
HVE's own margin (it refuses a token within about 10 minutes of expiry, ``501 5.5.127``) is not
applied here: a real MTA has no reply for it, and the sandbox's SMTP server tests that case.
Otherwise ``{"active": false}``, as RFC 7662 asks, with no reason given to the caller.

The introspection request carries the token only, not the account the client named in
XOAUTH2; Dovecot compares ``username`` with that account itself. So ``username`` is the
account the token can send as: the ``upn`` of a delegated token, and for an app token the
one HVE account that allows the app (an app allowed by several accounts is refused: name
the account with a delegated token, or allow the app on one account only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_hve.sandbox.directory import MAIL_SEND, Directory
from airflow_provider_hve.sandbox.tokens import TokenIssuer, TokenRejected


@dataclass
class Introspection:
    """One introspection request and its verdict (``reason`` is for tests; the caller never sees it)."""

    active: bool
    username: str | None
    reason: str
    at: float = field(default_factory=time.time)

    def body(self) -> dict[str, Any]:
        """Return the RFC 7662 response body."""
        if not self.active:
            return {"active": False}
        return {"active": True, "username": self.username, "token_type": "Bearer"}


def introspect(directory: Directory, issuer: TokenIssuer, token: str) -> Introspection:
    """Decide whether ``token`` is one HVE would accept, and for which account.

    :param directory: the tenant's apps and users
    :param issuer: checks signature, audience, issuer and expiry
    :param token: the access token as the client sent it
    """
    try:
        claims = issuer.verify(token)
    except TokenRejected as exc:
        return Introspection(False, None, str(exc))
    app_id = str(claims.get("appid", ""))
    if "scp" in claims:
        upn = str(claims.get("upn", ""))
        if MAIL_SEND not in str(claims["scp"]).split():
            return Introspection(False, None, "delegated token lacks Mail.Send")
        account = directory.user(upn)
        if account is None or account.hve_allowed_apps is None:
            return Introspection(False, None, f"{upn} is not an HVE account")
        if app_id not in account.hve_allowed_apps:
            return Introspection(False, None, "app is not on the HVE account's allowed-apps list")
        return Introspection(True, account.upn.lower(), "ok")
    if MAIL_SEND not in claims.get("roles", []):
        return Introspection(False, None, "app token lacks the Mail.Send role")
    accounts = directory.hve_accounts_allowing(app_id)
    if len(accounts) != 1:
        why = "no HVE account allows the app" if not accounts else "several HVE accounts allow the app"
        return Introspection(False, None, why)
    return Introspection(True, accounts[0].upn.lower(), "ok")
