"""Security hardening (issue 11): hostile inputs get a clear refusal before any work, secrets stay home.

Each case here failed before the fix: it either reached the network, echoed the value back, or did the
expensive work first. Assertions are on what the sandbox (or a recording server) received.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hve.connection import ENTRA_HOSTS, HveConnectionConfig
from airflow_provider_hve.exceptions import HveAuthError, HveConfigError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox

ConnFactory = Callable[..., str]
TENANT = "8f2c1c9e-5a0b-4c4e-9d7a-5e1d0c0ffee5"
CLIENT = "3b7e4f2a-9c1d-4e8b-a6f5-0d2c4b6a8e10"
SECRET = "Q8Q~k3yV4lue.that_must-NEVER~leak0123456"


def config(extra: dict[str, Any] | None = None, **fields: Any) -> HveConnectionConfig:
    kwargs: dict[str, Any] = {"login": "reports@contoso.com", "password": SECRET}
    kwargs.update(fields)
    return HveConnectionConfig.from_fields(
        "hve_sec", extra={"tenant_id": TENANT, "client_id": CLIENT, **(extra or {})}, **kwargs
    )


# -- Template data is data: MailMerge without an environment is sandboxed ---------------------------------


def test_mail_merge_without_an_environment_is_sandboxed(hve_connection: ConnFactory, sandbox: HveSandbox) -> None:
    from airflow_provider_hve.bulk import MailMerge

    hook = HveHook(hve_conn_id=hve_connection())
    # The unsandboxed environment walks from a string to Python's internals (and from there to os.system).
    hostile = "{{ ''.__class__.__mro__[1].__subclasses__() | length }}"
    merge = MailMerge(hook, subject="Report", text_content=hostile, sessions=1)
    with pytest.raises(HveConfigError, match="SecurityError"):
        merge.run([{"email": "team@contoso.example"}])
    assert not sandbox.messages


# -- Where the secret may go --------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]]

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((self.command, self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _record

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A plain-http server that records every request: the target of a hostile redirect."""
    received: list[tuple[str, str, bytes]] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("status", [307, 308, 302])
def test_a_redirect_from_the_token_endpoint_is_not_followed(
    status: int,
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    recorder: tuple[str, list[Any]],
    token_posts: Callable[[], list[Any]],
) -> None:
    target, received = recorder
    sandbox.entra.redirect(f"{target}/steal", status=status)
    with pytest.raises(HveAuthError) as info:
        HveHook(hve_conn_id=hve_connection()).get_access_token()
    message = str(info.value)
    assert f"HTTP {status}" in message and "never followed" in message and "127.0.0.1" in message
    assert received == [], "the redirect target received a request (and the client secret with it)"
    assert len(token_posts()) == 1 and token_posts()[0].status == status
    assert sandbox.client_secret not in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("https://login.microsoftonlime.com", "Did you mean login.microsoftonline.com", id="typo"),
        pytest.param("https://login.microsoftonline.com.evil.example", "not a Microsoft Entra host", id="suffix"),
        pytest.param("https://evil.example", "allow_custom_authority", id="foreign"),
        pytest.param("https://login.microsoftonline.com@evil.example", "user info", id="userinfo"),
        pytest.param(f"https://user:{SECRET}@login.microsoftonline.com", "user info", id="userinfo-password"),
        pytest.param("https://login.microsoftonline.com:8443", "drop the port", id="entra-other-port"),
        pytest.param("https://login.microsoftonline.com:99999", "invalid port", id="port-out-of-range"),
        pytest.param("https://login.microsoftonline.com:0", "invalid port", id="port-zero"),
        pytest.param("https://login.microsoftonline.com:abc", "invalid port", id="port-text"),
        pytest.param("https://", "no valid host name", id="no-host"),
    ],
)
def test_authority_host_accepts_only_microsoft_hosts(value: str, problem: str) -> None:
    with pytest.raises(HveConfigError) as info:
        config({"authority_host": value})
    message = str(info.value)
    assert "'authority_host'" in message and problem in message
    assert SECRET not in message and "user:" not in message


def test_user_info_is_refused_even_with_the_opt_in() -> None:
    with pytest.raises(HveConfigError, match="user info"):
        config({"authority_host": "https://login.microsoftonline.com@evil.example", "allow_custom_authority": True})


@pytest.mark.parametrize("host", sorted(ENTRA_HOSTS))
def test_every_microsoft_cloud_host_is_accepted_with_validation_on(host: str) -> None:
    accepted = config({"authority_host": f"https://{host.upper()}/"})
    assert accepted.authority_host == f"https://{host}"
    assert accepted.allow_custom_authority is False  # MSAL's instance discovery stays on


def test_entra_hosts_cover_msal_known_hosts() -> None:
    from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

    retired = {"login.microsoftonline.de"}
    assert set(WELL_KNOWN_AUTHORITY_HOSTS) - retired == ENTRA_HOSTS


def test_a_custom_authority_needs_the_opt_in_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="airflow_provider_hve.connection"):
        accepted = config({"authority_host": "https://proxy.corp.example:8443", "allow_custom_authority": "true"})
    assert accepted.authority_host == "https://proxy.corp.example:8443"
    assert accepted.allow_custom_authority is True
    assert "proxy.corp.example is not a Microsoft Entra host" in caplog.text


@pytest.mark.parametrize(
    ("fields", "extra", "expected"),
    [
        pytest.param({"host": "smtp.example.net"}, {}, "SMTP host smtp.example.net is not a Microsoft host", id="smtp"),
        pytest.param(
            {}, {"scope": "https://graph.example.net/.default"}, "scope resource graph.example.net", id="scope"
        ),
    ],
)
def test_non_microsoft_smtp_host_or_scope_is_logged(
    fields: dict[str, Any], extra: dict[str, Any], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="airflow_provider_hve.connection"):
        config(extra, **fields)
    assert expected in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="airflow_provider_hve.connection"):
        config()
    assert not caplog.text


# A secret pasted into the wrong field: the error names the field and describes the value, never shows it.
WRONG_FIELD = [
    pytest.param({"login": SECRET}, {}, "'login'", id="login"),
    pytest.param({"host": SECRET + " x"}, {}, "'host'", id="host"),
    pytest.param({"host": "https://" + SECRET}, {}, "'host'", id="host-url"),
    pytest.param({"port": SECRET}, {}, "'port'", id="port"),
    pytest.param({}, {"authority_host": SECRET}, "'authority_host'", id="authority-host"),
    pytest.param({}, {"authority_host": "https://" + SECRET}, "'authority_host'", id="authority-host-url"),
    pytest.param({}, {"scope": SECRET}, "'scope'", id="scope"),
    pytest.param({}, {"from_email": SECRET}, "'from_email'", id="from-email"),
    pytest.param({}, {"timeout": SECRET}, "'timeout'", id="timeout"),
    pytest.param({}, {"auth_mode": SECRET}, "'auth_mode'", id="auth-mode"),
    pytest.param({}, {"send_certificate_chain": SECRET}, "'send_certificate_chain'", id="boolean"),
    pytest.param({}, {"allow_custom_authority": SECRET}, "'allow_custom_authority'", id="opt-in"),
]


@pytest.mark.parametrize(("fields", "extra", "field"), WRONG_FIELD)
def test_a_secret_in_the_wrong_field_is_not_echoed(fields: dict[str, Any], extra: dict[str, Any], field: str) -> None:
    with pytest.raises(HveConfigError) as info:
        config(extra, **fields)
    message = str(info.value)
    assert field in message and "characters" in message and "not shown" in message
    for fragment in (SECRET, SECRET[:12], SECRET[-12:]):
        assert fragment not in message


def test_names_are_still_quoted_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="airflow_provider_hve.connection"):
        config({"tenat_id": TENANT})
    assert "unknown extra field(s) 'tenat_id' (did you mean 'tenant_id'?)" in caplog.text


def test_an_extra_named_by_the_secret_is_not_echoed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="airflow_provider_hve.connection"):
        config({SECRET: "x"})
    assert "unknown extra field(s)" in caplog.text and "not shown" in caplog.text
    for fragment in (SECRET, SECRET[:12], SECRET[-12:]):
        assert fragment not in caplog.text
    with pytest.raises(HveConfigError, match="'auth_mode' is 'oauth'"):
        config({"auth_mode": "oauth"})


# -- Certificate credentials: one diagnosis per mistake, a replaced certificate is picked up ---------------


@pytest.fixture
def cert_material(sandbox: HveSandbox, tmp_path: Path) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = Path(sandbox.client_certificate_path).read_text()
    cert_pem = pem[pem.index("-----BEGIN CERTIFICATE") :]
    key = serialization.load_pem_private_key(pem.encode(), None)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return {"pem": pem, "cert_pem": cert_pem, "key": key, "cert": cert, "dir": tmp_path}


def _certificate_case(name: str, material: dict[str, Any]) -> tuple[str, str | None]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    folder: Path = material["dir"]
    key, cert = material["key"], material["cert"]
    if name == "no-private-key":
        path = folder / "cert-only.pem"
        path.write_text(material["cert_pem"])
        return str(path), None
    if name in ("wrong-passphrase", "missing-passphrase"):
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right passphrase"),
        )
        path = folder / "encrypted.pem"
        path.write_bytes(encrypted + material["cert_pem"].encode())
        return str(path), ("wrong passphrase" if name == "wrong-passphrase" else None)
    if name == "der":
        path = folder / "app.cer"
        path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        return str(path), None
    if name == "pfx-wrong-passphrase":
        path = folder / "app.pfx"
        path.write_bytes(
            pkcs12.serialize_key_and_certificates(
                b"app", key, cert, None, serialization.BestAvailableEncryption(b"right passphrase")
            )
        )
        return str(path), "wrong passphrase"
    if name == "pfx-no-private-key":
        path = folder / "cert-only.pfx"
        path.write_bytes(pkcs12.serialize_key_and_certificates(b"app", None, cert, None, serialization.NoEncryption()))
        return str(path), None
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("case", "diagnosis"),
    [
        pytest.param("no-private-key", "holds no PEM private key", id="no-private-key"),
        pytest.param("wrong-passphrase", "does not decrypt the private key", id="wrong-passphrase"),
        pytest.param(
            "missing-passphrase", "private key is encrypted and the connection's Password", id="no-passphrase"
        ),
        pytest.param("der", "binary (DER)", id="der"),
        pytest.param("pfx-wrong-passphrase", "cannot be opened with the passphrase", id="pfx-wrong-passphrase"),
        pytest.param("pfx-no-private-key", "holds no private key", id="pfx-no-private-key"),
    ],
)
def test_certificate_mistakes_get_their_own_diagnosis(
    case: str,
    diagnosis: str,
    cert_material: dict[str, Any],
    hve_connection: ConnFactory,
    token_posts: Callable[[], list[Any]],
) -> None:
    path, passphrase = _certificate_case(case, cert_material)
    conn_id = hve_connection(auth_mode="certificate", certificate_path=path, password=passphrase or "")
    with pytest.raises(HveConfigError) as info:
        HveHook(hve_conn_id=conn_id).get_access_token()
    message = str(info.value)
    assert diagnosis in message and "'certificate_path'" in message
    assert "tenant_id" not in message
    assert not token_posts()


@pytest.mark.parametrize("with_ca_bundle", [False, True], ids=["requests-default", "with-ca-bundle"])
@pytest.mark.parametrize("bundle", ["missing", "not-pem"])
def test_a_bad_requests_ca_bundle_is_named(
    bundle: str,
    with_ca_bundle: bool,
    hve_connection: ConnFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    token_posts: Callable[[], list[Any]],
) -> None:
    path = tmp_path / "ca.pem"
    if bundle == "not-pem":
        path.write_text("this is not a certificate\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(path))
    conn_id = hve_connection() if with_ca_bundle else hve_connection(ca_bundle=None)
    with pytest.raises(HveConfigError) as info:
        HveHook(hve_conn_id=conn_id).get_access_token()
    message = str(info.value)
    assert "REQUESTS_CA_BUNDLE" in message and str(path) in message
    assert not token_posts()


def test_a_certificate_replaced_on_disk_is_picked_up(
    sandbox: HveSandbox, hve_connection: ConnFactory, tmp_path: Path, token_posts: Callable[[], list[Any]]
) -> None:
    path = tmp_path / "app.pem"
    path.write_text(Path(sandbox.client_certificate_path).read_text())
    conn_id = hve_connection(auth_mode="certificate", certificate_path=str(path))
    HveHook(hve_conn_id=conn_id).get_access_token()
    assert len(token_posts()) == 1

    # Renewal: a certificate Entra does not know replaces the file. The next hook must use it (and be refused
    # by Entra), not keep signing with the cached old key.
    from airflow_provider_hve.sandbox.pki import rsa_key

    _write_self_signed(path, rsa_key())
    with pytest.raises(HveAuthError, match="700027|certificate"):
        HveHook(hve_conn_id=conn_id).get_access_token()
    assert len(token_posts()) == 2


def _write_self_signed(path: Path, key: Any) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renewed")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )


# -- Limits checked before work ---------------------------------------------------------------------------


def hook_send(conn_factory: ConnFactory, **kwargs: Any) -> Any:
    arguments = {"to": "team@contoso.example", "subject": "Daily report", "text_content": "All good."}
    return HveHook(hve_conn_id=conn_factory()).send_email(**{**arguments, **kwargs})


def assert_nothing_sent(sandbox: HveSandbox, token_posts: Callable[[], list[Any]]) -> None:
    assert not sandbox.smtp_sessions, "an SMTP connection was opened"
    assert not token_posts(), "a token was requested"
    assert not sandbox.messages


@pytest.fixture
def huge_file(tmp_path: Path) -> Path:
    """A 300 MB file that takes no disk space (sparse): reading it would cost 300 MB of memory."""
    path = tmp_path / "export.csv"
    with path.open("wb") as handle:
        handle.truncate(300 * 1024 * 1024)
    return path


@pytest.mark.parametrize("how", ["files", "images", "merge-files"])
def test_an_oversized_attachment_is_refused_from_its_size_before_it_is_read(
    how: str,
    huge_file: Path,
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    token_posts: Callable[[], list[Any]],
) -> None:
    import tracemalloc

    from airflow_provider_hve.message import attachments_from_files

    tracemalloc.start()
    try:
        with pytest.raises(HveConfigError) as info:
            if how == "files":
                hook_send(hve_connection, files=[str(huge_file)])
            elif how == "images":
                image = huge_file.rename(huge_file.with_suffix(".png"))
                hook_send(hve_connection, html_content='<img src="cid:logo">', images={"logo": str(image)})
            else:
                attachments_from_files([str(huge_file)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "10 MB" in message and "Nothing was read" in message
    assert ("'images'" if how == "images" else "'files'") in message
    assert peak < 20 * 1024 * 1024, f"{peak / 1048576:.0f} MB allocated: the file was read"
    assert_nothing_sent(sandbox, token_posts)


def test_attachments_just_under_the_limit_with_base64_growth_are_refused(tmp_path: Path) -> None:
    from airflow_provider_hve.message import build_message

    path = tmp_path / "eight.bin"
    path.write_bytes(b"\0" * (8 * 1024 * 1024))  # 8 MB on disk, 10.8 MB encoded
    with pytest.raises(HveConfigError, match="'files'.*once encoded"):
        build_message(sender="a@contoso.example", to="b@contoso.example", subject="s", text_content="x", files=[path])


def test_too_many_recipients_are_refused_with_a_pointer_to_the_mail_merge(
    hve_connection: ConnFactory, sandbox: HveSandbox, token_posts: Callable[[], list[Any]]
) -> None:
    from airflow_provider_hve.message import DEFAULT_MAX_RECIPIENTS

    many = [f"user{n}@contoso.example" for n in range(DEFAULT_MAX_RECIPIENTS)]
    with pytest.raises(HveConfigError) as info:
        hook_send(hve_connection, to=many, bcc="one.more@contoso.example")
    message = str(info.value)
    assert "'bcc'" in message and f"more than {DEFAULT_MAX_RECIPIENTS} recipients" in message
    assert "HveMailMergeOperator" in message and "max_recipients_per_message" in message
    assert_nothing_sent(sandbox, token_posts)


def test_the_recipient_limit_is_configurable(
    hve_connection: ConnFactory, sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__HVE__MAX_RECIPIENTS_PER_MESSAGE", "5")
    five = [f"user{n}@contoso.example" for n in range(5)]
    with pytest.raises(HveConfigError, match="more than 5 recipients"):
        hook_send(hve_connection, to=five, cc="six@contoso.example")
    hook_send(hve_connection, to=five)
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == five


class _ParserSpy:
    """Count what the standard library's address parser is given: how many strings, and the longest."""

    def __init__(self) -> None:
        self.calls = 0
        self.longest = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from email.headerregistry import AddressHeader

        original = AddressHeader.value_parser

        def counting(value: str) -> Any:
            self.calls += 1
            self.longest = max(self.longest, len(value))
            return original(value)

        monkeypatch.setattr(AddressHeader, "value_parser", staticmethod(counting))


def _parser_work(monkeypatch: pytest.MonkeyPatch, count: int, as_string: bool) -> _ParserSpy:
    from airflow_provider_hve import addresses, message

    for cached in (
        addresses._parse_one_string,
        message._folded_mailbox,
        message.address_list_header,
        message._parsed_header,
    ):
        cached.cache_clear()
    spy = _ParserSpy()
    with monkeypatch.context() as patch:
        spy.install(patch)
        to: Any = [f"Person {n} <person{n}@contoso.example>" for n in range(count)]
        outgoing = message.build_message(
            sender="a@contoso.example", to=", ".join(to) if as_string else to, subject="s", text_content="x"
        )
    assert len(outgoing.recipients) == count
    return spy


@pytest.mark.parametrize("as_string", [False, True], ids=["list", "one-string"])
def test_address_handling_is_linear(monkeypatch: pytest.MonkeyPatch, as_string: bool) -> None:
    """Twice the recipients cost twice the parser calls, each on a string of bounded length.

    Python's header parser is quadratic in the length of its input; before, the whole To list went through
    it as one string (40,000 recipients: 94 s).
    """
    small, medium, large = (_parser_work(monkeypatch, count, as_string) for count in (400, 800, 1200))
    assert large.calls - medium.calls == medium.calls - small.calls
    assert max(small.longest, medium.longest, large.longest) < 60  # one mailbox at a time


@pytest.mark.parametrize(
    "form", ["user{n}@contoso.example", "User {n} <user{n}@contoso.example>"], ids=["bare", "named"]
)
def test_no_recipient_is_parsed_past_the_recipient_limit(monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    """The limit is checked by counting the addresses' text first: of 100,000 recipients none is parsed."""
    from airflow_provider_hve import addresses, message

    addresses._parse_one_string.cache_clear()
    spy = _ParserSpy()
    spy.install(monkeypatch)
    validated: list[str] = []
    original = addresses._validated

    def counting(display_name: str, addr_spec: str, text: str, smtputf8: bool = False) -> Any:
        validated.append(addr_spec)
        return original(display_name, addr_spec, text, smtputf8)

    original_bare = addresses._bare_validated

    def counting_bare(addr_spec: str) -> Any:
        mailbox = original_bare(addr_spec)
        if mailbox is not None:  # else _validated is called for it
            validated.append(addr_spec)
        return mailbox

    # Every address goes through the bare fast path or _validated; only those with a display name reach the
    # header parser.
    monkeypatch.setattr(addresses, "_validated", counting)
    monkeypatch.setattr(addresses, "_bare_validated", counting_bare)
    with pytest.raises(HveConfigError, match="more than 3000 recipients"):
        message.build_message(
            sender="a@contoso.example",
            to=[form.format(n=n) for n in range(100_000)],
            subject="s",
            text_content="x",
            max_recipients=3000,
        )
    assert validated == ["a@contoso.example"]  # the sender only (docs/security.md, Limits)
    assert spy.calls == 0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        pytest.param({"to": f'"{"A" * 5000}" <team@contoso.example>'}, "'to'", id="display-name-5000"),
        pytest.param({"from_email": f'"{"R" * 2000}" <hve-sender@contoso.example>'}, "'from_email'", id="from-name"),
        pytest.param({"cc": f'"{"C" * 1500}" <c@contoso.example>'}, "'cc'", id="cc-name"),
        pytest.param({"headers": {"X-" + "n" * 2000: "v"}}, "'headers'", id="header-name-2000"),
    ],
)
def test_header_lines_over_998_octets_are_refused(
    kwargs: dict[str, Any],
    argument: str,
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    token_posts: Callable[[], list[Any]],
) -> None:
    with pytest.raises(HveConfigError) as info:
        hook_send(hve_connection, **kwargs)
    assert argument in str(info.value) and "998" in str(info.value)
    assert_nothing_sent(sandbox, token_posts)


def test_long_foldable_values_are_still_sent(hve_connection: ConnFactory, sandbox: HveSandbox) -> None:
    hook_send(hve_connection, subject="word " * 600, to=f'"{"Ab " * 700}" <team@contoso.example>')
    (delivered,) = sandbox.wait_for_messages(1)
    assert max(len(line) for line in delivered.data.splitlines()) <= 998


def test_line_breaks_are_every_splitlines_separator() -> None:
    import sys

    from airflow_provider_hve.addresses import LINE_BREAKS

    breaking = {chr(c) for c in range(sys.maxunicode + 1) if len(f"a{chr(c)}b".splitlines()) > 1}
    assert breaking == LINE_BREAKS


BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def _line_break_case(where: str, ch: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    from airflow_provider_hve.message import Attachment

    if where == "subject":
        return {"subject": f"Report{ch}X-Spam: yes"}, "'subject'"
    if where == "header":
        return {"headers": {"X-Run": f"1{ch}X-Spam: yes"}}, "headers['X-Run']"
    if where == "display-name":
        return {"to": f'"Team{ch}X" <team@contoso.example>'}, "'to'"
    if where == "from-display-name":
        return {"from_email": f'"Reports{ch}X" <hve-sender@contoso.example>'}, "'from_email'"
    if where == "attachment-name":
        return {"attachments": [Attachment(f"a{ch}.csv", b"x", "text/csv")]}, "'attachments filename'"
    if where == "attachment-type":
        return {"attachments": [Attachment("a.csv", b"x", f"text/csv{ch}X-Spam: yes")]}, "'attachments content_type'"
    path = tmp_path / f"report{ch}.csv"
    path.write_text("x")
    return {"files": [str(path)]}, "'files file name'"


@pytest.mark.parametrize("ch", BREAKS, ids=[f"U+{ord(c):04X}" for c in BREAKS])
@pytest.mark.parametrize(
    "where",
    ["subject", "header", "display-name", "from-display-name", "attachment-name", "attachment-type", "file-name"],
)
def test_every_line_break_character_is_refused_by_argument(
    where: str,
    ch: str,
    tmp_path: Path,
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    token_posts: Callable[[], list[Any]],
) -> None:
    kwargs, argument = _line_break_case(where, ch, tmp_path)
    with pytest.raises(HveConfigError) as info:
        hook_send(hve_connection, **kwargs)
    assert argument in str(info.value) and "line break" in str(info.value)
    assert_nothing_sent(sandbox, token_posts)


@pytest.mark.parametrize(
    "name",
    [
        "Received",
        "Return-Path",
        "Resent-From",
        "Resent-Message-ID",
        "DKIM-Signature",
        "Content-Type",
        "Content-Language",
        "Content-Disposition",
        "X-MS-Exchange-Organization-SCL",
        "x-ms-exchange-organization-authas",
        "ARC-Seal",
        "Authentication-Results",
    ],
)
def test_trace_signature_and_mime_headers_cannot_be_set(
    name: str, hve_connection: ConnFactory, sandbox: HveSandbox, token_posts: Callable[[], list[Any]]
) -> None:
    with pytest.raises(HveConfigError, match=f"'headers': '{name}' is set by the provider"):
        hook_send(hve_connection, headers={name: "value"})
    assert_nothing_sent(sandbox, token_posts)


def test_custom_x_headers_still_go_through(hve_connection: ConnFactory, sandbox: HveSandbox) -> None:
    hook_send(hve_connection, headers={"X-Run-Id": "42", "X-MS-Exchange-Custom": "ok"})
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.message["X-Run-Id"] == "42" and delivered.message["X-MS-Exchange-Custom"] == "ok"


def test_unknown_extras_are_warned_about_once_per_connection_and_set_of_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every hook and task reads the connection again; the warning is given once per process for what it says.
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "unknown extra" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="airflow_provider_hve.connection"):
        for _ in range(3):  # three hooks reading one connection
            config({"managed_by": "terraform", "future_option": 1})
        assert len(warnings()) == 1
        config({"future_option": 1, "managed_by": "terraform"})  # the same names in another order
        assert len(warnings()) == 1
        config({"managed_by": "terraform"})  # the connection was edited: another set of names
        assert len(warnings()) == 2 and "'future_option'" not in warnings()[1]
        HveConnectionConfig.from_fields(
            "hve_other",
            extra={"tenant_id": TENANT, "client_id": CLIENT, "managed_by": "terraform"},
            login="reports@contoso.com",
            password=SECRET,
        )
        assert len(warnings()) == 3 and "'hve_other'" in warnings()[2]
