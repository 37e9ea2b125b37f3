"""
The maintenance DAG of the HVE alert outbox: every 5 minutes it delivers the alerts HVE could not take when they
were raised (HVE or Entra unreachable, ``4xx``). Copy this file into your DAGs folder as it is.

A run with nothing kept ends at once. While alerts are kept it tries again every 20 seconds for 280 seconds, so an
alert goes out within about 20 seconds of HVE's return. Every worker that runs it must see ``[hve] alert_dir``
(a shared volume), as every process that sends mail does (docs/alerts.md, "Alert outbox").
"""

from __future__ import annotations

from airflow_provider_hve.alerts.maintenance import outbox_flush_dag

dag = outbox_flush_dag(dag_id="hve_alert_outbox", schedule="*/5 * * * *")
