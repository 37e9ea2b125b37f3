"""Run DAGs with real secrets and tokens in play and scan everything users can see for them."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hve.sandbox import HveSandbox

EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"


def visible_state(dag_run: Any) -> str:
    """Everything the UI and API show for the run: rendered template fields and XComs of every task."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    parts = []
    with create_session() as session:
        for ti in dag_run.get_task_instances(session=session):
            parts.append(repr(RenderedTaskInstanceFields.get_templated_fields(ti, session=session)))
            query = XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=ti.task_id)
            parts.extend(repr(XComModel.deserialize_value(row)) for row in session.scalars(query))
    return "\n".join(parts)


@pytest.mark.parametrize("dag_id", ["hve_daily_report", "hve_failure_alerts", "hve_mail_merge"])
def test_no_secret_or_token_in_logs_xcom_or_rendered_fields(
    dag_id: str, run_dag: Callable[..., Any], sandbox: HveSandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    dag_run = run_dag(EXAMPLE_DAGS / f"{dag_id}.py", dag_id)
    out, err = capfd.readouterr()
    seen = "\n".join([out, err, visible_state(dag_run)])

    tokens = {a.token for s in sandbox.smtp_sessions for a in s.auth_attempts if a.token}
    assert tokens, "the run must have authenticated for this test to mean anything"
    secrets = {sandbox.client_secret, sandbox.account_password, *tokens}
    secrets |= {
        base64.b64encode(f"user={sandbox.account}\x01auth=Bearer {t}\x01\x01".encode()).decode() for t in tokens
    }
    # Parts of a token are as bad as the whole: its signature.
    secrets |= {t.rsplit(".", 1)[-1] for t in tokens}
    leaked = sorted(s[:12] + "..." for s in secrets if s and s in seen)
    assert not leaked
