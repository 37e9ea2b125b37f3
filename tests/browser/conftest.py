"""A real Airflow UI in a real browser: Chromium (Debian's package) driven by Playwright, no browser download.

``make test-browser`` installs Chromium and Playwright (scripts/browser/install.sh) and sets
HVE_BROWSER_REQUIRED=1: then a missing piece fails the run instead of skipping it. The Airflow 3.3 API server runs
from this venv; the 2.11 webserver from .venv-airflow-2.11 (built by ``make test-compat AIRFLOW=2.11``). Both use
SQLite in a temporary AIRFLOW_HOME and test connections against the session's sandbox.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hve.sandbox.core import free_port

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = bool(os.environ.get("HVE_BROWSER_REQUIRED"))
CHROMIUM = os.environ.get("HVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
AIRFLOW_2_PYTHON = ROOT / ".venv-airflow-2.11" / "bin" / "python"
STARTED_WITHIN = 180


def unavailable() -> str | None:
    """Say what is missing for the browser tests, or ``None``."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (make test-browser installs it)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (make test-browser installs Debian's chromium; or set HVE_CHROMIUM)"
    if not AIRFLOW_2_PYTHON.exists():
        return f"no Airflow 2.11 venv at {AIRFLOW_2_PYTHON.parent.parent} (make test-compat AIRFLOW=2.11 builds it)"
    return None


_SCREENSHOTS: list[Path] = []


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder screenshots go to (HVE_SCREENSHOTS, else a new temporary one); its path ends the run's report."""
    folder = Path(os.environ.get("HVE_SCREENSHOTS") or tempfile.mkdtemp(prefix="hve-browser-screenshots-"))
    folder.mkdir(parents=True, exist_ok=True)
    _SCREENSHOTS.append(folder)
    return folder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test (``rep_call``): a failed test then shows the UI server's log."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for folder in _SCREENSHOTS:
        shots = sorted(path.name for path in folder.glob("*.png"))
        terminalreporter.write_line(f"== browser screenshots ({len(shots)}) in {folder}: {', '.join(shots)}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian's package (``executable_path``: Playwright downloads no browser)."""
    missing = unavailable()
    if missing:
        if REQUIRED:
            pytest.fail(f"HVE_BROWSER_REQUIRED is set but {missing}", pytrace=False)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's own sandbox refuses to start.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class AirflowUi:
    """One Airflow web UI (3.3's API server or 2.11's webserver) in its own AIRFLOW_HOME, as a process group."""

    def __init__(self, name: str, python: Path, home: Path) -> None:
        self.name = name
        self.python = python
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True)
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "PYTEST_"))}
        self.env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                # 3.3: every user is an admin, no login page; 2.11: webserver_config.py below.
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__WEBSERVER__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__WEBSERVER__WORKERS": "1",
            }
        )
        (home / "webserver_config.py").write_text('AUTH_ROLE_PUBLIC = "Admin"\n')

    def migrate(self) -> subprocess.Popen[bytes]:
        with open(self.home / "migrate.log", "wb") as log:
            command = [self.python, "-m", "airflow", "db", "migrate"]
            return subprocess.Popen(command, env=self.env, stdout=log, stderr=log)

    def start(self) -> None:
        if self.name == "2.11":
            args = ["webserver", "--port", str(self.port), "--hostname", "127.0.0.1"]
        else:
            args = ["api-server", "--port", str(self.port), "--host", "127.0.0.1"]
        with open(self.home / "server.log", "wb") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "airflow", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: gunicorn's workers are stopped with it
            )

    def wait_ready(self, deadline: float) -> None:
        path = "/health" if self.name == "2.11" else "/api/v2/monitor/health"
        while True:
            assert self.process is not None and self.process.poll() is None, f"{self.name} exited:\n{self.log_tail()}"
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + path, timeout=5) as answer:
                if answer.status == 200:
                    return
            assert time.monotonic() < deadline, f"Airflow {self.name} not up in {STARTED_WITHIN}s:\n{self.log_tail()}"
            time.sleep(0.5)  # polling a server coming up, with a deadline

    def log_tail(self, lines: int = 40) -> str:
        path = self.home / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """Stop the server's process group (never raises: it runs in a ``finally``)."""
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
                if sig is signal.SIGTERM:
                    with contextlib.suppress(ProcessLookupError):  # workers left in the group
                        os.killpg(self.process.pid, signal.SIGKILL)
                    return


@pytest.fixture(scope="session")
def airflow_uis(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, AirflowUi]]:
    """Both UIs, migrated and started side by side (they start in about the same 20 s)."""
    import sys

    base = tmp_path_factory.mktemp("airflow-ui")
    uis = {
        "3.3": AirflowUi("3.3", Path(sys.executable), base / "3.3"),
        "2.11": AirflowUi("2.11", AIRFLOW_2_PYTHON, base / "2.11"),
    }
    try:
        for ui, migration in [(ui, ui.migrate()) for ui in uis.values()]:
            assert migration.wait(timeout=300) == 0, (ui.home / "migrate.log").read_text(errors="replace")
            ui.start()
        deadline = time.monotonic() + STARTED_WITHIN
        for ui in uis.values():
            ui.wait_ready(deadline)
        yield uis
    finally:
        for ui in uis.values():
            ui.stop()
