"""DAGs that exercise HveEmailOperator features end to end (run by tests/test_operator.py with dag.test())."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_hve.operators.hve import HveEmailOperator

FILES = Path(__file__).parent / "files"
START = pendulum.datetime(2026, 1, 1, tz="UTC")
ROWS = [{"name": "Ada <admin>", "score": 97}, {"name": "Linus & co", "score": 88}]

with DAG("hve_case_template_file", schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):

    @task
    def rows() -> list[dict]:
        return ROWS

    HveEmailOperator(
        task_id="mail",
        to="team@contoso.example",
        cc="Lead <lead@contoso.example>",
        reply_to="data-team@contoso.example",
        subject="Scores for {{ ds }}",
        html_content="templates/scores.html",
        data=rows(),
        files=[str(FILES / "notes.txt")],
        images={"logo": str(FILES / "logo.png")},
        csv_filename="scores.csv",
    )

with DAG("hve_case_text_and_dry_run", schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):
    HveEmailOperator(
        task_id="mail",
        to=["a@contoso.example", "b@contoso.example"],
        bcc="audit@contoso.example",
        subject="Dry {{ dag.dag_id }}",
        html_content="<p>Hello {{ params.who }}</p>",
        text_content="Hello {{ params.who }} (plain)",
        params={"who": "<team>"},
        dry_run=True,
        dry_run_dir=os.environ.get("HVE_TEST_DRY_RUN_DIR"),
    )

with DAG("hve_case_bad_data", schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):
    HveEmailOperator(
        task_id="mail",
        to="team@contoso.example",
        subject="Never sent",
        data="{{ ti.xcom_pull(task_ids='nothing') }}",
    )

# The tests stall HVE's answer to the content past the connection timeout: the first try fails with the outcome
# unknown (HVE has the message). The retry must not send it a second time, unless the DAG prefers a possible
# duplicate to a possible loss (resend_unknown=True).
for _dag_id, _resend in (("hve_case_unknown_outcome", False), ("hve_case_unknown_outcome_resend", True)):
    with DAG(_dag_id, schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):
        HveEmailOperator(
            task_id="mail",
            to="everyone@contoso.example",
            subject="Quarterly numbers",
            text_content="Numbers inside.",
            resend_unknown=_resend,
            retries=1,
            retry_delay=dt.timedelta(seconds=0),
        )

# The tests make the first try deliver to Carol and then give up on Alice: the retry sends to Alice only.
with DAG("hve_case_partly_delivered", schedule=None, start_date=START, catchup=False, tags=["hve-tests"]):
    HveEmailOperator(
        task_id="mail",
        to=["alice@contoso.example", "carol@contoso.example"],
        subject="Quarterly numbers",
        text_content="Numbers inside.",
        retries=1,
        retry_delay=dt.timedelta(seconds=0),
    )

# Mapped tasks: Airflow renders them through the unmapped task's _do_render_template_fields, which must apply the
# same rules as a plain task (HTML autoescaped, the report template for data).
with DAG(
    "hve_case_mapped",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["hve-tests"],
    params={"who": "<b>team</b>"},
):

    @task
    def markup() -> str:
        return "<script>alert(1)</script>"

    @task
    def reports() -> list[list[dict]]:
        return [[{"product": "Xbox <Series X>", "units": 3}], [{"product": "Teams & Rooms", "units": 5}]]

    greeting = markup()
    greeting >> HveEmailOperator.partial(
        task_id="mail",
        subject="Mapped hello",
        html_content="<p>Hello {{ params.who }}: {{ ti.xcom_pull(task_ids='markup') }}</p>",
    ).expand(to=["one@contoso.example", "two@contoso.example"])
    HveEmailOperator.partial(task_id="report", to="sales@contoso.example", subject="Mapped report").expand(
        data=reports()
    )
    HveEmailOperator.partial(
        task_id="dry",
        subject="Dry mapped",
        text_content="Hello {{ params.who }}",
        bcc="audit@contoso.example",
        dry_run=True,
        dry_run_dir=os.environ.get("HVE_TEST_DRY_RUN_DIR"),
    ).expand(to=["one@contoso.example", "two@contoso.example", "three@contoso.example"])
