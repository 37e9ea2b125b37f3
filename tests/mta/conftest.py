"""A private Postfix + Dovecot (scripts/mta/instance.py) in front of the session's sandbox, for ``make test-mta``."""

from __future__ import annotations

import importlib.util
import os
import sys
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


@pytest.fixture
def mta_log(mta: Any) -> Callable[[], str]:
    """Return a function giving what Postfix logged since the test started; the Maildir starts empty."""
    mta.clear_mailbox()
    start = mta.log_size()
    return lambda: mta.log_since(start)


@pytest.fixture
def mta_hook(mta: Any, hve_connection: Callable[..., str]) -> Callable[..., HveHook]:
    """Return ``make(**overrides)``: an HveHook whose connection (token from the sandbox's Entra) points at Postfix."""

    def make(conn_id: str = "hve_mta", **overrides: Any) -> HveHook:
        return HveHook(hve_conn_id=hve_connection(conn_id=conn_id, port=mta.smtp_port, **overrides))

    return make
