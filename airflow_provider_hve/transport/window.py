"""
How many BDAT transactions may be written and unanswered: the sliding window's size. Pure: times are passed in.

Enough in flight keeps the link busy: by Little's law, in flight = rate x round-trip time. More only adds
messages whose outcome is unknown when a connection breaks (never sent again). So the window is sized from what
is measured: the rate transactions settle at times the median time from writing a transaction to reading its
final reply (what is in flight on average), plus a margin, capped by the connection's ``bdat_window``. While
the window itself is what limits the rate, everything written is in flight and the margin lets the window grow;
while the client (building messages) or the server is slower than the window allows, fewer are in flight and the
window follows them down. The measurement lags (it is over the last transactions), so each time the caller finds
the window full it also grows by one (:meth:`Window.full`), until a deferral.

Growing while the window is full is what TCP Reno does, and like Reno it would fill the server's queue up to the
cap: once the server (or the CPU) is the limit, the window is always full and a round trip measured under it
holds the queue. So, as TCP BBR bounds its congestion window, the window never exceeds :data:`CEILING_GAIN` x
the rate the last transactions settled at x the session's shortest round trip (the link's own delay) + the
margin: a window beyond that adds no speed, only messages a reset leaves unknown. The rate is the session's while
it sends: a client that sends in bursts (a mail merge building the next messages between them) is sized for the
rate of its bursts. While the window is what limits the rate, the rate is the window over a round trip near the
shortest and the bound is about 1.5 x the window + 2, so it does not hold back the growth; once more in flight
only waits in a queue, the bound stops it. A near server
(shortest round trip under :data:`NEAR`) has no bound: its windows are written whole (:attr:`Window.batch`), and a
window bounded to a few transactions there makes each batch a stop-and-wait round (with the bound, Postfix at
0 ms through the delay proxy fell to 132-140 msg/s against 304-313 at 10 ms in ``make bench``; 1.09x before).
So there, as on a link of a few milliseconds at a high rate, what a reset leaves unknown is bounded by the cap.

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
import statistics
from collections import deque
from collections.abc import Callable, Sequence

DEFAULT_SIZE = 24
"""The default cap (the connection's ``bdat_window`` extra)."""
MAX_SIZE = 256
"""The largest cap allowed."""
MIN_SIZE = 8
"""The smallest window once slow start is over (unless the cap is smaller)."""
MARGIN = 2
"""Transactions in flight beyond rate x round trip: a reply that comes late does not idle the link."""
CEILING_GAIN = 1.5
"""The window's bound: this many times the rate x the shortest round trip (BBR's ``cwnd_gain``, 2 there:
TCP's acknowledgements come late and in bunches, an SMTP server answers each transaction). With the margin, a
reset at full speed leaves at most about twice rate x RTT unknown; a modelled link with a client that reads
replies a whole round trip late still keeps the server busy (tests/unit/test_window_sizing.py)."""
SAMPLES = 64
NEAR = 0.010
"""A shortest round trip under this (seconds) is a near server: windows are written whole (:attr:`Window.batch`)."""


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
        self._grown = 0  # added each time the caller found the window full (it, not the link, was the limit)
        self._written: dict[int, float] = {}
        self._round_trips: deque[float] = deque(maxlen=SAMPLES)
        self._settled_at: deque[float] = deque(maxlen=SAMPLES)
        self.shortest: float | None = None
        """The session's shortest round trip (seconds): the link's own delay, without a server queue."""

    @property
    def size(self) -> int:
        """How many transactions may be in flight now."""
        return min(self.current, self.target)

    @property
    def target(self) -> int:
        """The size measurements call for: what is in flight on average + margin, within [:data:`MIN_SIZE`, cap]."""
        floor = min(MIN_SIZE, self.cap)
        in_flight = self._rate_times(statistics.median)
        if in_flight is None:
            return self.cap  # nothing measured yet: slow start alone decides
        wanted = math.ceil(in_flight) + MARGIN + self._grown
        return max(floor, min(self.cap, wanted, self.ceiling))

    @property
    def ceiling(self) -> int:
        """
        The most the measurements allow in flight: :data:`CEILING_GAIN` x the rate the last :data:`SAMPLES`
        transactions settled at x the session's shortest round trip, + :data:`MARGIN` (no bound before a
        measurement, nor on a near server: its shortest round trip under :data:`NEAR`).
        """
        rate = self._rate()
        if rate is None or self.shortest is None or self.shortest < NEAR:
            return MAX_SIZE  # a near server: whole windows up to the cap (see the module's docstring)
        return math.ceil(CEILING_GAIN * rate * self.shortest) + MARGIN

    @property
    def batch(self) -> int:
        """
        How many transactions to gather before writing them: the whole window on a link whose shortest round
        trip is under :data:`NEAR` seconds (a wake-up of the server per window, not per message; waiting for a
        whole window costs next to nothing there), else one (each goes as soon as there is room).
        """
        near = self.shortest is None or self.shortest < NEAR  # the link's delay, not a queue's (a full window's)
        return self.size if near else 1

    def _rate(self) -> float | None:
        """Transactions settled per second over the last :data:`SAMPLES`, or ``None`` before two were measured."""
        if len(self._settled_at) < 2:
            return None
        elapsed = self._settled_at[-1] - self._settled_at[0]
        return (len(self._settled_at) - 1) / elapsed if elapsed > 0 else None

    def _rate_times(self, pick: Callable[[Sequence[float]], float]) -> float | None:
        """Rate x a round trip picked from the samples (transactions), or ``None`` before two were measured."""
        rate = self._rate()
        if rate is None or not self._round_trips:
            return None
        return rate * pick(list(self._round_trips))

    def full(self) -> None:
        """Note that the caller had to wait for room: the window, not the link, limits the rate; grow it by one."""
        self._grown = min(self.cap, self._grown + 1)

    def written(self, key: int, now: float) -> None:
        """Note that transaction ``key`` was written at ``now``."""
        self._written[key] = now

    def settled(self, key: int, now: float, *, deferred: bool) -> None:
        """Note that transaction ``key`` got its final reply at ``now``; ``deferred``: HVE did not take it."""
        written = self._written.pop(key, None)
        if deferred:
            self.current, self._grown = 1, 0
            return
        if written is not None:
            round_trip = now - written
            self._round_trips.append(round_trip)
            self._settled_at.append(now)
            self.shortest = round_trip if self.shortest is None else min(self.shortest, round_trip)
        self.current = min(self.cap, self.current + 1)
