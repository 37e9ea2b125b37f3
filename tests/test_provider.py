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
    for field in ("tenant_id", "client_id", "auth_mode", "authority_host", "scope", "ca_bundle", "from_email"):
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
