"""The lock around the ledger: a session waiting for its turn wakes up when the run stops."""

from __future__ import annotations

import threading
import time

from airflow_provider_hve.bulk.ledger import RowLedger
from airflow_provider_hve.bulk.report import Progress
from airflow_provider_hve.bulk.rows import Finished, Send
from airflow_provider_hve.bulk.sessions import SharedLedger

from .test_ledger import source


def test_a_session_waiting_for_its_turn_wakes_up_when_the_run_stops() -> None:
    # One message a minute: the second session's turn is 60 s away when the run stops.
    ledger = RowLedger(3, source(3), retry_budget=0, max_reconnects=0, rate_interval=60.0, clock=time.monotonic)
    shared = SharedLedger(ledger, None, Progress(3, interval=3600))
    first, second = (shared.change(lambda book: book.open_session()) for _ in range(2))
    assert isinstance(shared.next_step(first), Send)
    steps: list[object] = []
    waiter = threading.Thread(target=lambda: steps.append(shared.next_step(second)))
    waiter.start()
    shared.stop(RuntimeError("quota"))
    started = time.monotonic()
    waiter.join(timeout=30)
    assert not waiter.is_alive() and time.monotonic() - started < 30
    assert steps == [Finished(stopped=True)]
