"""What differs between the Airflow versions the provider supports (2.11 and every 3.x).

The DAG-author classes (``BaseHook``, ``BaseOperator``, ``BaseNotifier``, ``Context``), ``conf``,
``mask_secret``, ``redact`` and Airflow's exceptions come from
``airflow.providers.common.compat.sdk``, which picks ``airflow.sdk`` on Airflow 3 and the Airflow 2
modules on 2.11, as the official providers do. This module holds the little that library does not say:
which Airflow is running and which of its features exist there. It is cheap to import (no Airflow
module beyond ``airflow`` itself).
"""

from __future__ import annotations

from airflow.providers.common.compat.version_compat import (
    AIRFLOW_V_3_0_PLUS,
    AIRFLOW_V_3_1_PLUS,
    AIRFLOW_V_3_2_PLUS,
    AIRFLOW_V_3_3_PLUS,
    get_base_airflow_version_tuple,
)

AIRFLOW_VERSION: tuple[int, int, int] = get_base_airflow_version_tuple()
"""The running Airflow as ``(major, minor, micro)``, pre-release suffixes dropped."""

HAS_TASK_STATE_STORE = AIRFLOW_V_3_3_PLUS
"""``context["task_state_store"]`` (state of a task instance that survives its retries): Airflow 3.3+."""

HAS_DEADLINE_ALERTS = AIRFLOW_V_3_1_PLUS
"""``DeadlineAlert`` with notifier callbacks run by the triggerer (``async_notify``): Airflow 3.1+."""

HAS_DECLARATIVE_CONNECTION_FORM = AIRFLOW_V_3_2_PLUS
"""``conn-fields`` / ``ui-field-behaviour`` in the provider info draw the connection form: Airflow 3.2+."""

__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_0_PLUS",
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "HAS_DEADLINE_ALERTS",
    "HAS_DECLARATIVE_CONNECTION_FORM",
    "HAS_TASK_STATE_STORE",
]
