"""
How many BDAT transactions may be written and unanswered: the sliding window's size. Pure: times are passed in.

Enough in flight keeps the link busy: by Little's law, in flight = rate x round-trip time. More only adds
messages whose outcome is unknown when a connection breaks (never sent again), and waits in the server's queue.
So the window is sized as TCP BBR sizes its congestion window: the rate transactions settle at (over the last
:data:`SAMPLES`) times the **shortest** round trip seen in the session (the link's own delay: a round trip
measured under a full window also holds the time the transaction queued at the server, and sizing from that
would only grow the window to its cap), plus a margin, capped by the connection's ``bdat_window``.

While the window is what limits the rate, the rate is the window over the round trip, so rate x shortest round
trip is about the window and :data:`GAIN` lets it grow; once the server (or the client building messages) is the
limit, the rate stops growing and the window stays at what keeps that rate: :data:`GAIN` x rate x RTT +
:data:`MARGIN` (a quarter more than the link holds, so that the window measures a faster server when there is one).

It never goes below :data:`MIN_SIZE` (or the cap, when that is smaller): on a fast link a few transactions per
write save the server and the client a wake-up each, and a reset then leaves at most that many unknown.

Writes are gathered (:attr:`Window.batch`) for a near server only: where the shortest round trip is under
:data:`NEAR`, whole windows are written (a wake-up of the server per window, not per message); elsewhere each
transaction goes as soon as there is room.

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
GAIN = 1.25
"""How far beyond the measured rate the window reaches (BBR's probing gain): while the window is the limit, each
measurement finds a higher rate, so the window grows by a quarter per measurement, not by the margin alone."""
SAMPLES = 64
"""How many settled transactions the rate is measured over."""
NEAR = 0.010
"""A shortest round trip under this (seconds) is a near server: windows are written whole (:attr:`Window.batch`)."""


class Window:
    """
    The size of a sliding window of transactions, from the measured rate and shortest round trip.

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
        self.shortest: float | None = None  # the shortest round trip of the session (seconds)
        self._written: dict[int, float] = {}
        self._settled_at: deque[float] = deque(maxlen=SAMPLES)

    @property
    def size(self) -> int:
        """How many transactions may be in flight now."""
        return min(self.current, self.target)

    @property
    def target(self) -> int:
        """What the measurements call for: gain x rate x shortest round trip + margin, within [:data:`MIN_SIZE`, cap]."""
        floor = min(MIN_SIZE, self.cap)
        rate = self.rate
        if rate is None or self.shortest is None:
            return self.cap  # nothing measured yet: slow start alone decides
        return max(floor, min(self.cap, math.ceil(GAIN * rate * self.shortest) + MARGIN))

    @property
    def rate(self) -> float | None:
        """Transactions settled per second over the last :data:`SAMPLES`, or ``None`` before two were measured."""
        if len(self._settled_at) < 2:
            return None
        elapsed = self._settled_at[-1] - self._settled_at[0]
        return (len(self._settled_at) - 1) / elapsed if elapsed > 0 else None

    @property
    def batch(self) -> int:
        """
        How many transactions to gather before writing them: the whole window on a link whose shortest round
        trip is under :data:`NEAR` seconds (a wake-up of the server per window, not per message; waiting for a
        whole window costs next to nothing there), else one (each goes as soon as there is room).
        """
        near = self.shortest is None or self.shortest < NEAR
        return self.size if near else 1

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
            round_trip = now - start
            self.shortest = round_trip if self.shortest is None else min(self.shortest, round_trip)
            self._settled_at.append(now)
        self.current = min(self.cap, self.current + 1)
