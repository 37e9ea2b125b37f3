"""The maintenance DAG that flushes the alert outbox on a schedule (``example_dags/hve_alert_outbox.py``)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any


def outbox_flush_dag(
    *,
    dag_id: str = "hve_alert_outbox",
    schedule: str = "*/5 * * * *",
    conn_id: str | None = None,
    keep_trying: float = 280.0,
    poll: float = 20.0,
    **dag_kwargs: Any,
) -> Any:
    """
    Return a DAG that delivers the alerts kept in the outbox, every ``schedule``.

    Each run first sends the alert listener's digests whose window has ended
    (:func:`~airflow_provider_hve.alerts.digest.flush_digests`).

    A run with nothing kept ends at once (one directory listing). While alerts are kept (HVE down), the run tries
    again every ``poll`` seconds for ``keep_trying`` seconds (a little less than the schedule's period; one run at a
    time), so an alert goes out within about ``poll`` seconds of HVE's return, not at the next run.

    :param dag_id: the DAG's id.
    :param schedule: how often a run starts (cron or preset).
    :param conn_id: only the alerts of this ``hve`` connection; default: all.
    :param keep_trying: how long one run keeps trying while alerts are left, in seconds.
    :param poll: seconds between two tries.
    :param dag_kwargs: more arguments for the DAG (``tags``, ``default_args``...).

    Example (a file in the DAGs folder)::

        from airflow_provider_hve.alerts.maintenance import outbox_flush_dag

        dag = outbox_flush_dag()
    """
    import pendulum
    from airflow.providers.common.compat.sdk import DAG, task

    dag_kwargs.setdefault("tags", ["hve", "maintenance"])
    dag_kwargs.setdefault("doc_md", "Delivers the HVE alerts kept while HVE could not take them (docs/alerts.md).")
    with DAG(
        dag_id,
        schedule=schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        **dag_kwargs,
    ) as dag:

        @task(task_id="flush_alert_outbox", retries=0, execution_timeout=dt.timedelta(seconds=keep_trying + 120))
        def flush_alert_outbox() -> dict[str, int]:
            from airflow_provider_hve.alerts.digest import flush_digests
            from airflow_provider_hve.alerts.flush import flush_until_empty

            # The alert listener's digests whose window has ended, even when no later failure comes to send them;
            # one HVE cannot take now is kept in the outbox, flushed next.
            # A bad listener option or a broken journal must not keep the outbox from being flushed.
            try:
                digests = flush_digests()
            except Exception:
                logging.getLogger(__name__).exception("HVE alert digests could not be sent; flushing the outbox")
                digests = -1
            report = flush_until_empty(conn_id, seconds=keep_trying, poll=poll)
            if digests < 0:  # after the outbox was flushed: the run shows red, the log says why
                from airflow_provider_hve.exceptions import HveConfigError

                raise HveConfigError(
                    f"The alert digests could not be sent (see the error above: an [hve] alert_* option or the journal "
                    f"under [hve] alert_dir); the outbox was flushed: {report.summary()}."
                )
            return {
                "digests": digests,
                "delivered": report.delivered,
                "possibly_duplicate": report.possibly_duplicate,
                "dropped": report.dropped,
                "left": report.left,
            }

        flush_alert_outbox()
    return dag
