"""The words of the row ledger: row states, rows, and what the ledger answers to the sessions."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from airflow_provider_hve.addresses import Mailbox


class LedgerError(RuntimeError):
    """A transition the ledger forbids (a bug: a row would be sent twice, lost, or counted twice)."""


class RowState(enum.IntEnum):
    QUEUED = 0
    TAKEN = 1
    WAITING = 2
    IN_PIPELINE = 3
    ACCEPTED = 4
    REFUSED = 5
    INVALID = 6
    UNKNOWN = 7
    NOT_SENT = 8
    SKIPPED = 9


OPEN_STATES = frozenset({RowState.QUEUED, RowState.TAKEN, RowState.WAITING, RowState.IN_PIPELINE})


@dataclass(frozen=True)
class Row:
    """A row to send: its position, its validated recipient, its delivery-log key and its data."""

    index: int
    mailbox: Mailbox
    key: str
    data: Mapping[str, Any]

    @property
    def address(self) -> str:
        return self.mailbox.addr_spec


@dataclass(frozen=True)
class Settled:
    """A row decided before sending: ``INVALID`` (with the reason), ``SKIPPED`` or ``UNKNOWN`` (earlier try)."""

    index: int
    state: RowState
    address: str = ""
    reason: str = ""


class Reply(Protocol):
    """What the ledger reads of a message's outcome (a ``pipeline.Delivery``)."""

    key: Any
    message_id: str
    accepted: list[str]
    refused: dict[str, tuple[int, str]]
    whole: tuple[int, str] | None


class Send(NamedTuple):
    """Send this row now (it is ``TAKEN`` by the caller until :meth:`RowLedger.handed_over`)."""

    row: Row


class Wait(NamedTuple):
    """Nothing may go before ``until`` (clock time); ``None``: until another session reports something."""

    until: float | None


class Finished(NamedTuple):
    """Nothing more to send for this session; ``stopped`` if the run stopped early."""

    stopped: bool


class Reconnect(NamedTuple):
    """Open a new session after ``delay`` seconds (a retry was spent on it)."""

    delay: float
    failures: int


class Outcome(NamedTuple):
    """What a completed message means for the session that read it."""

    accepted: bool
    too_many_connections: bool


Step = Send | Wait | Finished
NO_NEWS = Outcome(accepted=False, too_many_connections=False)


@dataclass
class Tally:
    """The outcome of every row, derived from the ledger (the report's buckets and counters)."""

    accepted: int = 0
    skipped: int = 0
    refused_rows: int = 0
    """Rows refused: ``refused`` lists each address once, and an address may be in several rows."""
    refused: dict[str, list[Any]] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    not_sent: list[str] = field(default_factory=list)


@dataclass
class RetryWait:
    """A row refused for now (4xx), waiting until ``not_before`` to be sent again."""

    row: Row
    not_before: float
    refused: dict[str, tuple[int, str]]
    deferred: tuple[int, str] | None
    """The 4xx that put off the whole message (HVE throttling), if that was the reason."""
    free: bool = False
    """Deferred by a throttling event already paid for (it was on its way when an earlier deferral paused the
    run): its resend does not spend the retry budget. Each row still has at most ``TRANSIENT_RETRIES`` tries."""


@dataclass
class Holding:
    """A row a session has taken (and maybe given to its pipeline)."""

    row: Row
    session: int
    handed_over_at: float = 0.0


@dataclass
class SessionRecord:
    """What the ledger remembers of a session thread."""

    failures: int = 0
    """Broken connections in a row without an accepted message in between."""
    progressed: bool = False
