"""Entra ID access tokens for HVE, through MSAL.

* One MSAL application per credential per process (:func:`token_provider`), so every hook, task and thread
  in a worker shares MSAL's in-memory token cache: N sends cost one token request.
* HVE refuses tokens that expire within about 10 minutes (``501 5.5.127``) while MSAL hands back cached
  tokens until 5 minutes before expiry, so a token with less than :data:`REFRESH_MARGIN` left is evicted
  from MSAL's cache and a fresh one is requested.
* Every token is registered with Airflow's secret masker before it is returned.
* Entra's error answers become :class:`~airflow_provider_hve.exceptions.HveAuthError` with the likely
  cause, the fix and the correlation id (see :mod:`airflow_provider_hve.diagnostics`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_hve import cancellation
from airflow_provider_hve.connection import AuthMode, HveConnectionConfig
from airflow_provider_hve.diagnostics import describe_entra_error, entra_error_from_text
from airflow_provider_hve.exceptions import HveAuthError, HveCancelledError, HveConfigError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

REFRESH_MARGIN = 12 * 60
"""Seconds of validity a token must still have to be used; HVE refuses tokens within ~10 minutes of expiry."""
ENTRA_RETRIES = 3
"""How many times a throttled (429) or unavailable (5xx) token request is retried."""
ENTRA_MAX_WAIT = 30.0
"""Longest Retry-After honoured (seconds); a longer one fails at once with the time to wait."""
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class AccessToken:
    """A bearer token for HVE; its value never appears in ``repr``."""

    value: str = field(repr=False)
    expires_on: float
    source: str
    """``identity_provider`` when Entra was asked, ``cache`` when MSAL's cache answered."""

    @property
    def expires_in(self) -> float:
        return self.expires_on - time.time()


class TokenProvider:
    """
    Get tokens for one credential; shared by every hook that uses the same credential.

    Use :func:`token_provider` to get the shared instance rather than building one.

    :param config: the validated connection.
    """

    def __init__(self, config: HveConnectionConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._app: Any = None
        self._http: Any = None
        self.requests_sent = 0
        """How many times Entra was asked for a token (cache hits excluded)."""

    def get_token(self, *, force_refresh: bool = False) -> AccessToken:
        """
        Return a token valid for at least :data:`REFRESH_MARGIN` seconds if Entra grants one.

        :param force_refresh: ignore cached tokens (used when HVE says the token expires soon).
        :raises HveAuthError: Entra refused; the message says why and how to fix it.
        """
        with self._lock:
            if force_refresh:
                self._evict_access_tokens()
            token = self._acquire()
            if token.source == "cache" and token.expires_in < REFRESH_MARGIN:
                log.info(
                    "HVE token for connection %r expires in %d s, inside the %d s margin HVE enforces; "
                    "requesting a new one.",
                    self.config.conn_id,
                    token.expires_in,
                    REFRESH_MARGIN,
                )
                self._evict_access_tokens()
                token = self._acquire()
            if token.expires_in < REFRESH_MARGIN:
                log.warning(
                    "Entra issued a token for connection %r that expires in %d s; HVE may refuse it "
                    "(501 5.5.127). Check this worker's clock and any token lifetime policy.",
                    self.config.conn_id,
                    token.expires_in,
                )
            return token

    # -- MSAL ------------------------------------------------------------------------------------------

    def _application(self) -> Any:
        if self._app is None:
            self._http = _entra_session(self.config)
            self._app = _build_application(self.config, self._http)
        return self._app

    def _acquire(self) -> AccessToken:
        """
        Get a token, honouring Entra's Retry-After when it throttles (429) or is unavailable (5xx).

        In a cancelled send (:mod:`~airflow_provider_hve.cancellation`) the wait ends at once and
        :class:`~airflow_provider_hve.exceptions.HveCancelledError` is raised: no further request.
        """
        for attempt in range(ENTRA_RETRIES + 1):
            if self._http is not None:
                self._http.last_status = None
            try:
                return self._acquire_once()
            except HveAuthError as exc:
                status = getattr(self._http, "last_status", None)
                if status not in _RETRYABLE_STATUS:
                    raise
                wait = _retry_after(getattr(self._http, "last_retry_after", None), attempt)
                if attempt == ENTRA_RETRIES or wait > ENTRA_MAX_WAIT:
                    raise HveAuthError(
                        f"Entra ID answered HTTP {status} ({'throttled' if status == 429 else 'unavailable'}) "
                        f"{attempt + 1} time(s) for connection {self.config.conn_id!r}; it asks to wait {wait:.0f} s. "
                        f"Retry later, or spread the load (fewer parallel tasks on this credential).\n{exc}",
                        code=exc.code,
                        correlation_id=exc.correlation_id,
                        trace_id=exc.trace_id,
                        temporary=True,
                    ) from exc
                log.warning(
                    "Entra ID answered HTTP %s for connection %r; retrying in %.1f s (%d/%d).",
                    status,
                    self.config.conn_id,
                    wait,
                    attempt + 1,
                    ENTRA_RETRIES,
                )
                if cancellation.back_off(wait, time.sleep):
                    raise HveCancelledError(
                        f"Getting a token for connection {self.config.conn_id!r} was cancelled "
                        f"({getattr(cancellation.current(), 'reason', '') or 'cancelled'}) while waiting for Entra ID "
                        f"(HTTP {status}): no further request, nothing was sent."
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _acquire_once(self) -> AccessToken:
        scopes = list(self.config.scopes)
        try:
            # Building the MSAL app runs tenant discovery: an unknown tenant fails here.
            app = self._application()
            if self.config.auth_mode is AuthMode.PASSWORD:
                result = self._acquire_delegated(app, scopes)
            else:
                result = app.acquire_token_for_client(scopes=scopes)
        except (HveAuthError, HveConfigError):
            raise
        except Exception as exc:
            raise _translate_exception(self.config, exc) from exc
        if not result or "access_token" not in result:
            raise describe_entra_error(self.config, result or {})
        source = result.get("token_source", "identity_provider")
        if source != "cache":
            self.requests_sent += 1
        token = AccessToken(
            value=result["access_token"],
            expires_on=time.time() + float(result.get("expires_in", 0)),
            source=source,
        )
        mask(token.value)
        return token

    def _acquire_delegated(self, app: Any, scopes: list[str]) -> dict[str, Any] | None:
        accounts = app.get_accounts(username=self.config.account)
        if accounts:
            # Cached token, or a silent refresh with the refresh token: no password on the wire.
            result = app.acquire_token_silent_with_error(scopes, account=accounts[0])
            if result and "access_token" in result:
                return result
        return app.acquire_token_by_username_password(self.config.account, self.config.password, scopes=scopes)

    def _evict_access_tokens(self) -> None:
        app = self._application()
        cache = app.token_cache
        for item in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(item)


_PROVIDERS: dict[tuple[Any, ...], TokenProvider] = {}
_PROVIDERS_LOCK = threading.Lock()


def token_provider(config: HveConnectionConfig) -> TokenProvider:
    """Return the process-wide :class:`TokenProvider` for this credential, creating it once."""
    key = _credential_key(config)
    with _PROVIDERS_LOCK:
        provider = _PROVIDERS.get(key)
        if provider is None:
            provider = _PROVIDERS[key] = TokenProvider(config)
        return provider


def clear_token_providers() -> None:
    """Forget every MSAL application and cached token of this process (tests, credential rotation)."""
    with _PROVIDERS_LOCK:
        _PROVIDERS.clear()


def _credential_key(config: HveConnectionConfig) -> tuple[Any, ...]:
    # The secret is part of the identity of a credential (a rotated secret needs a new MSAL app, since
    # MSAL caches a 400 for 60 s per app), but only as a digest.
    digest = hashlib.sha256((config.password or "").encode()).hexdigest()
    return (
        config.auth_mode,
        config.authority,
        config.client_id,
        config.account if config.auth_mode is AuthMode.PASSWORD else None,
        config.scopes,
        config.certificate_path,
        # The content, not the path: a certificate replaced on disk (renewal) gets a new MSAL application.
        _file_digest(config.certificate_path),
        config.certificate_thumbprint,
        config.send_certificate_chain,
        config.federated_token_file,
        config.ca_bundle,
        config.timeout,
        digest,
    )


def _file_digest(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None  # reported with the fix when the credential is built


def _retry_after(header: str | None, attempt: int) -> float:
    # MSAL keeps answering from its throttle cache until Retry-After has passed (5 s when absent): wait at
    # least that, plus a little jitter so parallel tasks do not come back in step.
    import random

    try:
        seconds = float(header) if header is not None else 5.0 * (attempt + 1)
    except ValueError:
        seconds = 5.0 * (attempt + 1)
    return seconds + random.uniform(0.05, 0.25)


def _build_application(config: HveConnectionConfig, http_client: Any) -> Any:
    import msal

    common: dict[str, Any] = {
        "authority": config.authority,
        "http_client": http_client,
        # Microsoft's own Entra hosts keep MSAL's authority validation; a custom host (the sandbox, a proxy:
        # allowed only by extra 'allow_custom_authority') must skip it or MSAL asks login.microsoftonline.com.
        "instance_discovery": not config.allow_custom_authority,
        "timeout": config.timeout,
    }
    if config.auth_mode is AuthMode.PASSWORD:
        return msal.PublicClientApplication(config.client_id, **common)
    return msal.ConfidentialClientApplication(config.client_id, client_credential=_client_credential(config), **common)


def _client_credential(config: HveConnectionConfig) -> Any:
    if config.auth_mode is AuthMode.CLIENT_SECRET:
        return config.password
    if config.auth_mode is AuthMode.WORKLOAD_IDENTITY:
        path = config.federated_token_file
        assert path is not None

        def read_federated_token() -> str:
            # Read on every token request: the kubelet rotates the projected token file.
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()

        return {"client_assertion": read_federated_token}
    return _certificate_credential(config)


def _certificate_credential(config: HveConnectionConfig) -> dict[str, Any]:
    path = config.certificate_path
    assert path is not None
    # The path is not quoted: whatever was pasted into the field stays out of the logs.
    where = f"Connection {config.conn_id!r}: the file in extra 'certificate_path'"
    with open(path, "rb") as handle:
        data = handle.read()
    if path.lower().endswith((".pfx", ".p12")):
        _check_pfx(config, where, data)
        credential: dict[str, Any] = {"private_key_pfx_path": path}
        if config.password:
            credential["passphrase"] = config.password
        if config.send_certificate_chain:
            credential["public_certificate"] = True
        return credential
    if b"-----BEGIN" not in data:
        raise HveConfigError(
            f"{where} is not a PEM file: it holds binary (DER) data, as a .cer/.der export does. Convert it "
            f"(openssl x509 -inform der -in cert.cer -out cert.pem), add the PEM private key to the same file, "
            f"or use the .pfx file."
        )
    pem = data.decode("ascii", errors="replace")
    certificates = _pem_blocks(pem, "CERTIFICATE")
    keys = [block for block in _pem_blocks(pem, None) if "PRIVATE KEY" in block.splitlines()[0]]
    if not keys:
        raise HveConfigError(
            f"{where} holds no PEM private key, only {len(certificates)} certificate(s). It must contain the "
            f"private key and the certificate uploaded to the app registration (a .cer downloaded from Entra "
            f"has no key: use the key the certificate was created with)."
        )
    _check_private_key(config, where, keys[0])
    credential = {"private_key": keys[0]}
    if config.password:
        credential["passphrase"] = config.password
    if config.certificate_thumbprint:
        credential["thumbprint"] = config.certificate_thumbprint
    elif not certificates:
        raise HveConfigError(f"{where} holds no certificate; add it to the file or set extra 'certificate_thumbprint'.")
    if certificates and (config.send_certificate_chain or not config.certificate_thumbprint):
        # MSAL derives the SHA-256 thumbprint from the certificate (and sends it as x5c).
        credential["public_certificate"] = certificates[0]
    return credential


def _check_private_key(config: HveConnectionConfig, where: str, key_pem: str) -> None:
    """Load the key as MSAL will, and turn cryptography's refusals into a diagnosis."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    passphrase = config.password.encode() if config.password else None
    try:
        load_pem_private_key(key_pem.encode(), passphrase)
    except TypeError:
        if passphrase is None:
            raise HveConfigError(
                f"{where}: the private key is encrypted and the connection's Password field is empty. Put the "
                f"key's passphrase in the Password field."
            ) from None
        raise HveConfigError(
            f"{where}: the private key is not encrypted but the connection's Password field holds a passphrase. "
            f"Clear the Password field."
        ) from None
    except ValueError:
        raise HveConfigError(
            f"{where}: the passphrase in the connection's Password field does not decrypt the private key (wrong "
            f"passphrase, or a damaged key). Put the key's passphrase in the Password field."
        ) from None


def _check_pfx(config: HveConnectionConfig, where: str, data: bytes) -> None:
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        key, certificate, _ = pkcs12.load_key_and_certificates(
            data, config.password.encode() if config.password else None
        )
    except ValueError:
        raise HveConfigError(
            f"{where}: the .pfx cannot be opened with the passphrase in the connection's Password field (wrong or "
            f"missing passphrase, or not a PKCS#12 file)."
        ) from None
    if key is None:
        raise HveConfigError(f"{where}: the .pfx holds no private key. Export it again with the private key included.")
    if certificate is None:
        raise HveConfigError(f"{where}: the .pfx holds no certificate. Export it again with the certificate.")


def _pem_blocks(pem: str, label: str | None) -> list[str]:
    blocks: list[str] = []
    lines: list[str] = []
    for line in pem.splitlines():
        if line.startswith("-----BEGIN"):
            lines = [line]
        elif line.startswith("-----END") and lines:
            lines.append(line)
            if label is None or lines[0] == f"-----BEGIN {label}-----":
                blocks.append("\n".join(lines) + "\n")
            lines = []
        elif lines:
            lines.append(line)
    return blocks


def _entra_session(config: HveConnectionConfig) -> requests.Session:
    import requests

    environment_bundle(config.conn_id)
    verify: str | bool = trust_store_file(config.ca_bundle) if config.ca_bundle else True
    authority = urlsplit(config.authority_host)

    class EntraSession(requests.Session):
        """A requests session that keeps our trust store, never follows a redirect, and works around an MSAL
        URL quirk."""

        last_status: int | None = None
        last_retry_after: str | None = None

        def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            # A per-request verify wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE; a session-level one
            # does not (requests merges the environment over it).
            if verify is not True:
                kwargs.setdefault("verify", verify)
            kwargs.setdefault("timeout", config.timeout)
            # A redirect would make requests send the form (client secret, password, assertion) again to
            # wherever the Location header points, even over plain http: never follow one.
            kwargs["allow_redirects"] = False
            target = url.decode() if isinstance(url, bytes) else url
            response = super().request(method, _restore_port(str(target), authority), *args, **kwargs)
            if response.is_redirect or 300 <= response.status_code < 400:
                location = urlsplit(response.headers.get("Location", ""))
                raise HveAuthError(
                    f"The Entra endpoint {config.authority_host} (connection {config.conn_id!r}) answered HTTP "
                    f"{response.status_code}, a redirect to {location.scheme or '?'}://{location.hostname or '?'}. "
                    f"Redirects are never followed on Entra calls, so no credential was sent there. Point extra "
                    f"'authority_host' at the Entra host itself, not at something that redirects."
                )
            # MSAL does not pass the HTTP status or Retry-After on: keep them for the retry decision.
            self.last_status = response.status_code
            self.last_retry_after = response.headers.get("Retry-After")
            return response

    return EntraSession()


def _restore_port(url: str, authority: Any) -> str:
    # MSAL's user realm discovery (password flow) builds https://<hostname>/common/userrealm/... and
    # drops the authority's port; put it back when the authority has one.
    if authority.port is None:
        return url
    parts = urlsplit(url)
    if parts.hostname == authority.hostname and parts.port is None and "/userrealm/" in parts.path:
        return parts._replace(netloc=authority.netloc).geturl()
    return url


_TRUST_STORES: dict[tuple[str, int, int], str] = {}


def environment_bundle(conn_id: str) -> str | None:
    """
    Return the CA file requests takes from ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, checked.

    requests trusts that file instead of its own store for every HTTPS call: one that is missing or holds no
    certificate breaks every token request, with an error that names neither the variable nor the fix.
    """
    import ssl

    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        path = os.environ.get(variable)
        if not path:
            continue
        problem = None
        if os.path.isdir(path):
            return path
        if not os.path.isfile(path):
            problem = "which is not a file on this worker"
        else:
            try:
                ssl.create_default_context(cafile=path)
            except (ssl.SSLError, OSError, ValueError):
                problem = "which holds no PEM CA certificate"
        if problem:
            raise HveConfigError(
                f"Connection {conn_id!r}: the environment variable {variable} points to {path!r}, "
                f"{problem}; requests uses it as the only trust store for Entra. Fix or unset {variable} on this "
                "worker (to add a private CA, use extra 'ca_bundle')."
            )
        return path
    return None


def trust_store_file(ca_bundle: str) -> str:
    """
    Return a PEM file trusting the default CAs plus ``ca_bundle``, for requests.

    requests trusts only the one file it is given, while ``ca_bundle`` adds to the trusted CAs. The
    defaults are what requests would use otherwise: ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, certifi.

    The file lives in a folder of this user's (``<tmp>/hve-ca-<uid>``, mode 0700) and is named by the
    SHA-256 of its content: every process that combines the same CAs shares one file, which is never
    removed, so nothing is left behind however a process ends (Airflow's forked task runners leave through
    ``os._exit``, where ``atexit`` never runs). A folder that is not this user's, or that others may write,
    is not used (a private temporary file stands in, with a warning), and a file whose content is not what
    it is named for is replaced, so no other local user can plant a CA.
    """
    stat = os.stat(ca_bundle)
    key = (ca_bundle, stat.st_mtime_ns, stat.st_size)  # a replaced bundle (new CA) is read again
    if key in _TRUST_STORES and os.path.exists(_TRUST_STORES[key]):
        return _TRUST_STORES[key]
    import certifi

    default = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    if os.path.isdir(default):
        default = certifi.where()  # a c_rehash directory cannot be concatenated; requests' own store stands in
    parts = []
    for path in (default, ca_bundle):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as handle:
                parts.append(handle.read().strip() + "\n")
    content = "".join(parts).encode("utf-8")
    folder = _trust_store_folder()
    if folder is None:
        combined = _private_trust_store(content)
    else:
        combined = os.path.join(folder, f"{hashlib.sha256(content).hexdigest()}.pem")
        if not _holds(combined, content):
            try:
                _write_atomically(folder, combined, content)
            except OSError as exc:  # a full disk, a read-only folder: the private file is tried instead
                _warn_trust_store_folder(folder, f"cannot be written ({exc.strerror or exc})")
                combined = _private_trust_store(content)
    _TRUST_STORES[key] = combined
    return combined


_TRUST_STORE_WARNED: set[str] = set()
_STALE_TEMPORARY_SECONDS = 3600


def _trust_store_folder() -> str | None:
    """Return this user's folder for combined trust stores, created 0700; None when it cannot be trusted."""
    import stat as stat_module
    import tempfile

    if not hasattr(os, "geteuid"):
        return None
    uid = os.geteuid()  # files are made with the effective uid
    parent = tempfile.gettempdir()
    folder = os.path.join(parent, f"hve-ca-{uid}")
    with contextlib.suppress(OSError):  # there already, or cannot be made: the checks below say which
        os.mkdir(folder, 0o700)  # the umask can only narrow the mode
    try:
        above = os.stat(parent)
        info = os.lstat(folder)  # a symlink is not followed: it is refused below
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    else:
        if above.st_mode & 0o002 and not above.st_mode & stat_module.S_ISVTX:
            problem = f"is in {parent}, which anyone may write and which has no sticky bit (others could swap it)"
        elif not stat_module.S_ISDIR(info.st_mode):
            problem = "is not a directory (a symlink or a file)"
        elif info.st_uid != uid:
            problem = f"belongs to uid {info.st_uid}, not to this user (uid {uid})"
        elif stat_module.S_IMODE(info.st_mode) != 0o700:
            problem = f"has mode {stat_module.S_IMODE(info.st_mode):04o}, not 0700"
        else:
            return folder
    _warn_trust_store_folder(folder, problem)
    return None


def _warn_trust_store_folder(folder: str, problem: str) -> None:
    """Say once per process why the shared trust-store folder is not used."""
    if folder not in _TRUST_STORE_WARNED:
        _TRUST_STORE_WARNED.add(folder)
        log.warning(
            "The folder %s for the combined CA file given to requests (extra 'ca_bundle') %s, so it is not used: "
            "each process writes a private temporary file instead, removed only when the process exits normally. "
            "Remove that folder (it is made again, mode 0700), or make it this user's with mode 0700.",
            folder,
            problem,
        )


def _holds(path: str, content: bytes) -> bool:
    """Whether ``path`` is a regular file of this user's, not writable by others, holding exactly ``content``."""
    import stat as stat_module

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat_module.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return False
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(len(content) + 1) == content
    except OSError:
        return False
    finally:
        os.close(fd)


def _write_atomically(folder: str, path: str, content: bytes) -> None:
    """Write ``content`` to a new 0600 file in ``folder`` and move it onto ``path`` (readers never see half)."""
    import tempfile

    _remove_stale_temporaries(folder)
    fd, temporary = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise


def _remove_stale_temporaries(folder: str) -> None:
    """Remove temporary files left by a process killed between writing and moving one (an hour old or more)."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat(follow_symlinks=False).st_mtime > _STALE_TEMPORARY_SECONDS:
                        os.remove(entry.path)


def _private_trust_store(content: bytes) -> str:
    """The fallback: a private temporary file, removed at a normal exit (``os._exit`` leaves it)."""
    import atexit
    import tempfile

    fd, combined = tempfile.mkstemp(prefix="hve-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    atexit.register(_remove_quietly, combined)
    return combined


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _translate_exception(config: HveConnectionConfig, exc: Exception) -> HveAuthError:
    import requests

    where = f"{config.authority_host} (connection {config.conn_id!r})"
    if isinstance(exc, requests.exceptions.SSLError):
        return HveAuthError(
            f"The TLS certificate of the Entra token endpoint {where} is not trusted. If a proxy or a "
            f"private CA sits in between, put its CA certificate in a PEM file and set extra 'ca_bundle'."
        )
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return HveAuthError(
            f"Cannot reach the Entra token endpoint {where}: {type(exc).__name__}. Check extra "
            f"'authority_host', DNS, and that this worker may open HTTPS connections to it (proxy settings "
            f"come from HTTPS_PROXY).",
            temporary=True,
        )
    text = str(exc)
    # MSAL re-raises a failed tenant discovery as a generic ValueError; Entra's answer is in the chain.
    for link in _exception_chain(exc):
        parsed = entra_error_from_text(str(link))
        if parsed is not None:
            return describe_entra_error(config, parsed)
    return HveAuthError(
        f"Getting a token from {where} failed: {type(exc).__name__}: {_first_line(text)}. Check extras "
        f"'tenant_id' and 'authority_host'."
    )


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


SDK_LOCK = threading.RLock()
"""Held around every call of this provider that may go through the task SDK's supervisor channel (masking a
secret, a Variable): on Airflow 3.0 and 3.1 that channel has no lock of its own, and the mail merge's sessions
and its delivery-log writer are threads of one task."""


def mask(value: str) -> None:
    """Register ``value`` with Airflow's secret masker so it never shows in task logs."""
    from airflow.providers.common.compat.sdk import mask_secret

    with SDK_LOCK:
        mask_secret(value)
