"""The HTTPS side of the sandbox: an Entra-shaped OpenID discovery and token endpoint.

Only what MSAL touches is served: tenant discovery, user realm discovery (ROPC), the
token endpoint and the JWKS. Errors use Entra's JSON shape, with trace and correlation
ids, so the client's error translation is tested against the real format.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from airflow_provider_hve.sandbox.grants import EntraError, TokenGrants
from airflow_provider_hve.sandbox.introspection import Introspection, introspect
from airflow_provider_hve.sandbox.pki import SandboxPki
from airflow_provider_hve.sandbox.records import RecordList, TokenRequest

_DISCOVERY = re.compile(r"^/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration$")
_TOKEN = re.compile(r"^/(?P<tenant>[^/]+)/oauth2/v2\.0/token$")
_USERREALM = re.compile(r"^/common/userrealm/(?P<user>[^/?]+)$")
_JWKS = re.compile(r"^/(?P<tenant>[^/]+)/discovery/v2\.0/keys$")
# Not an Entra endpoint: RFC 7662 introspection for a real MTA in front of the sandbox (see .introspection).
_INTROSPECT = re.compile(r"^/(?P<tenant>[^/]+)/sandbox/introspect$")


def _timestamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


class _QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTPS server that does not print a traceback when a client drops the handshake."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        # Clients that do not trust the sandbox CA abort the TLS handshake: that is a test scenario,
        # not a server fault.
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)


class EntraServer:
    """Serve the Entra endpoints over HTTPS on 127.0.0.1 from a background thread.

    :param grants: decides token requests
    :param pki: provides the server certificate
    :param port: the port to bind (pick a free one first)
    :param latency_ms: emulated round-trip time: every response waits this long before it is sent
        (settable while serving)
    """

    def __init__(self, grants: TokenGrants, pki: SandboxPki, port: int, *, latency_ms: float = 0) -> None:
        self.grants = grants
        self.port = port
        self.latency_ms = latency_ms
        self.requests: RecordList[TokenRequest] = RecordList()
        self.introspections: RecordList[Introspection] = RecordList()
        self._throttle: list[tuple[int, int | None]] = []  # (status, Retry-After) for the next POSTs
        self._throttle_lock = threading.Lock()
        self._redirects: list[tuple[int, str]] = []  # (status, Location) for the next POSTs
        handler = type("_BoundHandler", (_EntraRequestHandler,), {"entra": self})
        self._httpd = _QuietHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        context = pki.server_ssl_context()
        # Handshake in the request thread, not in accept(): a silent client must not block others.
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None

    @property
    def authority_host(self) -> str:
        """Return ``https://localhost:PORT``, the authority host clients configure."""
        return f"https://localhost:{self.port}"

    @property
    def tenant_id(self) -> str:
        """Return the one tenant served."""
        return self.grants.directory.tenant_id

    def token_endpoint(self, tenant: str) -> str:
        """Return the token endpoint URL of a tenant (also the audience of client assertions)."""
        return f"{self.authority_host}/{tenant}/oauth2/v2.0/token"

    def introspection_endpoint(self, tenant: str, host: str = "localhost") -> str:
        """Return the URL of the sandbox's token introspection (RFC 7662; no Entra endpoint, see .introspection).

        :param host: ``localhost`` or ``127.0.0.1`` (both are in the certificate)
        """
        return f"https://{host}:{self.port}/{tenant}/sandbox/introspect"

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="hve-sandbox-entra",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        """Build the discovery document for the tenant."""
        base = f"{self.authority_host}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.authority_host}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "oid", "tid", "upn"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "localhost",
            "cloud_graph_host_name": "localhost",
            "msgraph_host": "localhost",
        }

    def throttle(self, count: int = 1, *, status: int = 429, retry_after: int | None = 1) -> None:
        """Answer the next ``count`` token requests with ``status`` (429 throttled, 503 unavailable).

        :param retry_after: the ``Retry-After`` header in seconds, or ``None`` to send none.
        """
        with self._throttle_lock:
            self._throttle = [(status, retry_after)] * count

    def redirect(self, location: str, count: int = 1, *, status: int = 307) -> None:
        """Answer the next ``count`` token requests with a redirect to ``location`` (307 keeps the POST body).

        A client that follows it sends its credentials to ``location``; one that does not stops here.
        """
        with self._throttle_lock:
            self._redirects = [(status, location)] * count

    def reset_faults(self) -> None:
        """Stop throttling and redirecting."""
        with self._throttle_lock:
            self._throttle = []
            self._redirects = []

    def next_redirect(self) -> tuple[int, str] | None:
        """Take the next pending redirect, if any."""
        with self._throttle_lock:
            return self._redirects.pop(0) if self._redirects else None

    def next_throttle(self) -> tuple[int, int | None] | None:
        """Take the next pending throttling answer, if any."""
        with self._throttle_lock:
            return self._throttle.pop(0) if self._throttle else None

    def error_body(self, error: EntraError, correlation_id: str | None) -> dict[str, Any]:
        """Render an error exactly in Entra's JSON shape."""
        trace_id = str(uuid.uuid4())
        correlation_id = correlation_id or str(uuid.uuid4())
        timestamp = _timestamp()
        return {
            "error": error.error,
            "error_description": (
                f"AADSTS{error.code}: {error.message} Trace ID: {trace_id} "
                f"Correlation ID: {correlation_id} Timestamp: {timestamp}"
            ),
            "error_codes": [error.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.authority_host}/error?code={error.code}",
        }

    def unknown_tenant(self, tenant: str) -> EntraError:
        """Return the error for a tenant the sandbox does not serve."""
        return EntraError(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
            "signing into the correct cloud. Check with your subscription administrator, this may "
            "happen if there are no active subscriptions for the tenant.",
        )


class _EntraRequestHandler(BaseHTTPRequestHandler):
    """Route one HTTP request; the bound subclass carries the :class:`EntraServer`."""

    entra: EntraServer
    protocol_version = "HTTP/1.1"
    server_version = "hve-sandbox-entra"

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are recorded in EntraServer.requests; stderr noise would only hide test output.
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        record = self._record("GET", path, None, {})
        if match := _DISCOVERY.match(path):
            record.tenant = tenant = match["tenant"]
            if tenant.lower() not in (self.entra.tenant_id, "common", "organizations"):
                self._error(record, self.entra.unknown_tenant(tenant))
                return
            self._json(record, 200, self.entra.openid_configuration(self.entra.tenant_id))
        elif match := _USERREALM.match(path):
            domain = match["user"].rpartition("@")[2]
            self._json(
                record,
                200,
                {
                    "ver": "1.0",
                    "account_type": "Managed",
                    "domain_name": domain,
                    "cloud_instance_name": "localhost",
                    "cloud_audience_urn": "urn:federation:MicrosoftOnline",
                },
            )
        elif _JWKS.match(path):
            self._json(record, 200, self.entra.grants.issuer.jwks())
        else:
            self._json(record, 404, {"error": "not_found", "error_description": f"No route for {path}."})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", errors="replace")
        form = dict(parse_qsl(raw, keep_blank_values=True))
        if match := _INTROSPECT.match(path):
            self._introspect(match["tenant"], form.get("token", ""))
            return
        record = self._record("POST", path, form.get("grant_type"), form)
        match = _TOKEN.match(path)
        if not match:
            self._json(record, 404, {"error": "not_found", "error_description": f"No route for {path}."})
            return
        record.tenant = tenant = match["tenant"]
        redirect = self.entra.next_redirect()
        if redirect is not None:
            record.status, location = redirect
            self.send_response(record.status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        throttled = self.entra.next_throttle()
        if throttled is not None:
            status, retry_after = throttled
            # Entra's answers when it sheds load: AADSTS50196 (throttled) / 90033 (temporarily unavailable).
            code, error = (50196, "invalid_request") if status == 429 else (90033, "temporarily_unavailable")
            message = "The server is busy; retry later." if status != 429 else "Too many requests; slow down."
            self._retry_after = retry_after
            self._error(record, EntraError(status, error, code, message))
            return
        try:
            if tenant.lower() != self.entra.tenant_id:
                raise self.entra.unknown_tenant(tenant)
            body = self.entra.grants.handle(form, self.entra.token_endpoint(tenant))
        except EntraError as error:
            self._error(record, error)
            return
        self._json(record, 200, body)

    def _introspect(self, tenant: str, token: str) -> None:
        # Kept apart from `requests`: tests count token requests there, and these are the MTA's, not the client's.
        if tenant.lower() != self.entra.tenant_id:
            verdict = Introspection(False, None, f"unknown tenant {tenant}")
        else:
            verdict = introspect(self.entra.grants.directory, self.entra.grants.issuer, token)
        self.entra.introspections.append(verdict)
        self._write_json(200, verdict.body(), None)

    def _record(self, method: str, path: str, grant_type: str | None, form: dict[str, str]) -> TokenRequest:
        record = TokenRequest(
            method=method,
            path=path,
            tenant=None,
            grant_type=grant_type,
            form=form,
            client_request_id=self.headers.get("client-request-id"),
        )
        self.entra.requests.append(record)
        return record

    def _error(self, record: TokenRequest, error: EntraError) -> None:
        record.error, record.error_code = error.error, error.code
        self._json(record, error.status, self.entra.error_body(error, record.client_request_id))

    def _json(self, record: TokenRequest, status: int, body: dict[str, Any]) -> None:
        record.status = status
        self._write_json(status, body, record.client_request_id)

    def _write_json(self, status: int, body: dict[str, Any], client_request_id: str | None) -> None:
        payload = json.dumps(body).encode()
        latency = self.entra.latency_ms
        if latency > 0:
            # One request, one response: the client always waits, so every answer pays one round trip.
            # Each request has its own thread, so concurrent clients are not queued behind the sleep.
            time.sleep(latency / 1000)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Content-Length", str(len(payload)))
        if client_request_id:
            self.send_header("client-request-id", client_request_id)
        retry_after = getattr(self, "_retry_after", None)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(payload)
