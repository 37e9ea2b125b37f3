"""Turn Entra ID and Exchange refusals into messages an on-call engineer can act on.

Each known code maps to the likely cause and the fix. Entra's correlation and trace ids are kept: they are
what Microsoft support asks for. Nothing here ever includes a secret or a token.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

from airflow_provider_hve.connection import HveConnectionConfig
from airflow_provider_hve.exceptions import HveAuthError

ENTRA_CAUSES: dict[int, str] = {
    7000215: "Invalid client secret. Most often the secret's ID was pasted instead of its Value: in Entra ID > "
    "App registrations > your app > Certificates & secrets, create a new client secret and copy its Value "
    "column into the connection's Password field.",
    7000222: "The client secret has expired. Create a new one under Certificates & secrets and put its Value "
    "in the connection's Password field.",
    700016: "No application with this client_id exists in the tenant. Check extra 'client_id' (the "
    "Application (client) ID) and extra 'tenant_id' (the app must be registered in, or consented to by, "
    "that tenant).",
    90002: "The tenant was not found. Check extra 'tenant_id' (Directory (tenant) ID or primary domain) and, "
    "for a sovereign cloud, extra 'authority_host'.",
    65001: "Admin consent is missing. In API permissions, add Office 365 Exchange Online > Mail.Send and "
    "click 'Grant admin consent'.",
    500011: "The resource in the scope was not found in the tenant. Check extra 'scope' (default "
    "https://outlook.office365.com/.default) and that the tenant has Exchange Online.",
    70011: "The scope is invalid. Application permissions need '<resource>/.default', e.g. "
    "https://outlook.office365.com/.default; fix extra 'scope'.",
    50126: "Wrong user name or password for the HVE account (delegated flow). Check the connection's Login "
    "(the HVE account address) and Password.",
    50034: "The user in Login does not exist in this tenant. Set Login to the HVE account address.",
    50053: "The HVE account is locked after too many sign-in attempts. Wait, then fix the password.",
    50055: "The HVE account's password has expired. Reset it and update the connection's Password.",
    50057: "The HVE account is disabled in Entra ID.",
    53003: "Blocked by Conditional Access. Ask your Entra admin to exclude this app or workload from the "
    "policy named in the sign-in log (search it by the correlation id).",
    50076: "Multi-factor authentication is required for this account; the delegated password flow cannot do "
    "MFA. Use application permission (auth_mode client_secret or certificate) instead.",
    50079: "Multi-factor authentication registration is required; the delegated password flow cannot do "
    "MFA. Use application permission (auth_mode client_secret or certificate) instead.",
    7000218: "The app does not allow public client flows. For auth_mode 'password', enable 'Allow public "
    "client flows' on the app's Authentication page (or use auth_mode 'client_secret').",
    700027: "The certificate assertion was refused: the certificate is not uploaded to the app registration, "
    "or the thumbprint/private key do not match it. Upload the certificate (.cer) under Certificates & "
    "secrets and check extras 'certificate_path' / 'certificate_thumbprint'.",
    700024: "The client assertion is outside its validity window; check the worker's clock.",
    700211: "The federated token's issuer matches no federated credential on the app. Add a federated "
    "credential for this issuer (e.g. the AKS cluster's OIDC issuer URL).",
    700213: "The federated token's subject matches no federated credential on the app. Check the federated "
    "credential's subject (e.g. system:serviceaccount:<namespace>:<service account>).",
    700212: "The federated token's audience is not the one the federated credential expects (normally "
    "api://AzureADTokenExchange). Fix the audience of the projected token or of the federated credential.",
    70021: "No federated credential on the app matches the presented token. Check issuer, subject and "
    "audience (api://AzureADTokenExchange) of the app's federated credentials.",
    700238: "The federated token has expired; the token file is not being refreshed. Check the workload "
    "identity webhook and the token file path.",
}

SMTP_AUTH_CAUSES: dict[str, str] = {
    "5.7.3": "HVE refused the token. Check, in this order: (1) the app has the Office 365 Exchange Online "
    "Mail.Send permission with admin consent (application permission for client_secret/certificate/"
    "workload_identity, delegated for password); (2) the app is allowed for the HVE account: run "
    "'Add-HVEAppAccess' in Exchange Online PowerShell (it takes up to 5 minutes to apply); (3) Login is the HVE "
    "account address itself; (4) extra 'scope' names Exchange Online (https://outlook.office365.com/.default).",
    "5.7.139": "A tenant policy blocks this sign-in: security defaults, or an authentication policy assigned to "
    "the account, or SMTP AUTH turned off for the mailbox. HVE accounts take OAuth even where the tenant turns "
    "SMTP AUTH off, so check that Login is the HVE account (not an ordinary mailbox) and 'host' is "
    "smtp.hve.mx.microsoft; otherwise ask your Exchange admin to allow SMTP AUTH for this account "
    "(Set-CASMailbox <account> -SmtpClientAuthenticationDisabled $false) and to check the authentication policy "
    "assigned to it.",
    "5.7.30": "Exchange Online retired basic authentication for SMTP AUTH (the reply to a password sign-in). This "
    "provider signs in with OAuth (XOAUTH2), so the server took this for an ordinary mailbox sign-in: set 'host' "
    "to smtp.hve.mx.microsoft and Login to the HVE account (HVE accounts are created in the Exchange admin "
    "center), not a user mailbox on smtp.office365.com.",
    "5.5.127": "HVE considers the token about to expire (it refuses tokens within ~10 minutes of expiry) even "
    "after a refresh. Check the worker's clock and any token lifetime policy on the tenant.",
    "5.5.124": "HVE could not parse the XOAUTH2 data. Check that Login is a plain address with no display name.",
    "5.7.57": "The server says the client is not authenticated: the session lost its state, or a command "
    "reached the server before AUTH did. The provider already sends EHLO again after STARTTLS (the usual cause, "
    "Airflow issue #62775); check that nothing between the worker and HVE (a TLS-inspecting proxy) resets the "
    "session, and that 'host' is smtp.hve.mx.microsoft. Then run the task again.",
    "4.3.2": "Too many concurrent connections to HVE. Lower the number of parallel sessions or use an Airflow "
    "pool to cap them.",
}

SMTP_SEND_CAUSES: dict[str, str] = {
    "5.7.60": "HVE sends only as the HVE account itself: the envelope sender and the From address must be "
    "the connection's Login.",
    "5.7.57": "The session is not authenticated (it lost its AUTH). The provider opens a new session and sends "
    "again; a message refused this way was not taken.",
    "5.7.30": "Exchange Online retired basic authentication for SMTP AUTH: set 'host' to smtp.hve.mx.microsoft and "
    "Login to the HVE account; this provider signs in with OAuth (XOAUTH2).",
    "5.7.139": "A tenant policy (security defaults, an authentication policy) blocks this account's SMTP sign-in; "
    "ask your Exchange admin to allow SMTP AUTH for the HVE account.",
    "5.7.54": "HVE delivers only to the tenant's accepted domains; external recipients are refused.",
    "5.3.4": "The message exceeds HVE's 10 MB limit. Send smaller or fewer attachments.",
    "4.5.3": "Too many recipients in one transaction; HVE accepts at most 50.",
    "5.2.0": "The tenant's HVE submission quota is used up (100,000 recipients a day). Wait, or spread sending "
    "over the day.",
    "4.3.2": "Too many concurrent connections to HVE. Lower the number of parallel sessions or use an Airflow "
    "pool to cap them.",
    "4.3.0": "A temporary failure at HVE; sending again later usually works.",
    "4.3.1": "HVE is short of resources (busy); sending again later usually works.",
}

SESSION_WIDE_REFUSALS = frozenset({"5.2.0", "5.7.60"})
"""Permanent refusals that apply to every message of the session, not to one recipient: stop sending."""


def is_session_wide(code: int, reply: str) -> bool:
    """
    Tell whether a permanent refusal stops the whole run (quota used up, sender not allowed, session lost).

    :param code: the SMTP reply code.
    :param reply: the reply text after the code.
    """
    if not 500 <= code < 600:
        return False
    enhanced = _search(_ENHANCED, reply)
    return enhanced in SESSION_WIDE_REFUSALS or "quotaexceeded" in reply.lower().replace(" ", "")


_AADSTS = re.compile(r"AADSTS(\d+)")
_CORRELATION = re.compile(r"Correlation ID:\s*([0-9a-fA-F-]{36})")
_TRACE = re.compile(r"Trace ID:\s*([0-9a-fA-F-]{36})")
_ENTRA_TRAILER = re.compile(r"\s*\b(?:Trace ID|Correlation ID|Timestamp):")
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def describe_entra_error(config: HveConnectionConfig, result: dict[str, Any]) -> HveAuthError:
    """
    Build the error for an MSAL error result (``error``, ``error_description``, ``error_codes``, ...).

    :param config: the connection, for its id.
    :param result: the dict MSAL returned instead of a token.
    """
    description = str(result.get("error_description") or "")
    codes = [int(c) for c in result.get("error_codes") or [] if str(c).isdigit()]
    if not codes:
        codes = [int(c) for c in _AADSTS.findall(description)]
    code = codes[0] if codes else None
    correlation_id = result.get("correlation_id") or _search(_CORRELATION, description)
    trace_id = result.get("trace_id") or _search(_TRACE, description)

    summary = description.split("\r\n")[0].split("\n")[0]
    # Entra appends "Trace ID: ... Correlation ID: ... Timestamp: ..." to the first line; the ids get a line of
    # their own below, and a message that shows them twice reads as two failures.
    summary = _ENTRA_TRAILER.split(summary, maxsplit=1)[0].strip() or str(result.get("error") or "no token")
    cause = ENTRA_CAUSES.get(code) if code is not None else None
    lines = [f"Entra ID refused a token for connection {config.conn_id!r} ({config.auth_mode.value}): {summary}"]
    if cause:
        lines.append(f"Likely cause and fix: {cause}")
    ids = ", ".join(
        f"{name} {value}" for name, value in (("correlation id", correlation_id), ("trace id", trace_id)) if value
    )
    if ids:
        lines.append(f"Entra {ids} (give these to Microsoft support).")
    return HveAuthError(
        "\n".join(lines),
        code=f"AADSTS{code}" if code is not None else str(result.get("error") or "") or None,
        correlation_id=correlation_id,
        trace_id=trace_id,
    )


def entra_error_from_text(text: str) -> dict[str, Any] | None:
    """Pull an Entra error out of an exception text (MSAL puts discovery failures' bodies there)."""
    start = text.find("{")
    if start >= 0:
        try:
            body = json.loads(text[start : text.rfind("}") + 1])
        except ValueError:
            body = None
        if isinstance(body, dict) and ("error_codes" in body or "error_description" in body):
            return body
    if _AADSTS.search(text):
        return {"error_description": text}
    return None


def describe_smtp_auth_reply(config: HveConnectionConfig, code: int, reply: str) -> HveAuthError:
    """
    Build the error for an SMTP ``AUTH XOAUTH2`` refusal.

    :param config: the connection, for its id, account and host.
    :param code: the SMTP reply code (``535``, ``501``, ...).
    :param reply: the reply text, e.g. ``5.7.3 Authentication unsuccessful``.
    """
    enhanced = _search(_ENHANCED, reply)
    cause = SMTP_AUTH_CAUSES.get(enhanced or "") or (
        SMTP_AUTH_CAUSES["5.7.3"] if code == 535 else "The server refused AUTH XOAUTH2."
    )
    message = (
        f"HVE at {config.host}:{config.port} refused AUTH XOAUTH2 for {config.account} "
        f"(connection {config.conn_id!r}): {code} {reply}\nLikely cause and fix: {cause}"
    )
    return HveAuthError(message, code=str(code), smtp_reply=f"{code} {reply}")


def smtp_reply_hint(code: int | None, reply: str) -> str:
    """
    Return `` Likely cause and fix: ...`` for a known SMTP reply, or an empty string.

    :param code: the SMTP reply code.
    :param reply: the reply text after the code.
    """
    enhanced = _search(_ENHANCED, reply)
    cause = SMTP_SEND_CAUSES.get(enhanced or "")
    if cause is None and "quotaexceeded" in reply.lower().replace(" ", ""):
        cause = SMTP_SEND_CAUSES["5.2.0"]
    if cause is None and code == 421:
        cause = "HVE is closing the connection (busy, or a session limit); retry later with fewer sessions."
    return f" Likely cause and fix: {cause}" if cause else ""


def describe_os_error(exc: BaseException) -> str:
    """
    Say in a few words why a connection failed: ``the host name does not resolve (...)``, ``connection refused``,
    ``timed out``, or the exception's type and text.

    :param exc: the low-level error (``OSError``, ``smtplib.SMTPException``...).
    """
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _search(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None
