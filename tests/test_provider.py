"""The package is a real Airflow provider: registered, with a declarative connection form, cheap to import."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_registered_through_the_entry_point() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    provider = ProvidersManager().providers["airflow-provider-hve"]
    assert provider.data["package-name"] == "airflow-provider-hve"
    hook = ProvidersManagerTaskRuntime().hooks["hve"]
    assert hook is not None
    assert hook.hook_class_name == "airflow_provider_hve.hooks.hve.HveHook"
    assert hook.connection_testable


def test_connection_form_lists_the_hve_fields() -> None:
    from airflow.providers_manager import ProvidersManager

    widgets = ProvidersManager().connection_form_widgets
    for field in (
        "tenant_id",
        "client_id",
        "auth_mode",
        "authority_host",
        "scope",
        "ca_bundle",
        "from_email",
    ):
        assert f"extra__hve__{field}" in widgets, field
    assert widgets["extra__hve__auth_mode"].field["schema"]["enum"] == [
        "client_secret",
        "certificate",
        "password",
        "workload_identity",
    ]
    behaviour = ProvidersManager().field_behaviours["hve"]
    assert behaviour["relabeling"]["password"] == "Client secret / password"


def test_airflow_cli_lists_the_provider() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "plain"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "airflow-provider-hve" in out


@pytest.mark.parametrize("module", ["airflow_provider_hve.hooks.hve"], ids=["hook"])
def test_importing_does_not_import_msal(module: str) -> None:
    code = f"import sys, {module}; assert 'msal' not in sys.modules and 'aiosmtpd' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_connection_form_is_served_by_the_airflow_ui_api(airflow_db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The metadata the Airflow 3 UI reads to draw the connection form lists the hve type and its fields."""
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    response = TestClient(create_app()).get("/ui/connections/hook_meta")
    assert response.status_code == 200
    (hve,) = [hook for hook in response.json() if hook["connection_type"] == "hve"]
    assert hve["hook_name"] == "Microsoft 365 High Volume Email"
    assert {"tenant_id", "client_id", "auth_mode", "scope", "authority_host", "ca_bundle"} <= set(hve["extra_fields"])
    standard = hve["standard_fields"]
    # The secret lives in the standard Password field, which the UI always renders as a password input.
    assert standard["password"]["hidden"] is False
    assert standard["password"]["title"] == "Client secret / password"
    assert standard["login"]["title"] == "HVE account"
    assert standard["url_schema"]["hidden"] is True
