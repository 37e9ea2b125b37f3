"""The package is a real Airflow provider: registered, with a declarative connection form, cheap to import."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests import warm


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
    done = warm.run_module("airflow", "providers", "list", "--output", "plain", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "airflow-provider-hve" in done.stdout


@pytest.mark.parametrize("module", ["airflow_provider_hve.hooks.hve"], ids=["hook"])
def test_importing_does_not_import_msal(module: str) -> None:
    code = f"import sys, {module}; assert 'msal' not in sys.modules and 'aiosmtpd' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# What a DAG parse does not need: the connection parser, the message builder, the hook and its SMTP session,
# MSAL and HTTP, the sandbox's server, the sandboxed Jinja environment (built when a template renders).
NOT_AT_PARSE = (
    "airflow_provider_hve.connection",
    "airflow_provider_hve.message",
    "airflow_provider_hve.hooks.hve",
    "airflow_provider_hve.smtp",
    "airflow_provider_hve.auth",
    "airflow_provider_hve.sandbox",
    "msal",
    "requests",
    "aiosmtpd",
    "jinja2.sandbox",
    "difflib",
)


@pytest.mark.parametrize(
    "module",
    ["airflow_provider_hve.operators.hve", "airflow_provider_hve.notifications.hve"],
    ids=["operator", "notifier"],
)
def test_a_dag_file_importing_the_operator_or_notifier_pays_only_for_them(module: str) -> None:
    """On top of what a DAG file has loaded already (BaseOperator, BaseNotifier), the import adds nothing heavy."""
    code = (
        "import sys\n"
        "from airflow.providers.common.compat.sdk import BaseNotifier, BaseOperator\n"
        "loaded = set(sys.modules)\n"
        f"import {module}\n"
        f"added = [m for m in {NOT_AT_PARSE!r} if m in sys.modules and m not in loaded]\n"
        "assert not added, added\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_operators_notifier_and_hook_default_to_one_connection_id() -> None:
    """The operator and notifier spell out connection.DEFAULT_CONN_ID so as not to import connection.py."""
    import inspect

    from airflow_provider_hve.connection import DEFAULT_CONN_ID
    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.notifications.hve import HveNotifier
    from airflow_provider_hve.operators.hve import HveEmailOperator, HveMailMergeOperator

    assert HveHook.default_conn_name == DEFAULT_CONN_ID == "hve_default"
    for callable_ in (HveEmailOperator, HveMailMergeOperator, HveNotifier, HveHook):
        assert inspect.signature(callable_).parameters["hve_conn_id"].default == DEFAULT_CONN_ID, callable_


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


def test_every_hve_config_option_the_code_reads_is_declared() -> None:
    """`airflow config list` shows the [hve] options: each conf.get*("hve", ...) in the code is in the provider info."""
    import json
    import re
    from pathlib import Path

    import airflow_provider_hve
    from airflow_provider_hve.get_provider_info import get_provider_info
    from airflow_provider_hve.message import DEFAULT_MAX_RECIPIENTS

    package = Path(airflow_provider_hve.__file__).parent
    read = {
        match[1]
        for path in package.rglob("*.py")
        for match in re.finditer(r"""conf\.\w+\(\s*["']hve["']\s*,\s*["'](\w+)["']""", path.read_text())
    }
    section = get_provider_info()["config"]["hve"]
    assert read == set(section["options"]) and read, (read, section)
    assert section["options"]["max_recipients_per_message"]["default"] == str(DEFAULT_MAX_RECIPIENTS)
    schema = json.loads((Path(sys.modules["airflow"].__file__ or "").parent / "provider_info.schema.json").read_text())
    import jsonschema

    jsonschema.validate(get_provider_info(), schema)


def test_airflow_config_lists_the_hve_options(tmp_path: Any) -> None:
    import os

    env = {**os.environ, "AIRFLOW__HVE__MAX_RECIPIENTS_PER_MESSAGE": "40"}
    # `airflow config ...` in processes that start with Airflow imported (tests/warm.py), not fresh interpreters.
    listed = warm.run_module(
        "airflow", "config", "list", "--section", "hve", "--include-descriptions", "--show-values", env=env, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert "[hve]" in listed.stdout and "max_recipients_per_message = 40" in listed.stdout
    assert "HveMailMergeOperator" in listed.stdout
    got = warm.run_module(
        "airflow", "config", "get-value", "hve", "max_recipients_per_message",
        env={k: v for k, v in os.environ.items() if k != "AIRFLOW__HVE__MAX_RECIPIENTS_PER_MESSAGE"}, timeout=120,
    )  # fmt: skip
    assert got.stdout.strip().splitlines()[-1] == "3000", got.stderr


# Imported, deliberately not declared: the connection form of Airflow before 3.2 (imported only by the UI that ships
# them, markupsafe for the HTML its widgets return, which jinja2 also brings) and typing_extensions (under
# TYPE_CHECKING).
_UNDECLARED = {"wtforms", "flask_appbuilder", "markupsafe", "typing_extensions"}


def test_every_directly_imported_package_is_declared() -> None:
    """Each third-party import of the package names a distribution in its requirements (the sandbox's in its extra)."""
    import ast
    import importlib.metadata
    import re
    from pathlib import Path

    import airflow_provider_hve

    package = Path(airflow_provider_hve.__file__).parent
    imported: dict[str, set[str]] = {"core": set(), "sandbox": set()}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "airflow_provider_hve" and top not in _UNDECLARED:
                    imported["sandbox" if "sandbox" in path.parts else "core"].add(top)
    distributions = importlib.metadata.packages_distributions()
    requires = importlib.metadata.requires("airflow-provider-hve") or []

    def declared(extra: str | None) -> set[str]:
        names = set()
        for requirement in requires:
            marker = re.search(r'extra == "(\w+)"', requirement)
            if (marker[1] if marker else None) == extra:
                names.add(re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
        return names

    def dist(module: str) -> str:
        return distributions[module][0].lower().replace("_", "-")

    core = declared(None)
    missing = {m: dist(m) for m in imported["core"] if dist(m) not in core and m != "airflow"}
    assert not missing, f"imported by the package, not in [project] dependencies: {missing}"
    sandbox = core | declared("sandbox")
    missing = {m: dist(m) for m in imported["sandbox"] - imported["core"] if dist(m) not in sandbox}
    assert not missing, f"imported by the sandbox, not in the 'sandbox' extra: {missing}"
    assert {"cryptography", "certifi"} <= core


def test_the_package_metadata_says_what_it_runs_on() -> None:
    import importlib.metadata

    metadata = importlib.metadata.metadata("airflow-provider-hve")
    classifiers = set(metadata.get_all("Classifier") or [])
    assert {"Framework :: Apache Airflow", "Framework :: Apache Airflow :: Provider", "Typing :: Typed"} <= classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    minimum = metadata["Requires-Python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {minimum}" in classifiers
    assert metadata.get_all("Project-URL")
