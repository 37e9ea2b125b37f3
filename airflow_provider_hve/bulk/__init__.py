"""Personalised bulk sending (mail merge) through HVE: see :class:`~airflow_provider_hve.bulk.merge.MailMerge`."""

from __future__ import annotations

from airflow_provider_hve.bulk.delivery_log import UNKNOWN_MARK, DeliveryLog, TaskStateDeliveryLog, delivery_key
from airflow_provider_hve.bulk.ledger import MAX_RECONNECT_DELAY, MAX_THROTTLE_PAUSE, TRANSIENT_RETRIES
from airflow_provider_hve.bulk.merge import (
    MAX_SESSIONS,
    MIN_RETRY_BUDGET,
    RETRY_BUDGET_SHARE,
    MailMerge,
    default_retry_budget,
)
from airflow_provider_hve.bulk.report import BulkReport

__all__ = [
    "MAX_RECONNECT_DELAY",
    "MAX_SESSIONS",
    "MAX_THROTTLE_PAUSE",
    "MIN_RETRY_BUDGET",
    "RETRY_BUDGET_SHARE",
    "TRANSIENT_RETRIES",
    "UNKNOWN_MARK",
    "BulkReport",
    "DeliveryLog",
    "MailMerge",
    "TaskStateDeliveryLog",
    "default_retry_budget",
    "delivery_key",
]
