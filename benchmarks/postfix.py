"""The Postfix target: hve against a private Postfix + Dovecot through the delay proxy at 10 ms, against its own
rate through the same proxy at 0 ms (rounds alternated), and the bare loop at 10 ms for context.

Postfix (``scripts/mta/instance.py``, the harness of ``make test-mta``) offers PIPELINING and CHUNKING and
checks pipelining strictly; Dovecot checks each XOAUTH2 token with the sandbox's introspection endpoint. Postfix
listens on 127.0.0.1 with the sandbox's server certificate (which names 127.0.0.1), so the client reaches it
through :class:`~delay_proxy.DelayProxy` at 127.0.0.1 as well. Needs root and the packages
(``scripts/mta/install.sh``); without them the target is skipped, saying why.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from delay_proxy import DelayProxy
from scenarios import Endpoint, Row, measure, run_bare_smtplib, run_hve


def _instance_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "mta" / "instance.py"
    spec = importlib.util.spec_from_file_location("hve_mta_instance", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def postfix_rows(
    sandbox: Any, count: int, sample: int, rtt_ms: float, rounds: int, skip: bool
) -> tuple[list[Row], str | None]:
    """Return the rows (hve one session at 0 ms and at ``rtt_ms`` for each round, then the bare loop at
    ``rtt_ms``), or no rows and why they were skipped."""
    if skip:
        return [], "--no-postfix"
    mta = _instance_module()
    reason = mta.unavailable()
    if reason:
        print(f"  skipped: {reason}", flush=True)
        return [], reason
    state = Path(sandbox.ca_bundle).parent  # the sandbox's state folder holds its certificates
    introspection = sandbox.authority.replace("https://localhost:", "https://127.0.0.1:") + "/sandbox/introspect"
    rows: list[Row] = []
    with mta.MtaInstance(
        cert_file=state / "server.pem",
        key_file=state / "server-key.pem",
        ca_file=sandbox.ca_bundle,
        introspection_url=introspection,
    ) as instance:
        with (
            DelayProxy("127.0.0.1", instance.smtp_port, 0) as near_proxy,
            DelayProxy("127.0.0.1", instance.smtp_port, rtt_ms) as far_proxy,
        ):
            near, far = (
                Endpoint("postfix", "delay proxy", rtt, proxy.host, proxy.port, sandbox.ca_bundle, sandbox.account)
                for rtt, proxy in ((0.0, near_proxy), (rtt_ms, far_proxy))
            )
            for n in range(1, rounds + 1):
                for endpoint in (near, far):
                    rows.append(
                        measure(
                            sandbox,
                            endpoint,
                            f"hve 1 session (round {n}/{rounds})",
                            count,
                            lambda e=endpoint: run_hve(sandbox, e, count, 1, None),
                        )
                    )
            rows.append(measure(sandbox, far, "bare smtplib", sample, lambda: run_bare_smtplib(sandbox, far, sample)))
        sent = sum(row.messages for row in rows)
        delivered = len(instance.wait_for_delivered(sent, timeout=180))
        print(f"  Postfix delivered {delivered} of {sent} messages to its Maildir", flush=True)
        if delivered != sent:
            raise SystemExit(f"Postfix delivered {delivered} messages, {sent} were sent")
    return rows, None
