"""
How many BDAT transactions may be written and unanswered: the sliding window's size. Pure: times are passed in.

Enough in flight keeps the link busy: by Little's law, in flight = rate x round-trip time. More only adds
messages whose outcome is unknown when a connection breaks (never sent again). So the window is sized from what
is measured: the shortest time from writing a transaction to reading its final reply (the round trip without
queueing: the smallest recent sample) and the rate transactions settle at, plus a margin, and capped by the
connection's ``bdat_window``. Measured at the window's own size, the rate can only show what the window lets
through, so the margin also lets the window probe upwards until the server's rate, not the window, limits it.

It never goes below :data:`MIN_SIZE` (or the cap, when that is smaller): on a fast link a few transactions per
write save the server and the client a wake-up each, and a reset then leaves at most that many unknown.

Writes are gathered: the part of the window the round trip does not need (:attr:`Window.batch`) goes in one
write, so a fast link writes whole windows (few wake-ups of the server) and a slow one slides a few at a time.

On top of that, slow start (TCP's, roughly): the window starts at one transaction and grows by one per
transaction HVE takes (so it doubles per round trip); a whole transaction refused or deferred (throttling, a
quota) brings it back to one. So a throttled or failing session behaves like one with ``bdat_window=1``.
"""

from __future__ import annotations

import math
from collections import deque

DEFAULT_SIZE = 16
"""The default cap (the connection's ``bdat_window`` extra)."""
MAX_SIZE = 256
"""The largest cap allowed."""
MIN_SIZE = 8
"""The smallest window once slow start is over (unless the cap is smaller)."""
MARGIN = 2
"""Transactions in flight beyond rate x round trip: a reply that comes late does not idle the link."""
SAMPLES = 64


class Window:
    """
    The size of a sliding window of transactions, from measured round trips and rate.

    :param cap: the most transactions in flight (the connection's ``bdat_window``), 1 to :data:`MAX_SIZE`.

    Example::

        window = Window(16)
        window.written(key, now=0.0)
        window.settled(key, now=0.02, deferred=False)
        room = window.size - in_flight
    """

    def __init__(self, cap: int = DEFAULT_SIZE) -> None:
        if isinstance(cap, bool) or not 1 <= cap <= MAX_SIZE:
            raise ValueError(f"window must be from 1 to {MAX_SIZE}, not {cap!r}.")
        self.cap = cap
        self.current = 1  # slow start
        self._written: dict[int, float] = {}
        self._round_trips: deque[float] = deque(maxlen=SAMPLES)
        self._settled_at: deque[float] = deque(maxlen=SAMPLES)

    @property
    def size(self) -> int:
        """How many transactions may be in flight now."""
        return min(self.current, self.target)

    @property
    def target(self) -> int:
        """The size measurements call for: rate x round trip + margin, within [:data:`MIN_SIZE`, cap]."""
        floor = min(MIN_SIZE, self.cap)
        in_flight = self.in_flight_needed()
        if in_flight is None:
            return self.cap  # nothing measured yet: slow start alone decides
        return max(floor, min(self.cap, math.ceil(in_flight) + MARGIN))

    @property
    def batch(self) -> int:
        """
        How many transactions to gather before writing them: the part of the window the round trip does not need.

        With rate x round trip in flight the link is busy; the rest of the window is written in one go, so a fast
        link (where the round trip needs almost nothing) writes whole windows, and a slow one a few at a time.
        """
        in_flight = self.in_flight_needed() or 0.0
        return max(1, self.size - int(in_flight))

    def in_flight_needed(self) -> float | None:
        """Rate x shortest round trip (transactions), or ``None`` before two transactions were measured."""
        if len(self._settled_at) < 2 or not self._round_trips:
            return None
        elapsed = self._settled_at[-1] - self._settled_at[0]
        if elapsed <= 0:
            return None
        return (len(self._settled_at) - 1) / elapsed * min(self._round_trips)

    def written(self, key: int, now: float) -> None:
        """Note that transaction ``key`` was written at ``now``."""
        self._written[key] = now

    def settled(self, key: int, now: float, *, deferred: bool) -> None:
        """Note that transaction ``key`` got its final reply at ``now``; ``deferred``: HVE did not take it."""
        start = self._written.pop(key, None)
        if deferred:
            self.current = 1
            return
        if start is not None:
            self._round_trips.append(now - start)
            self._settled_at.append(now)
        self.current = min(self.cap, self.current + 1)

    def forget(self) -> None:
        """Drop the write times of transactions that will not be settled (the connection is gone)."""
        self._written.clear()
