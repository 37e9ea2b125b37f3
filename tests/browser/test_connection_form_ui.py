"""An admin creates the ``hve`` connection in Airflow's UI (3.3 and 2.11), tests it, then tests a wrong secret.

Fields are found by the labels the admin reads; the secret must show masked; Test must say the connection works,
and with the secret's ID pasted instead of its value it must show the AADSTS7000215 diagnosis in the form's words.
Screenshots of each step go to the folder printed at the start of the run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hve.sandbox import HveSandbox

pytestmark = pytest.mark.timeout(420)  # both UIs start in the first test: up to 180 s, then the pages

CONN_ID = "hve_reports"
SUCCESS = re.compile(r"Connected to \S+ with STARTTLS and authenticated as")
SHOWN_WITHIN_MS = 30_000


def field(page: Any, label: str) -> Any:
    """
    The input of the field labelled ``label`` (a trailing required mark aside).

    Airflow 3.3's extra fields have a label whose ``for`` names no input, so ``get_by_label`` finds nothing: the
    input is found in the label's field group instead. 2.11's labels name their inputs.
    """
    text = re.compile(rf"^\s*{re.escape(label)}\s*\*?\s*$")
    labelled = page.get_by_label(text)
    if labelled.count() == 1:
        return labelled
    group = page.locator("[role=group]").filter(has=page.locator("label").filter(has_text=text))
    return group.locator("input:not([type=hidden])").first


def shot(page: Any, folder: Path, name: str, *, full_page: bool = False, top: bool = False) -> None:
    if top:  # 2.11 shows Test's answer above the form
        page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)


def fill_standard(page: Any, sandbox: HveSandbox) -> None:
    conn = sandbox.connection()
    field(page, "SMTP host").fill(conn["host"])
    field(page, "HVE account").fill(conn["login"])
    field(page, "Client secret / password").fill(conn["password"])
    field(page, "Port").fill(str(conn["port"]))


def fill_extra(page: Any, sandbox: HveSandbox) -> None:
    extra = sandbox.connection()["extra"]
    field(page, "Tenant ID").fill(extra["tenant_id"])
    field(page, "Client ID").fill(extra["client_id"])
    field(page, "Authority host").fill(extra["authority_host"])
    field(page, "Extra CA bundle").fill(extra["ca_bundle"])


def assert_secret_masked(page: Any, sandbox: HveSandbox) -> None:
    secret = field(page, "Client secret / password")
    assert secret.get_attribute("type") == "password"
    assert sandbox.client_secret not in page.locator("body").inner_text()  # the page's text, values aside


def assert_wrong_secret_diagnosed(text: str, sandbox: HveSandbox) -> None:
    assert "AADSTS7000215" in text and f"'{CONN_ID}'" in text, text
    assert "'Client secret / password' field" in text, text
    assert text.lower().count("correlation id") == 1 and text.lower().count("trace id") == 1, text
    assert sandbox.client_secret_id not in text and sandbox.client_secret not in text


def test_airflow_3_3_react_form(
    browser: Any, airflow_uis: dict[str, Any], sandbox: HveSandbox, screenshots: Path
) -> None:
    ui = airflow_uis["3.3"]
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(SHOWN_WITHIN_MS)
    page.goto(f"{ui.url}/connections")
    page.get_by_role("button", name="Add Connection").click()
    page.get_by_label("Connection ID").fill(CONN_ID)
    page.get_by_role("combobox", name="Connection Type").fill("Microsoft 365")
    page.keyboard.press("Enter")
    fill_standard(page, sandbox)
    assert_secret_masked(page, sandbox)
    shot(page, screenshots, "3.3-1-standard-fields")
    page.get_by_role("button", name="Extra Fields", exact=True).click()  # the section opens, Standard closes
    # Required fields open empty, not flagged before anything is typed (counted once the section is drawn).
    field(page, "Tenant ID").wait_for()
    assert page.get_by_text("This field is required").count() == 0
    assert field(page, "Tenant ID").get_attribute("aria-invalid") in (None, "false")
    fill_extra(page, sandbox)
    box = field(page, "Allow custom authority")
    page.locator(f"label[for='{box.get_attribute('id')}']").last.click()  # the switch, drawn over a hidden box
    assert box.is_checked()
    shot(page, screenshots, "3.3-2-extra-fields")
    page.get_by_role("button", name="Save").click()

    page.get_by_role("button", name="Test Connection").click()
    page.get_by_text(SUCCESS).wait_for()
    shot(page, screenshots, "3.3-3-test-succeeded")

    page.get_by_role("button", name="Edit Connection").click()
    secret = field(page, "Client secret / password")
    assert secret.get_attribute("type") == "password" and secret.input_value() != sandbox.client_secret
    secret.fill(sandbox.client_secret_id)  # the secret's ID, pasted instead of its value
    page.get_by_role("button", name="Save").click()
    page.get_by_role("button", name="Test Connection").click()
    failure = page.get_by_text(re.compile("AADSTS7000215"))
    failure.wait_for()
    shot(page, screenshots, "3.3-4-wrong-secret")
    assert_wrong_secret_diagnosed(failure.inner_text(), sandbox)


def test_airflow_2_11_flask_form(
    browser: Any, airflow_uis: dict[str, Any], sandbox: HveSandbox, screenshots: Path
) -> None:
    ui = airflow_uis["2.11"]
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(SHOWN_WITHIN_MS)
    page.goto(f"{ui.url}/connection/add")
    page.get_by_label("Connection Id").fill(CONN_ID)
    page.select_option("#conn_type", "hve")
    fill_standard(page, sandbox)
    fill_extra(page, sandbox)
    assert field(page, "Auth mode").evaluate("e => e.tagName") == "SELECT"
    assert field(page, "Timeout (s)").get_attribute("type") == "number"
    assert field(page, "Tenant ID").get_attribute("required") is not None
    field(page, "Allow custom authority").check()  # posted as "y"
    assert_secret_masked(page, sandbox)
    page.locator("#test-connection").click()
    page.locator(".alert").filter(has_text=SUCCESS).wait_for()
    shot(page, screenshots, "2.11-1-test-succeeded-on-add", full_page=True)
    shot(page, screenshots, "2.11-1-test-answer", top=True)
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(lambda url: "/connection/add" not in url)  # saved: 2.11 goes back to where it came from

    # The Edit page: Test works there too (Airflow's script breaks on it when Extra is hidden).
    page.goto(f"{ui.url}/connection/edit/1")
    secret = field(page, "Client secret / password")
    assert secret.get_attribute("type") == "password" and secret.input_value() == ""  # stored secret not sent back
    secret.fill(sandbox.client_secret_id)
    page.locator("#test-connection").click()
    # 2.11's script shows every answer of the test endpoint as a success alert, a failed test's too.
    failure = page.locator(".alert").filter(has_text="AADSTS7000215")
    failure.wait_for()
    shot(page, screenshots, "2.11-2-wrong-secret-on-edit", top=True)
    assert_wrong_secret_diagnosed(failure.inner_text(), sandbox)


@pytest.fixture(autouse=True)
def _ui_log_on_failure(request: pytest.FixtureRequest) -> Any:
    """Show the UI server's log when a browser test fails: the page alone rarely says why."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "airflow_uis" in request.fixturenames:
        for ui in request.getfixturevalue("airflow_uis").values():
            print(f"--- Airflow {ui.name} server log:\n{ui.log_tail()}")
