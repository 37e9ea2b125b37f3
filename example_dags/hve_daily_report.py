"""
Daily report through HVE: an upstream task produces rows, HveEmailOperator mails them as a table + CSV.

With the local sandbox (``make demo``) it runs as is; for a real tenant, point the ``hve_default``
connection at HVE and set the ``HVE_REPORT_TO`` environment variable (or edit ``TO``).
"""

from __future__ import annotations

import os

import pendulum
from airflow.providers.common.compat.sdk import dag, task

from airflow_provider_hve.operators.hve import HveEmailOperator

TO = [addr.strip() for addr in os.environ.get("HVE_REPORT_TO", "sales-team@contoso.example").split(",")]


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["hve", "example"],
)
def hve_daily_report():
    @task
    def extract_sales() -> list[dict]:
        # Stand-in for a warehouse query; values with markup show that the report escapes them.
        return [
            {"region": "EMEA", "orders": 1280, "revenue_eur": 1_204_330.50, "top_product": "Surface Laptop"},
            {
                "region": "Americas",
                "orders": 2210,
                "revenue_eur": 2_870_112.00,
                "top_product": "Xbox <Series X>",
            },
            {
                "region": "APAC",
                "orders": 640,
                "revenue_eur": 598_004.25,
                "top_product": "Teams Rooms & Displays",
            },
        ]

    HveEmailOperator(
        task_id="mail_report",
        to=TO,
        bcc="sales-archive@contoso.example",
        subject="Daily sales {{ ds }}",
        title="Daily sales by region, {{ ds }}",
        data=extract_sales(),
        csv_filename="sales_{{ ds_nodash }}.csv",
        headers={"X-Report": "daily-sales"},
    )


hve_daily_report()
