"""A private Postfix + Dovecot (scripts/mta/instance.py) in front of the session's sandbox, for ``make test-mta``."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox


def _load_instance_module() -> ModuleType:
    # scripts/ is no package: load the one file by path.
    path = Path(__file__).resolve().parents[2] / "scripts" / "mta" / "instance.py"
    spec = importlib.util.spec_from_file_location("hve_mta_instance", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mta_instance = _load_instance_module()
MtaInstance = mta_instance.MtaInstance
UNAVAILABLE: str | None = mta_instance.unavailable()
REQUIRED = bool(os.environ.get("HVE_MTA_REQUIRED"))


@pytest.fixture(scope="session")
def mta(sandbox: HveSandbox) -> Iterator[Any]:
    """Postfix + Dovecot for the session, checking tokens with the session's sandbox; Maildir emptied per test."""
    with MtaInstance(
        cert_file=sandbox.pki.server_cert_path,
        key_file=sandbox.pki.server_key_path,
        ca_file=sandbox.ca_bundle,
        introspection_url=sandbox.introspection_endpoint("127.0.0.1"),
    ) as instance:
        yield instance


class LogWatch:
    """Postfix's log since a test started. Lines reach the file through postlogd, after the client saw the reply:
    wait for what a test expects there, with a deadline, instead of reading once."""

    def __init__(self, mta: Any, *, whole: bool = False) -> None:
        self._mta = mta
        self._start = 0 if whole else mta.log_size()

    def text(self) -> str:
        """Return what Postfix logged since the test started (``whole``: since Postfix started)."""
        return str(self._mta.log_since(self._start))

    def wait(self, condition: Callable[[str], bool], timeout: float = 30) -> str:
        """Return the log as soon as ``condition(log)`` holds, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.text()
            if condition(log) or time.monotonic() > deadline:
                return log
            time.sleep(0.05)


@pytest.fixture
def mta_log(mta: Any) -> LogWatch:
    """Watch what Postfix logs from now on; the Maildir starts empty."""
    mta.clear_mailbox()
    return LogWatch(mta)


@pytest.fixture
def mta_hook(mta: Any, hve_connection: Callable[..., str]) -> Callable[..., HveHook]:
    """Return ``make(**overrides)``: an HveHook whose connection (token from the sandbox's Entra) points at Postfix."""

    def make(conn_id: str = "hve_mta", **overrides: Any) -> HveHook:
        return HveHook(hve_conn_id=hve_connection(conn_id=conn_id, port=mta.smtp_port, **overrides))

    return make
