"""The ``hve`` Airflow connection, parsed once into a validated, immutable :class:`HveConnectionConfig`.

Every error names the connection id and the field, says what is wrong and how to fix it, and never
echoes a secret.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_hve.exceptions import HveConfigError

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "hve_default"
DEFAULT_HOST = "smtp.hve.mx.microsoft"
DEPRECATED_HOSTS = frozenset({"smtp-hve.office365.com"})
DEFAULT_PORT = 587
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_SCOPE = "https://outlook.office365.com/.default"
DEFAULT_TIMEOUT = 30.0
DEFAULT_SEND_RETRIES = 3
# The most BDAT transactions written and unanswered (see airflow_provider_hve.transport.window and docs/reliability.md);
# the transport holds the same numbers (DEFAULT_WINDOW, MAX_WINDOW; tests/unit/test_layers.py checks they agree).
DEFAULT_BDAT_WINDOW = 24
MAX_BDAT_WINDOW = 256
MAX_SEND_RETRIES = 10
# Where AKS workload identity (and Azure's other federated setups) mount the service-account token.
FEDERATED_TOKEN_FILE_ENV = "AZURE_FEDERATED_TOKEN_FILE"

_LEGACY_EXTRA_PREFIX = "extra__hve__"
# What a form's checkbox sends as well as what people type: Airflow 2.11's WTForms BooleanField posts "y" for a
# ticked box (its HTML value), browsers post "on" for a box without a value, the React UI sends JSON true.
_TRUE = frozenset({"true", "1", "yes", "y", "t", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "f", "off", ""})
_TENANT_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+$")
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
# Lower-case words joined by '_' or '-' name things (an extra, a mode); a secret never looks like that, so
# such a value may be quoted back. Anything else is described by its length and shape only.
_SAFE_WORD = re.compile(r"^[a-z]+(?:[_-][a-z]+)*$")

ENTRA_HOSTS = frozenset(
    {
        # Public cloud and its aliases.
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        # US Government (GCC High, DoD).
        "login.microsoftonline.us",
        "login-us.microsoftonline.com",
        "login.usgovcloudapi.net",
        # China (operated by 21Vianet).
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        # The sovereign clouds of France, Germany and Singapore.
        "login.sovcloud-identity.fr",
        "login.sovcloud-identity.de",
        "login.sovcloud-identity.sg",
    }
)
"""Entra sign-in hosts of the Microsoft clouds: MSAL's ``WELL_KNOWN_AUTHORITY_HOSTS`` without retired ones."""
MICROSOFT_SMTP_SUFFIXES = (".mx.microsoft", ".office365.com", ".office365.us", ".outlook.cn")
"""SMTP hosts under these domains are Microsoft's; another host gets a warning (a token is sent to it)."""
MICROSOFT_SCOPE_HOSTS = frozenset(
    {"outlook.office365.com", "outlook.office.com", "outlook.office365.us", "partner.outlook.cn"}
)
"""Exchange Online resources of the Microsoft clouds; another scope gets a warning."""


class AuthMode(str, enum.Enum):
    """How the provider proves its identity to Entra ID."""

    CLIENT_SECRET = "client_secret"
    """Application permission ``Mail.Send``; the connection password is the client secret's *value*."""
    CERTIFICATE = "certificate"
    """Application permission; a certificate uploaded to the app registration signs the request."""
    PASSWORD = "password"
    """Delegated permission (public client, ROPC): the HVE account's own user name and password."""
    WORKLOAD_IDENTITY = "workload_identity"
    """Application permission; a federated token file (AKS workload identity) replaces the secret."""

    @property
    def is_app_only(self) -> bool:
        return self is not AuthMode.PASSWORD


EXTRA_FIELDS = (
    "tenant_id",
    "client_id",
    "auth_mode",
    "certificate_path",
    "certificate_thumbprint",
    "send_certificate_chain",
    "federated_token_file",
    "authority_host",
    "allow_custom_authority",
    "scope",
    "ca_bundle",
    "from_email",
    "timeout",
    "send_retries",
    "bdat_window",
    "accepted_domains",
)


@dataclass(frozen=True)
class HveConnectionConfig:
    """
    An ``hve`` connection, validated.

    Build it with :meth:`from_connection` (an Airflow ``Connection``) or :meth:`from_fields`.
    The secret never appears in ``repr``.

    Example::

        config = HveConnectionConfig.from_fields(
            "hve_default",
            login="reports@contoso.com",
            password="<client secret value>",
            extra={"tenant_id": "contoso.onmicrosoft.com", "client_id": "<app id>"},
        )
    """

    conn_id: str
    account: str
    tenant_id: str
    client_id: str
    auth_mode: AuthMode = AuthMode.CLIENT_SECRET
    password: str | None = field(default=None, repr=False)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    authority_host: str = DEFAULT_AUTHORITY_HOST
    allow_custom_authority: bool = False
    """True when ``authority_host`` is not a Microsoft Entra host (the sandbox, a proxy) and extra
    ``allow_custom_authority`` allowed it: MSAL's instance discovery is then off for it."""
    scopes: tuple[str, ...] = (DEFAULT_SCOPE,)
    certificate_path: str | None = None
    certificate_thumbprint: str | None = None
    send_certificate_chain: bool = False
    federated_token_file: str | None = None
    ca_bundle: str | None = None
    from_email: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    send_retries: int = DEFAULT_SEND_RETRIES
    """How many times one message is sent again after a temporary failure (see ``HveSmtpSession.send``)."""
    bdat_window: int = DEFAULT_BDAT_WINDOW
    """The most BDAT transactions in flight (see :mod:`airflow_provider_hve.transport.window`)."""
    accepted_domains: tuple[str, ...] = ()
    """The tenant's accepted domains (lower case, ASCII form); recipients outside them are refused before sending.
    Empty: not checked (HVE itself refuses them, ``550 5.7.54``)."""

    @property
    def authority(self) -> str:
        """The Entra authority URL MSAL is given: ``<authority_host>/<tenant_id>``."""
        return f"{self.authority_host}/{self.tenant_id}"

    @classmethod
    def from_connection(cls, conn: Any, conn_id: str | None = None) -> HveConnectionConfig:
        """
        Validate an Airflow ``Connection`` of type ``hve``.

        :param conn: the connection (anything with ``host``, ``port``, ``login``, ``password`` and
            ``extra_dejson``).
        :param conn_id: the id to name in errors; defaults to ``conn.conn_id``.
        """
        conn_id = conn_id or getattr(conn, "conn_id", None) or DEFAULT_CONN_ID
        conn_type = getattr(conn, "conn_type", None)
        if conn_type and conn_type != "hve":
            raise HveConfigError(
                f"Connection {conn_id!r} has conn_type {conn_type!r}; the HVE provider needs conn_type "
                f"'hve'. Recreate it with type 'Microsoft 365 High Volume Email'."
            )
        try:
            extra = conn.extra_dejson
        except Exception as exc:
            raise HveConfigError(
                f"Connection {conn_id!r}: the 'extra' field is not valid JSON. Fix it in the connection."
            ) from exc
        return cls.from_fields(
            conn_id,
            host=conn.host,
            port=conn.port,
            login=conn.login,
            password=conn.password,
            extra=extra,
        )

    @classmethod
    def from_fields(
        cls,
        conn_id: str,
        *,
        host: str | None = None,
        port: int | str | None = None,
        login: str | None = None,
        password: str | None = None,
        extra: Mapping[str, Any] | str | None = None,
    ) -> HveConnectionConfig:
        """Validate raw connection fields; see the README for what each one means."""
        known, unknown = _normalise_extra(conn_id, extra)
        reader = _Reader(conn_id, known, unknown)

        auth_mode = reader.choice("auth_mode", AuthMode, AuthMode.CLIENT_SECRET)
        tenant_id = reader.tenant_id(auth_mode)
        client_id = reader.guid("client_id", "the Application (client) ID on the app registration's Overview page")
        account = _require_address(conn_id, "login", login, what="the HVE account address (the sender)")

        password = password or None
        certificate_path = reader.path("certificate_path") if auth_mode is AuthMode.CERTIFICATE else None
        federated_token_file = None
        if auth_mode in (AuthMode.CLIENT_SECRET, AuthMode.PASSWORD) and not password:
            what = "client secret value" if auth_mode is AuthMode.CLIENT_SECRET else "HVE account's password"
            raise HveConfigError(
                f"Connection {conn_id!r}: field 'password' is empty; auth_mode {auth_mode.value!r} needs the "
                f"{what} there. Set it in the connection's Password field."
            )
        if auth_mode is AuthMode.CERTIFICATE and certificate_path is None:
            raise HveConfigError(
                f"Connection {conn_id!r}: auth_mode 'certificate' needs extra 'certificate_path', the path of a "
                f"PEM file holding the private key and the certificate uploaded to the app registration."
            )
        if auth_mode is AuthMode.WORKLOAD_IDENTITY:
            federated_token_file = reader.path("federated_token_file") or _env_path(conn_id, FEDERATED_TOKEN_FILE_ENV)

        authority_host, custom_authority = reader.authority_host()
        return cls(
            conn_id=conn_id,
            account=account,
            tenant_id=tenant_id,
            client_id=client_id,
            auth_mode=auth_mode,
            password=password,
            host=_host(conn_id, host),
            port=_port(conn_id, port),
            authority_host=authority_host,
            allow_custom_authority=custom_authority,
            scopes=reader.scopes(auth_mode),
            certificate_path=certificate_path,
            certificate_thumbprint=reader.thumbprint("certificate_thumbprint"),
            send_certificate_chain=reader.boolean("send_certificate_chain", False),
            federated_token_file=federated_token_file,
            ca_bundle=reader.path("ca_bundle"),
            from_email=reader.from_email(),
            timeout=reader.positive_number("timeout", DEFAULT_TIMEOUT),
            send_retries=reader.count("send_retries", DEFAULT_SEND_RETRIES, MAX_SEND_RETRIES),
            bdat_window=reader.count(
                "bdat_window",
                DEFAULT_BDAT_WINDOW,
                MAX_BDAT_WINDOW,
                minimum=1,
                example=f"{DEFAULT_BDAT_WINDOW} (1: one at a time)",
            ),
            accepted_domains=reader.domains("accepted_domains"),
        )


def _normalise_extra(conn_id: str, extra: Mapping[str, Any] | str | None) -> tuple[dict[str, Any], list[Any]]:
    """Return the known extras (emptied ones dropped) and the names of the unknown ones (logged, then ignored)."""
    if extra is None or extra == "":
        return {}, []
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError as exc:
            raise HveConfigError(
                f"Connection {conn_id!r}: the 'extra' field is not valid JSON ({exc.msg} at character {exc.pos}). "
                f"Fix it in the connection."
            ) from None
    if not isinstance(extra, Mapping):
        raise HveConfigError(f"Connection {conn_id!r}: the 'extra' field must be a JSON object.")
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in extra.items():
        name = (
            key[len(_LEGACY_EXTRA_PREFIX) :] if isinstance(key, str) and key.startswith(_LEGACY_EXTRA_PREFIX) else key
        )
        if name not in EXTRA_FIELDS:
            unknown.append(name)
            continue
        # The UI stores an emptied field as "" or null: both mean "not set".
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        out[name] = value.strip() if isinstance(value, str) else value
    if unknown:
        _refuse_a_misspelt_guard(conn_id, unknown)
        _warn_once(conn_id, unknown)
    return out, unknown


_warned_unknown_extras: set[tuple[str, frozenset[Any]]] = set()
_warned_lock = threading.Lock()


def _warn_once(conn_id: str, unknown: list[Any]) -> None:
    """
    Log :func:`unknown_extras_message` once per process for each connection id and set of unknown names.

    Every hook, and every task of a worker, reads the connection again: a warning per read would bury the logs in
    one line repeated. A connection edited to carry other unknown names is warned about again.
    """
    key = (conn_id, frozenset(unknown))
    with _warned_lock:
        if key in _warned_unknown_extras:
            return
        _warned_unknown_extras.add(key)
    log.warning("%s", unknown_extras_message(conn_id, unknown))


_GUARD_EXTRAS = ("accepted_domains", "authority_host", "ca_bundle", "allow_custom_authority")
"""Extras that guard where credentials go or who may receive: a near miss of one is refused, not warned about."""


def _refuse_a_misspelt_guard(conn_id: str, unknown: list[Any]) -> None:
    """
    An unknown extra that closely matches a guard (``accepted_domain``, ``authority_hosts``) is refused: with only a
    warning, the guard it meant to set would be silently off (mail outside the tenant, a secret sent to the wrong
    Entra cloud).
    """
    import difflib

    for name in unknown:
        if not isinstance(name, str):
            continue
        close = difflib.get_close_matches(name.lower(), _GUARD_EXTRAS, n=1, cutoff=0.8)
        if close and close[0] != name:
            raise HveConfigError(
                f"Connection {conn_id!r}: extra {shown(name)} is not a field; did you mean {close[0]!r}? It guards "
                "where credentials go or who may receive mail, so a misspelt name is refused rather than ignored. "
                "Fix the name in the connection's extras."
            )


def unknown_extras_message(conn_id: str, names: list[Any]) -> str:
    """
    Say which extras this version does not know, what each may have meant, and which fields exist.

    Unknown extras are ignored with this warning, not refused: a rolling upgrade or downgrade, or tooling that
    adds keys of its own, must not break every send. A name that looks like a secret is described, not shown.
    """
    import difflib  # only when something is wrong: not on the import a DAG parse may pay for

    described = []
    for name in names:
        hint = difflib.get_close_matches(name, EXTRA_FIELDS, n=1) if isinstance(name, str) else []
        text = shown(name)
        if isinstance(name, str) and any(word in name.lower() for word in ("secret", "password", "passphrase")):
            text += " (a secret belongs in the connection's Password field)"
        elif hint:
            text += f" (did you mean {hint[0]!r}?)"
        described.append(text)
    return (
        f"Connection {conn_id!r}: ignoring unknown extra field(s) {', '.join(described)}. This version of the "
        f"provider reads: {', '.join(EXTRA_FIELDS)}. Remove or rename them to silence this warning."
    )


class _Reader:
    """Reads typed extras, raising errors that name the connection and the field."""

    def __init__(self, conn_id: str, extra: dict[str, Any], unknown: list[Any] | None = None) -> None:
        self.conn_id = conn_id
        self.extra = extra
        self.unknown = [name for name in unknown or () if isinstance(name, str)]

    def _error(self, name: str, problem: str) -> HveConfigError:
        if problem.startswith("is missing"):
            # A typo ('tenat_id') was ignored with a warning; the field it meant is then missing: say so here too.
            import difflib

            typo = next((u for u in self.unknown if difflib.get_close_matches(u, [name], n=1)), None)
            if typo is not None:
                problem += f" (Extra {shown(typo)} is set but unknown: did you mean {name!r}?)"
        return HveConfigError(f"Connection {self.conn_id!r}: extra field {name!r} {problem}")

    def _str(self, name: str) -> str | None:
        value = self.extra.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._error(name, f"must be a string, got {type(value).__name__}.")
        return value

    def choice(self, name: str, enum_type: type[AuthMode], default: AuthMode) -> AuthMode:
        value = self._str(name)
        if value is None:
            return default
        try:
            return enum_type(value.lower())
        except ValueError:
            allowed = ", ".join(m.value for m in enum_type)
            raise self._error(name, f"is {shown(value)}; use one of: {allowed}.") from None

    def tenant_id(self, auth_mode: AuthMode) -> str:
        value = self._str("tenant_id")
        if value is None:
            raise self._error(
                "tenant_id",
                "is missing. Set it to the Directory (tenant) ID (a GUID) or the tenant's primary domain, "
                "e.g. contoso.onmicrosoft.com.",
            )
        lowered = value.lower()
        refused = {"common", "consumers"} | ({"organizations"} if auth_mode.is_app_only else set())
        if lowered in refused:
            raise self._error(
                "tenant_id",
                f"is {value!r}, which names no single tenant; auth_mode {auth_mode.value!r} needs your "
                f"Directory (tenant) ID or primary domain.",
            )
        if not (_is_guid(value) or _TENANT_DOMAIN.match(value) or lowered == "organizations"):
            raise self._error(
                "tenant_id",
                f"is neither a GUID nor a domain name {hidden(value)}. Copy the Directory (tenant) ID from the "
                f"app registration's Overview page.",
            )
        return value

    def guid(self, name: str, what: str) -> str:
        value = self._str(name)
        if value is None:
            raise self._error(name, f"is missing. Set it to {what}.")
        if not _is_guid(value):
            raise self._error(name, f"is not a GUID. Set it to {what}.")
        return value

    def path(self, name: str) -> str | None:
        value = self._str(name)
        if value is None:
            return None
        expanded = os.path.expanduser(value)
        if not os.path.isfile(expanded):
            raise self._error(
                name,
                f"is not a readable file on this worker {hidden(value)}{path_hint(expanded)}. Set it to the "
                f"absolute path of the file on the worker.",
            )
        return expanded

    def thumbprint(self, name: str) -> str | None:
        value = self._str(name)
        if value is None:
            return None
        cleaned = value.replace(":", "").replace(" ", "")
        if not re.fullmatch(r"[0-9A-Fa-f]{40}", cleaned):
            raise self._error(name, "must be the certificate's SHA-1 thumbprint: 40 hex digits.")
        return cleaned.upper()

    def boolean(self, name: str, default: bool) -> bool:
        value = self.extra.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise self._error(name, f"is {shown(value)}; use true or false.")

    def positive_number(self, name: str, default: float) -> float:
        value = self.extra.get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self._error(name, f"is not a number {hidden(value)}; use a number of seconds, e.g. 30.") from None
        if not number >= 1:
            raise self._error(name, f"is {number:g}; use at least 1 second.")
        return number

    def count(self, name: str, default: int, maximum: int, *, minimum: int = 0, example: str = "3") -> int:
        """Read a whole number from ``minimum`` to ``maximum`` (ASCII digits only; ``example`` for the error)."""
        value = self.extra.get(name)
        if value is None:
            return default
        text = str(value).strip()
        valid = not isinstance(value, bool) and text.isascii() and text.isdecimal() and len(text) <= 9
        if not valid or not minimum <= int(text) <= maximum:
            raise self._error(
                name, f"is not a whole number from {minimum} to {maximum} {hidden(value)}; use e.g. {example}."
            )
        return int(text)

    def authority_host(self) -> tuple[str, bool]:
        """Return the authority host as ``https://host[:port]`` and whether it is a custom (non-Entra) host."""
        name = "authority_host"
        allow_custom = self.boolean("allow_custom_authority", False)
        value = self._str(name)
        if value is None:
            return DEFAULT_AUTHORITY_HOST, False
        example = f"e.g. {DEFAULT_AUTHORITY_HOST}"
        parts = urlsplit(value)
        if parts.scheme.lower() != "https":
            raise self._error(
                name, f"is not an https:// URL {hidden(value)}; {example} (tokens never travel over plain http)."
            )
        if "@" in parts.netloc:
            raise self._error(
                name,
                f"holds user info (a 'name@' before the host) {hidden(value)}; give the host only, {example}. "
                f"Credentials never go in this URL.",
            )
        host = (parts.hostname or "").rstrip(".")
        if not _HOST_NAME.match(host):
            raise self._error(name, f"has no valid host name {hidden(value)}; {example}.")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port is not None and not 0 < port < 65536:
            raise self._error(name, f"({host}) has an invalid port; use a number from 1 to 65535, or none.")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise self._error(
                name, f"({host}) has a path; give the host only ({example}), the tenant goes in 'tenant_id'."
            )
        if host in ENTRA_HOSTS:
            if port not in (None, 443):
                raise self._error(
                    name, f"is {host} with port {port}; Microsoft's Entra hosts answer on 443: drop the port."
                )
            return f"https://{host}", False
        if not allow_custom:
            import difflib

            hint = difflib.get_close_matches(host, ENTRA_HOSTS, n=1, cutoff=0.75)
            suggestion = f" Did you mean {hint[0]}?" if hint else ""
            raise self._error(
                name,
                f"is {host}, which is not a Microsoft Entra host.{suggestion} Known hosts: "
                f"{', '.join(sorted(ENTRA_HOSTS))}. For a host of your own (a test stand-in such as the "
                f"sandbox, a corporate proxy), also set extra 'allow_custom_authority' to true: the client secret "
                f"is then sent to that host.",
            )
        log.warning(
            "Connection %r: authority_host %s is not a Microsoft Entra host; allowed by extra "
            "'allow_custom_authority'. Credentials are sent to it and MSAL's authority validation is off.",
            self.conn_id,
            host,
        )
        return f"https://{host}" + (f":{port}" if port is not None else ""), True

    def scopes(self, auth_mode: AuthMode) -> tuple[str, ...]:
        value = self._str("scope")
        if value is None:
            return (DEFAULT_SCOPE,)
        scopes = tuple(value.split())
        for scope in scopes:
            parts = urlsplit(scope)
            host = (parts.hostname or "") if parts.scheme == "https" and "@" not in parts.netloc else ""
            if not _HOST_NAME.match(host):
                raise self._error(
                    "scope",
                    f"has a value that is not an https:// resource URL {hidden(scope)}; use e.g. {DEFAULT_SCOPE}.",
                )
            if auth_mode.is_app_only and not scope.endswith("/.default"):
                raise self._error(
                    "scope",
                    f"names {host} without '/.default'; application permissions are requested as "
                    f"'<resource>/.default', e.g. {DEFAULT_SCOPE}.",
                )
            if host not in MICROSOFT_SCOPE_HOSTS:
                log.warning(
                    "Connection %r: scope resource %s is not Exchange Online (%s); HVE accepts only Exchange "
                    "Online tokens.",
                    self.conn_id,
                    host,
                    ", ".join(sorted(MICROSOFT_SCOPE_HOSTS)),
                )
        return scopes

    def domains(self, name: str) -> tuple[str, ...]:
        """Read a list of domain names: a JSON list, or one string separated by commas, semicolons or spaces."""
        value = self.extra.get(name)
        if value is None:
            return ()
        items = re.split(r"[,;\s]+", value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise self._error(name, f'must be a list of domains, got {type(value).__name__}; e.g. ["contoso.com"].')
        domains: list[str] = []
        for item in items:
            text = item.strip().lstrip("@") if isinstance(item, str) else ""
            if not text:
                continue
            # Imported here: addresses.py is not needed to parse DAG files (only when this extra is set).
            from airflow_provider_hve.addresses import domain_a_label

            ascii_name = domain_a_label(text)
            if not _TENANT_DOMAIN.match(ascii_name):
                raise self._error(
                    name, f"holds {shown(item)}, which is not a domain name; list domains such as contoso.com."
                )
            domains.append(ascii_name)
        return tuple(dict.fromkeys(domains))

    def from_email(self) -> str | None:
        value = self._str("from_email")
        if value is None:
            return None
        # Imported here: addresses.py pulls in email_validator, which DAG parsing never needs.
        from airflow_provider_hve.addresses import AddressError, parse_mailbox

        try:
            parse_mailbox(value)
        except AddressError:
            raise self._error(
                "from_email",
                f"is not a valid address {hidden(value)}{_address_hint(value)}; use an address, optionally with a "
                f"display name: "
                f"Reports <reports@contoso.com>.",
            ) from None
        return value


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value.replace("-", "")) == 32


def _host(conn_id: str, host: str | None) -> str:
    host = (host or "").strip() or DEFAULT_HOST
    if not _HOST_NAME.match(host.lower().rstrip(".")):
        raise HveConfigError(
            f"Connection {conn_id!r}: field 'host' is not a bare host name {hidden(host)}; give one such as "
            f"{DEFAULT_HOST}."
        )
    if not host.lower().rstrip(".").endswith(MICROSOFT_SMTP_SUFFIXES):
        log.warning(
            "Connection %r: SMTP host %s is not a Microsoft host (HVE is %s); the access token is sent to it.",
            conn_id,
            host,
            DEFAULT_HOST,
        )
    if host.lower() in DEPRECATED_HOSTS:
        log.warning(
            "Connection %r uses %s, which Microsoft has announced as deprecated; switch 'host' to %s.",
            conn_id,
            host,
            DEFAULT_HOST,
        )
    return host


def _port(conn_id: str, port: int | str | None) -> int:
    if port is None or port == "":
        return DEFAULT_PORT
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise HveConfigError(
            f"Connection {conn_id!r}: field 'port' is not a number {hidden(port)}; use {DEFAULT_PORT}."
        ) from None
    if not 0 < number < 65536:
        raise HveConfigError(f"Connection {conn_id!r}: field 'port' is {number}; use {DEFAULT_PORT}.")
    if number == 465:
        raise HveConfigError(
            f"Connection {conn_id!r}: field 'port' is 465 (implicit TLS); HVE takes STARTTLS on port "
            f"{DEFAULT_PORT}. Set port to {DEFAULT_PORT}."
        )
    return number


def _env_path(conn_id: str, variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise HveConfigError(
            f"Connection {conn_id!r}: auth_mode 'workload_identity' needs extra 'federated_token_file' or "
            f"the {variable} environment variable (set by AKS workload identity)."
        )
    if not os.path.isfile(value):
        raise HveConfigError(
            f"Connection {conn_id!r}: the environment variable {variable} is not a readable file on this worker "
            f"{hidden(value)}{path_hint(value)}. Set it (or extra 'federated_token_file') to the token file's path."
        )
    return value


def _require_address(conn_id: str, name: str, value: str | None, *, what: str) -> str:
    from airflow_provider_hve.addresses import AddressError, parse_mailbox

    if not value or not value.strip():
        raise HveConfigError(f"Connection {conn_id!r}: field {name!r} is empty; set it to {what}.")
    try:
        mailbox = parse_mailbox(value.strip())
    except AddressError:
        raise HveConfigError(
            f"Connection {conn_id!r}: field {name!r} is not a valid address {hidden(value)}{_address_hint(value)}; "
            f"set it to {what}."
        ) from None
    if mailbox.display_name:
        raise HveConfigError(
            f"Connection {conn_id!r}: field {name!r} must be the bare address ({mailbox.addr_spec}); put a "
            f"display name in extra 'from_email'."
        )
    return mailbox.addr_spec


def _address_hint(value: str) -> str:
    """Say what is wrong with an address without showing any of it."""
    if "@" not in value:
        return ": it has no '@'"
    local = value.strip().rpartition("<")[2].rpartition("@")[0]
    if not local.isascii():
        return ": the part before the '@' is not ASCII, which needs SMTPUTF8 headers (the builder writes 7-bit ones)"
    return ""


def path_hint(path: str) -> str:
    """Say why ``path`` is no readable file without showing any of it (it may be a secret pasted there)."""
    if "-----BEGIN" in path or (len(path) > 60 and "/" not in path and "\\" not in path):
        return ": it looks like the content of a key, a certificate or a token, not the path of a file"
    if os.path.isdir(path):
        return ": it is a folder"
    if not os.path.isabs(path):
        return ": it is a relative path, and the worker's working directory is not the one you expect"
    return ": no such file"


def shown(value: object) -> str:
    """Quote ``value`` if it is plainly a name (lower-case words), else describe it with :func:`hidden`."""
    if isinstance(value, str) and len(value) <= 40 and _SAFE_WORD.match(value):
        return repr(value)
    return hidden(value)


def hidden(value: object) -> str:
    """
    Describe a value without showing it: its length and rough shape, in parentheses.

    Used for every connection field an error talks about: a secret pasted into the wrong field must not reach
    the logs.
    """
    if not isinstance(value, str):
        return f"(a {type(value).__name__}, not shown)"
    shape = []
    if "://" in value:
        shape.append("a URL")
    elif "@" in value:
        shape.append("with '@'")
    if any(ch.isspace() for ch in value):
        shape.append("with spaces or line breaks")
    described = ", ".join([f"{len(value)} characters", *shape])
    return f"({described}; not shown: a secret pasted into the wrong field must not reach the logs)"


def load_connection_config(conn_id: str) -> HveConnectionConfig:
    """
    Fetch the Airflow connection ``conn_id`` and validate it (what :attr:`HveHook.config` does, without a hook).

    :raises HveConfigError: the connection is not defined, or a field is wrong.
    """
    from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise HveConfigError(
            f"Connection {conn_id!r} is not defined. Create it (type 'Microsoft 365 High Volume Email') in the "
            f"Airflow UI, or set AIRFLOW_CONN_{conn_id.upper()}."
        ) from None
    return HveConnectionConfig.from_connection(conn, conn_id)
