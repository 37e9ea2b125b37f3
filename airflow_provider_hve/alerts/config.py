"""The listener's ``[hve]`` options, read once into a frozen value."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

DEFAULT_DIGEST_THRESHOLD = 3
DEFAULT_DIGEST_WINDOW_MINUTES = 5.0


@dataclass(frozen=True)
class AlertConfig:
    """
    What the deployment-wide alert listener does, from ``[hve] alert_*`` in airflow.cfg.

    :param to: recipients of the alerts; empty: the listener is off.
    :param conn_id: the ``hve`` connection that sends them.
    :param dags_include: fnmatch patterns of DAG ids to alert on (empty: every DAG).
    :param dags_exclude: fnmatch patterns of DAG ids never alerted on (wins over include).
    :param route_to_task_email: send a task's alert to the task's own ``email`` (or an owner that is an
        address) instead of ``to``.
    :param on_retry: alert on a try that will be retried too (default: the final try only).
    :param on_dag_run: alert when a DAG run fails.
    :param digest_threshold: more alerts than this within the window are collected into one digest; 0: no
        digests.
    :param digest_window_minutes: the window of the threshold, and how long a digest collects.
    :param recovered: mail when a task that alerted succeeds again.
    :param alert_dir: where the journal (and the outbox) live.
    """

    to: tuple[str, ...] = ()
    conn_id: str = "hve_default"
    dags_include: tuple[str, ...] = ()
    dags_exclude: tuple[str, ...] = ()
    route_to_task_email: bool = False
    on_retry: bool = False
    on_dag_run: bool = True
    digest_threshold: int = DEFAULT_DIGEST_THRESHOLD
    digest_window_minutes: float = DEFAULT_DIGEST_WINDOW_MINUTES
    recovered: bool = False
    alert_dir: str = ""

    @property
    def enabled(self) -> bool:
        """Whether the listener sends anything: only with recipients."""
        return bool(self.to)

    @property
    def window_seconds(self) -> float:
        return self.digest_window_minutes * 60.0

    @property
    def journal_dir(self) -> str:
        return os.path.join(self.alert_dir, "journal")

    def wants_dag(self, dag_id: str | None) -> bool:
        """Whether alerts of ``dag_id`` pass the include / exclude patterns."""
        if not dag_id:
            return False
        if any(fnmatch.fnmatchcase(dag_id, pattern) for pattern in self.dags_exclude):
            return False
        return not self.dags_include or any(fnmatch.fnmatchcase(dag_id, p) for p in self.dags_include)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").replace(";", ",").split(",") if part.strip())


def load_alert_config() -> AlertConfig:
    """Read ``[hve] alert_*`` from Airflow's configuration (``AIRFLOW__HVE__ALERT_TO`` and so on)."""
    from airflow.providers.common.compat.sdk import conf

    from airflow_provider_hve.alerts.outbox import expand_alert_dir
    from airflow_provider_hve.exceptions import HveConfigError

    to = _split(conf.get("hve", "alert_to", fallback=""))
    if not to:  # the listener is off: its other options are not read, so a bad one cannot stop anything else
        return AlertConfig(to=())
    try:
        threshold = conf.getint("hve", "alert_digest_threshold", fallback=DEFAULT_DIGEST_THRESHOLD)
        window = conf.getfloat("hve", "alert_digest_window_minutes", fallback=DEFAULT_DIGEST_WINDOW_MINUTES)
        route = conf.getboolean("hve", "alert_route_to_task_email", fallback=False)
        on_retry = conf.getboolean("hve", "alert_on_retry", fallback=False)
        on_dag_run = conf.getboolean("hve", "alert_on_dag_run", fallback=True)
        recovered = conf.getboolean("hve", "alert_recovered", fallback=False)
    except Exception as exc:  # AirflowConfigException: not a number / not a boolean
        raise HveConfigError(f"[hve] alert options: {exc}") from None
    if threshold < 0 or window <= 0:
        raise HveConfigError(
            f"[hve] alert_digest_threshold is {threshold} and alert_digest_window_minutes {window}: use a threshold "
            f"of 0 or more (0: no digests) and a window above 0."
        )
    return AlertConfig(
        to=to,
        conn_id=(conf.get("hve", "alert_conn_id", fallback="") or "hve_default").strip(),
        dags_include=_split(conf.get("hve", "alert_dags_include", fallback="")),
        dags_exclude=_split(conf.get("hve", "alert_dags_exclude", fallback="")),
        route_to_task_email=route,
        on_retry=on_retry,
        on_dag_run=on_dag_run,
        digest_threshold=threshold,
        digest_window_minutes=window,
        recovered=recovered,
        alert_dir=str(expand_alert_dir(conf.get("hve", "alert_dir", fallback=""))),
    )
