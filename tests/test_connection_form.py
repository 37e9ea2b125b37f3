"""The connection form without a browser: what each Airflow's form posts, and what its Test button answers.

Each test posts the body the form's own script sends (2.11: ``connection_form.js``; 3.x: the React UI) to the
running Airflow's real test endpoint, which runs the hook against the sandbox. tests/browser/ clicks the same
forms in Chromium.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_hve._compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_2_PLUS
from airflow_provider_hve.connection import HveConnectionConfig
from airflow_provider_hve.connection_form import form_labels, form_test_message
from airflow_provider_hve.sandbox import HveSandbox

TYPED_ID = "hve_reports"


def flask_form_body(sandbox: HveSandbox, **changes: Any) -> dict[str, Any]:
    """What 2.11's ``connection_form.js`` posts: each filled extra field twice (prefixed and bare), as text."""
    conn = sandbox.connection()
    extra = {key: ("y" if value is True else str(value)) for key, value in conn["extra"].items()}
    extra.update(changes.pop("extra", {}))
    body = {"connection_id": TYPED_ID, "conn_type": "hve", "host": conn["host"], "port": conn["port"]}
    body.update({"login": conn["login"], "password": conn["password"], **changes})
    posted = {f"extra__hve__{key}": value for key, value in extra.items() if value is not None}
    posted.update({key: value for key, value in extra.items() if value is not None})
    body["extra"] = json.dumps(posted)
    return body


def react_form_body(sandbox: HveSandbox, **changes: Any) -> dict[str, Any]:
    """What the 3.x React form posts: JSON values (a ticked box is ``true``), empty fields as ``""``/null."""
    conn = sandbox.connection()
    extra: dict[str, Any] = {"certificate_path": None, "from_email": "", "timeout": 30, **conn["extra"]}
    extra.update(changes.pop("extra", {}))
    body = {"connection_id": TYPED_ID, "conn_type": "hve", "host": conn["host"], "port": conn["port"]}
    body.update({"login": conn["login"], "password": conn["password"], "extra": json.dumps(extra), **changes})
    return body


@pytest.fixture
def press_test(airflow_db: None, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Post a form's body to this Airflow's test endpoint, as the Test button does; return its JSON answer."""
    monkeypatch.setenv("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
    if AIRFLOW_V_3_0_PLUS:
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
        monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_ISSUER", "hve-tests")  # 3.0 signs no token without one
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        client = TestClient(create_app())
        # As the UI: a token from the simple auth manager (every user an admin), then the public API.
        token = client.get("/auth/token").json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        def post(body: dict[str, Any]) -> dict[str, Any]:
            response = client.post("/api/v2/connections/test", json=body, headers=headers)
            assert response.status_code == 200, response.text
            return dict(response.json())

        return post

    from airflow.www.app import create_app as create_flask_app

    monkeypatch.setenv("AIRFLOW__API__AUTH_BACKENDS", "airflow.api.auth.backend.default")
    app = create_flask_app(testing=True)
    app.config["AUTH_ROLE_PUBLIC"] = "Admin"  # as a webserver_config.py that lets anyone in

    def post_flask(body: dict[str, Any]) -> dict[str, Any]:
        with app.test_client() as client:
            response = client.post("/api/v1/connections/test", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return dict(response.get_json())

    return post_flask


def form_body(sandbox: HveSandbox, **changes: Any) -> dict[str, Any]:
    return (react_form_body if AIRFLOW_V_3_0_PLUS else flask_form_body)(sandbox, **changes)


@pytest.mark.parametrize("ticked", ["y", "on", "true", "True", "t", "1", True], ids=str)
def test_a_ticked_checkbox_is_read_as_true_whatever_the_form_sends(sandbox: HveSandbox, ticked: Any) -> None:
    conn = sandbox.connection()
    conn["extra"]["allow_custom_authority"] = ticked
    config = HveConnectionConfig.from_fields("hve_reports", **{k: v for k, v in conn.items() if k != "conn_type"})
    assert config.allow_custom_authority is True


def test_test_button_passes_with_what_this_airflows_form_posts(
    sandbox: HveSandbox, press_test: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    answer = press_test(form_body(sandbox))
    assert answer["status"] is True, answer["message"]
    assert answer["message"].startswith(f"Connected to {sandbox.smtp_host}:{sandbox.smtp_port} with STARTTLS")


def test_a_wrong_secret_is_diagnosed_in_the_forms_words(
    sandbox: HveSandbox, press_test: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    answer = press_test(form_body(sandbox, password=sandbox.client_secret_id))
    message = answer["message"]
    assert answer["status"] is False
    assert "AADSTS7000215" in message and f"connection '{TYPED_ID}'" in message
    assert "the 'Client secret / password' field" in message and "Password field" not in message
    # Entra's trace and correlation ids once each, on the line for Microsoft support.
    assert message.count("race ID") + message.count("race id") == 1, message
    assert message.count("orrelation ID") + message.count("orrelation id") == 1, message
    assert all(line.endswith(".") for line in message.splitlines()), message
    assert sandbox.client_secret_id not in message


def test_an_unticked_custom_authority_names_its_checkbox(
    sandbox: HveSandbox, press_test: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    answer = press_test(form_body(sandbox, extra={"allow_custom_authority": None}))
    message = answer["message"]
    assert answer["status"] is False
    assert f"Connection '{TYPED_ID}': 'Authority host' is" in message, message
    assert "tick 'Allow custom authority'" in message and "allow_custom_authority" not in message


def test_an_empty_account_names_its_label(
    sandbox: HveSandbox, press_test: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    answer = press_test(form_body(sandbox, login=""))
    assert answer["status"] is False
    assert answer["message"].startswith(f"Connection '{TYPED_ID}': 'HVE account' is empty"), answer["message"]


def test_a_typed_id_airflow_would_refuse_is_not_echoed(
    sandbox: HveSandbox, press_test: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    body = form_body(sandbox, login="")
    body["connection_id"] = "<img src=x onerror=alert(1)>"
    try:
        answer = press_test(body)
    except AssertionError as refused:  # Airflow 3 refuses such an id before the hook runs
        assert "connection_id" in str(refused) or "422" in str(refused)
        return
    assert answer["message"].startswith("This connection: 'HVE account' is empty"), answer["message"]


def test_the_test_message_without_a_typed_id_says_this_connection() -> None:
    said = "Connection 'aB3dE5gH': extra field 'tenant_id' is missing. Set it.\nEntra trace id x (for support)"
    assert form_test_message(said, "aB3dE5gH", "") == (
        "This connection: 'Tenant ID' is missing. Set it.\nEntra trace id x (for support)."
    )


def test_every_field_has_a_label() -> None:
    from airflow_provider_hve.connection import EXTRA_FIELDS

    labels = form_labels()
    assert set(EXTRA_FIELDS) | {"host", "port", "login", "password"} <= set(labels)
    assert labels["login"] == "HVE account" and labels["allow_custom_authority"] == "Allow custom authority"


@pytest.mark.skipif(AIRFLOW_V_3_0_PLUS, reason="2.11's Flask form; Airflow 3 has the React UI")
def test_flask_form_draws_a_select_numbers_and_required_marks() -> None:
    from airflow.providers_manager import ProvidersManager
    from werkzeug.datastructures import MultiDict
    from wtforms import Form, StringField

    widgets = {name: info.field for name, info in ProvidersManager().connection_form_widgets.items()}
    fields = {name.removeprefix("extra__hve__"): f for name, f in widgets.items() if name.startswith("extra__hve__")}
    form_class = type("HveForm", (Form,), {"conn_type": StringField(), **fields})
    form = form_class(MultiDict({"conn_type": "hve"}))
    assert "<select" in str(form.auth_mode()) and 'value="certificate"' in str(form.auth_mode())
    assert 'type="number"' in str(form.timeout()) and 'step="any"' in str(form.timeout())
    assert 'type="number"' in str(form.send_retries())
    assert form.tenant_id.flags.required and " required" in str(form.tenant_id())
    assert not form.validate()
    assert form.errors["tenant_id"] == ["Tenant ID is required for a Microsoft 365 High Volume Email connection."]
    # The form class is shared by every connection type: another type saves with the hve fields empty.
    assert form_class(MultiDict({"conn_type": "smtp"})).validate()
    behaviour = ProvidersManager().field_behaviours["hve"]
    assert "extra" not in behaviour["hidden_fields"]  # else 2.11's Test does nothing on the Edit page


@pytest.mark.skipif(not AIRFLOW_V_3_2_PLUS, reason="the declarative form of Airflow 3.2+ (conn-fields)")
def test_react_form_opens_required_fields_empty_not_null() -> None:
    from airflow.providers_manager import ProvidersManager

    widgets = ProvidersManager().connection_form_widgets
    for name in ("tenant_id", "client_id"):
        field = widgets[f"extra__hve__{name}"].field
        # null with a required type opens red ("This field is required") before anything is typed.
        assert isinstance(field, dict) and field["value"] == "", field


@pytest.mark.skipif(AIRFLOW_V_3_0_PLUS, reason="the Flask form of Airflow 2.11 (3.x draws the React form)")
def test_the_2_11_auth_mode_select_keeps_a_value_in_another_case_or_unknown() -> None:
    # Set by the CLI as "Certificate" (tasks read it in any case): the Edit page must show certificate selected,
    # not fall back to the first option, which a save would then store without a word. A value no option holds
    # is shown as it is, so the save refuses it loudly.
    from werkzeug.datastructures import MultiDict
    from wtforms import Form, StringField

    from airflow_provider_hve.connection_form import _Select

    form_class = type("F", (Form,), {"auth_mode": StringField(widget=_Select(["client_secret", "certificate"]))})
    drawn = str(form_class(MultiDict({"auth_mode": "Certificate"})).auth_mode())
    assert '<option value="certificate" selected>' in drawn and 'client_secret" selected' not in drawn
    drawn = str(form_class(MultiDict({"auth_mode": "kerberos"})).auth_mode())
    assert '<option value="kerberos" selected>' in drawn
