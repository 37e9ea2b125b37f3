"""The report of a mail merge (its XCom form) and the progress lines in the task log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_hve.bulk.ledger import RowLedger

log = logging.getLogger(__name__)


@dataclass
class BulkReport:
    """Counts and per-recipient outcomes of a bulk send; :meth:`as_dict` is its XCom form."""

    total: int = 0
    accepted: int = 0
    skipped: int = 0
    refused_rows: int = 0
    """Rows refused (``refused`` is by address: two rows to one address are one entry there, two here)."""
    refused: dict[str, list[Any]] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    not_sent: list[str] = field(default_factory=list)
    """Rows not attempted because the run stopped early (see the error); a retry sends them."""
    sessions: int = 0
    reconnects: int = 0
    retried: int = 0
    """Messages sent again after a temporary (4xx) refusal."""
    throttled: int = 0
    """Times HVE throttled the run (432, or a 4xx to a whole message): every session paused."""
    retry_budget: int = 0
    retry_budget_left: int = 0
    token_requests: int = 0
    elapsed_seconds: float = 0.0
    record_writes: int = 0
    """Writes of the delivery record (``TaskStateDeliveryLog``) in this run."""
    record_write_seconds: float = 0.0
    """Time those writes took, in the log's writer thread (the sessions wait only if they run ahead of it)."""
    record_ahead_max: int = 0
    """The farthest the record's intents ran ahead of the row taken (what a kill could have left unknown beyond
    the rows in flight)."""
    price_per_million: float = 0.0
    """USD per million delivered recipients (``[hve] price_per_million_recipients``), for the estimated cost."""

    @property
    def estimated_cost_usd(self) -> float:
        """What this run's delivered recipients cost at :attr:`price_per_million` (one recipient a row)."""
        return self.accepted * self.price_per_million / 1_000_000

    @property
    def messages_per_second(self) -> float:
        done = self.accepted + self.refused_rows
        return done / self.elapsed_seconds if self.elapsed_seconds else 0.0

    def take_outcomes(self, ledger: RowLedger) -> None:
        """Fill the buckets and counters from the ledger (after :meth:`RowLedger.finish`)."""
        tally = ledger.tally()
        self.accepted, self.skipped, self.refused_rows = tally.accepted, tally.skipped, tally.refused_rows
        self.refused, self.invalid = tally.refused, tally.invalid
        self.unknown, self.not_sent = tally.unknown, tally.not_sent
        self.reconnects, self.retried, self.throttled = ledger.reconnects, ledger.retried, ledger.throttled
        self.retry_budget, self.retry_budget_left = ledger.retry_budget, ledger.retry_budget_left

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "accepted": self.accepted,
            "refused_count": self.refused_rows,
            "refused": self.refused,
            "invalid": self.invalid,
            "unknown": self.unknown,
            "not_sent": self.not_sent,
            "skipped_already_delivered": self.skipped,
            "sessions": self.sessions,
            "reconnects": self.reconnects,
            "retried_after_4xx": self.retried,
            "throttled": self.throttled,
            "retry_budget": self.retry_budget,
            "retry_budget_left": self.retry_budget_left,
            "token_requests": self.token_requests,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "messages_per_second": round(self.messages_per_second, 1),
            "delivery_record_writes": self.record_writes,
            "delivery_record_write_seconds": round(self.record_write_seconds, 3),
            "delivery_record_ahead_max": self.record_ahead_max,
            "estimated_cost_usd": round(self.estimated_cost_usd, 6),
            "price_per_million_recipients_usd": self.price_per_million,
        }

    def log_summary(self) -> None:
        log.info(
            "HVE mail merge done: %d accepted, %d refused, %d invalid, %d unknown, %d not sent, %d skipped "
            "(already delivered) of %d, in %.1f s (%.1f msg/s) over %d session(s), %d token request(s), "
            "%d reconnect(s), %d resent after 4xx, throttled %d time(s), retry budget %d of %d left; estimated cost "
            "USD %.4f (%d delivered x USD %g per million).",
            self.accepted,
            self.refused_rows,
            len(self.invalid),
            len(self.unknown),
            len(self.not_sent),
            self.skipped,
            self.total,
            self.elapsed_seconds,
            self.messages_per_second,
            self.sessions,
            self.token_requests,
            self.reconnects,
            self.retried,
            self.throttled,
            self.retry_budget_left,
            self.retry_budget,
            self.estimated_cost_usd,
            self.accepted,
            self.price_per_million,
        )


class Progress:
    """Log sent / total, rate and ETA at a steady cadence."""

    def __init__(self, total: int, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self.interval = interval
        self._clock = clock
        self._start = clock()
        self._last = self._start

    def update(self, done: int, refused: int) -> None:
        self.done = done
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._log(now, refused)

    def final(self, done: int, refused: int) -> None:
        self.done = done
        self._log(self._clock(), refused)

    def _log(self, now: float, refused: int) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate else 0.0
        log.info(
            "HVE mail merge: %d/%d sent (%.0f%%), %.1f msg/s, ETA %s, %d refused.",
            self.done,
            self.total,
            100.0 * self.done / self.total if self.total else 100.0,
            rate,
            _duration(left),
            refused,
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
