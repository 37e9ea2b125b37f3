"""The hve connection is validated up front, with errors that name the connection and the field."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_hve.connection import AuthMode, HveConnectionConfig
from airflow_provider_hve.exceptions import HveConfigError

TENANT = "8f2c1c9e-5a0b-4c4e-9d7a-5e1d0c0ffee5"
CLIENT = "3b7e4f2a-9c1d-4e8b-a6f5-0d2c4b6a8e10"
SECRET = "Sup3r~Secret.Value_that-must-never-leak"


def make(extra: dict[str, Any] | None = None, **fields: Any) -> HveConnectionConfig:
    base_extra = {"tenant_id": TENANT, "client_id": CLIENT}
    base_extra.update(extra or {})
    kwargs: dict[str, Any] = {"login": "reports@contoso.com", "password": SECRET}
    kwargs.update(fields)
    return HveConnectionConfig.from_fields("hve_reports", extra=base_extra, **kwargs)


def test_defaults_point_at_hve() -> None:
    config = make()
    assert (config.host, config.port) == ("smtp.hve.mx.microsoft", 587)
    assert config.authority == f"https://login.microsoftonline.com/{TENANT}"
    assert config.scopes == ("https://outlook.office365.com/.default",)
    assert config.auth_mode is AuthMode.CLIENT_SECRET
    assert config.timeout == 30.0


def test_secret_not_in_repr() -> None:
    assert SECRET not in repr(make())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("false", False),
        ("0", False),
        ("no", False),
        ("true", True),
        ("1", True),
        (True, True),
        (False, False),
    ],
    ids=["false", "zero", "no", "true", "one", "bool-true", "bool-false"],
)
def test_booleans_are_read_correctly(value: Any, expected: bool) -> None:
    assert make({"send_certificate_chain": value}).send_certificate_chain is expected


def test_legacy_prefixed_extras_and_empty_values_are_accepted() -> None:
    config = make({"extra__hve__scope": "https://outlook.office.com/.default", "from_email": "", "timeout": None})
    assert config.scopes == ("https://outlook.office.com/.default",)
    assert config.from_email is None


def test_from_email_with_display_name() -> None:
    assert make({"from_email": "Nightly Reports <reports@contoso.com>"}).from_email == (
        "Nightly Reports <reports@contoso.com>"
    )


@pytest.mark.parametrize(
    ("extra", "fields", "must_mention"),
    [
        ({"tenant_id": None}, {}, ["'hve_reports'", "'tenant_id'", "missing"]),
        ({"tenant_id": "common"}, {}, ["'tenant_id'", "'common'"]),
        ({"tenant_id": "organizations"}, {}, ["'tenant_id'", "organizations"]),
        ({"tenant_id": "not a tenant!"}, {}, ["'tenant_id'", "GUID"]),
        ({"client_id": None}, {}, ["'client_id'", "Application (client) ID"]),
        ({"client_id": "my-app"}, {}, ["'client_id'", "GUID"]),
        (
            {"auth_mode": "oauth"},
            {},
            ["'auth_mode'", "client_secret, certificate, password, workload_identity"],
        ),
        ({"tenant_id": None, "tenantid": TENANT}, {}, ["'tenant_id' is missing", "did you mean 'tenant_id'"]),
        ({"authority_host": "http://login.microsoftonline.com"}, {}, ["'authority_host'", "https://"]),
        (
            {"authority_host": f"https://login.microsoftonline.com/{TENANT}"},
            {},
            ["'authority_host'", "tenant"],
        ),
        ({"scope": "https://outlook.office365.com/SMTP.Send"}, {}, ["'scope'", "/.default"]),
        ({"timeout": "soon"}, {}, ["'timeout'", "seconds"]),
        ({"timeout": 0}, {}, ["'timeout'", "at least 1 second"]),
        ({"send_certificate_chain": "maybe"}, {}, ["'send_certificate_chain'", "true or false"]),
        ({"ca_bundle": "/nonexistent/ca.pem"}, {}, ["'ca_bundle'", "not a readable file"]),
        ({"from_email": "reports at contoso"}, {}, ["'from_email'", "not a valid address"]),
        ({}, {"password": None}, ["'password'", "client secret value"]),
        ({"auth_mode": "password"}, {"password": ""}, ["'password'", "HVE account's password"]),
        ({"auth_mode": "certificate"}, {}, ["'certificate_path'"]),
        ({"auth_mode": "workload_identity"}, {}, ["'federated_token_file'", "AZURE_FEDERATED_TOKEN_FILE"]),
        ({}, {"login": None}, ["'login'", "HVE account address"]),
        ({}, {"login": "Reports <reports@contoso.com>"}, ["'login'", "bare address"]),
        ({}, {"port": 465}, ["'port'", "STARTTLS", "587"]),
        ({}, {"port": "smtp"}, ["'port'"]),
        ({}, {"host": "https://smtp.hve.mx.microsoft"}, ["'host'", "bare host name"]),
    ],
    ids=[
        "tenant-missing",
        "tenant-common",
        "tenant-organizations-app-only",
        "tenant-garbage",
        "client-missing",
        "client-not-guid",
        "auth-mode-unknown",
        "extra-typo",
        "authority-http",
        "authority-with-tenant",
        "scope-not-default",
        "timeout-text",
        "timeout-zero",
        "bool-garbage",
        "ca-bundle-missing",
        "from-email-invalid",
        "secret-missing",
        "delegated-password-missing",
        "certificate-path-missing",
        "federated-file-missing",
        "login-missing",
        "login-display-name",
        "port-465",
        "port-text",
        "host-url",
    ],
)
def test_bad_fields_are_named_and_explained(
    extra: dict[str, Any], fields: dict[str, Any], must_mention: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)
    with pytest.raises(HveConfigError) as info:
        make(extra, **fields)
    message = str(info.value)
    assert "'hve_reports'" in message
    for fragment in must_mention:
        assert fragment in message
    assert SECRET not in message


def test_delegated_flow_may_use_organizations() -> None:
    config = make({"auth_mode": "password", "tenant_id": "organizations"})
    assert config.auth_mode is AuthMode.PASSWORD


def test_workload_identity_reads_the_aks_variable(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("header.payload.signature")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    config = make({"auth_mode": "workload_identity"}, password=None)
    assert config.federated_token_file == str(token_file)


def test_conn_type_must_be_hve() -> None:
    from airflow.providers.common.compat.sdk import Connection

    conn = Connection(conn_id="mail", conn_type="smtp", login="a@contoso.com", password=SECRET)
    with pytest.raises(HveConfigError, match="conn_type 'smtp'"):
        HveConnectionConfig.from_connection(conn)


def test_extra_must_be_json_object() -> None:
    with pytest.raises(HveConfigError, match="not valid JSON"):
        HveConnectionConfig.from_fields("hve_reports", login="a@contoso.com", password=SECRET, extra="{tenant")


@pytest.mark.parametrize("value", ["²", "٣", "-1", "1.5", True])
def test_a_count_is_a_plain_whole_number(value: Any) -> None:
    # "²".isdigit() is True and int("²") raises; "٣" is an Arabic-Indic three: both are refused, clearly.
    with pytest.raises(HveConfigError, match="'send_retries' is not a whole number"):
        make({"send_retries": value})
    assert make({"send_retries": " 4 "}).send_retries == 4


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("accepted_domain", "accepted_domains"), ("authority_hosts", "authority_host"), ("ca_bundel", "ca_bundle")],
)
def test_a_misspelt_guard_extra_is_refused_not_just_warned_about(typo: str, meant: str) -> None:
    # Unknown extras only warn (a rolling upgrade must not break sends), but a near miss of an extra that guards
    # where credentials go or who may receive would leave that guard silently off.
    with pytest.raises(HveConfigError, match=rf"extra '{typo}' is not a field; did you mean '{meant}'"):
        make({typo: "contoso.com"})
    make({"some_future_option": "1"})  # anything else: a warning, not a refusal
