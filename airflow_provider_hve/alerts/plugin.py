"""The Airflow plugin that registers the alert listener (entry point group ``airflow.plugins``)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_hve.alerts.listener import listener


class HveAlertsPlugin(AirflowPlugin):
    """Deployment-wide failure alerts through HVE; inert until ``[hve] alert_to`` is set (docs/alerts.md)."""

    name = "hve_alerts"
    listeners = [listener]  # noqa: RUF012 - Airflow's own attribute
