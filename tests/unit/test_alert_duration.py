"""The alert's duration of a rescheduled sensor counts from its first poke, whatever type Airflow hands over."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from airflow_provider_hve.notifications.hve import _first_start

UTC = dt.timezone.utc
LAST_POKE = dt.datetime(2026, 12, 3, 0, 16, 19, tzinfo=UTC)
FIRST_POKE = dt.datetime(2026, 12, 3, 0, 16, 15, 327471, tzinfo=UTC)


class _TaskInstance:
    """What the notifier reads of a task instance: the last poke's start and the first reschedule date."""

    def __init__(self, first: Any) -> None:
        self.start_date = LAST_POKE
        self._first = first

    def get_first_reschedule_date(self, context: Any) -> Any:
        if isinstance(self._first, Exception):
            raise self._first
        return self._first


@pytest.mark.parametrize(
    "first",
    [
        FIRST_POKE,  # Airflow 2.11, 3.1+: a datetime
        "2026-12-03T00:16:15.327471Z",  # Airflow 3.0's supervisor: an ISO string, "Z" for UTC (Python 3.10 too)
        "2026-12-03T00:16:15.327471+00:00",
        "2026-12-03T00:16:15.327471",  # no offset: UTC, as Airflow keeps every date
    ],
    ids=["datetime", "iso-z", "iso-offset", "iso-naive"],
)
def test_the_first_poke_is_where_the_duration_starts(first: Any) -> None:
    assert _first_start(_TaskInstance(first), {"task_reschedule_count": 2}) == FIRST_POKE


@pytest.mark.parametrize(
    "first",
    ["not a date", None, RuntimeError("no supervisor here"), LAST_POKE + dt.timedelta(1)],
    ids=["garbage", "none", "no-supervisor", "later-than-start"],
)
def test_without_a_usable_first_poke_the_start_of_the_try_counts(first: Any) -> None:
    assert _first_start(_TaskInstance(first), {"task_reschedule_count": 2}) == LAST_POKE


def test_a_task_never_rescheduled_counts_from_its_start() -> None:
    assert _first_start(_TaskInstance(FIRST_POKE), {"task_reschedule_count": 0}) == LAST_POKE
