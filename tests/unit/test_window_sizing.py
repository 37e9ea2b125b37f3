"""The sliding window's size against a modelled link: a FIFO server of a given rate behind a round trip, and a
client that always has the next message ready (so it finds the window full whenever it is the limit)."""

from __future__ import annotations

import heapq
import random

import pytest

from airflow_provider_hve.transport.window import MIN_SIZE, Window


def _run(window: Window, *, rate: float, rtt: float, messages: int = 3_000, jitter: float = 0.0) -> float:
    """
    Send ``messages`` as fast as the window lets; return the rate over the second half (slow start is over).

    ``jitter``: the client reads each reply up to this many seconds late (a busy client on a shared machine), so
    measured round trips vary above the link's own.
    """
    rng = random.Random(7)
    now, server_free, written, settled, half = 0.0, 0.0, 0, 0, 0.0
    replies: list[tuple[float, int]] = []  # (when the client reads the final reply, transaction)
    while settled < messages:
        while written < messages and written - settled < window.size:
            window.written(written, now)
            # The transaction reaches the server half a round trip later and waits for the ones before it.
            done = max(now + rtt / 2, server_free) + 1 / rate
            server_free = done
            heapq.heappush(replies, (done + rtt / 2 + rng.uniform(0, jitter), written))
            written += 1
        if written < messages:
            window.full()  # the next message is ready and there is no room: the window is the limit now
        now, key = heapq.heappop(replies)
        window.settled(key, now, deferred=False)
        settled += 1
        half = now if settled == messages // 2 else half
    return (messages - messages // 2) / (now - half)


@pytest.mark.parametrize(
    ("rate", "rtt", "jitter"),
    [
        (300, 0.020, 0.0),
        (500, 0.020, 0.0),
        (500, 0.020, 0.004),
        (500, 0.020, 0.020),
        (250, 0.010, 0.002),
        (1000, 0.050, 0.0),
    ],
)
def test_a_large_cap_keeps_the_server_busy_with_about_rate_times_rtt_in_flight(
    rate: float, rtt: float, jitter: float
) -> None:
    window = Window(256)
    achieved = _run(window, rate=rate, rtt=rtt, jitter=jitter)
    assert achieved >= 0.95 * rate  # the window never idles the server
    # What a reset leaves unknown: at most twice rate x RTT (the round trip of an idle server as the client
    # sees it: the link, the server's own time for one transaction, the client's mean delay in reading the
    # reply), not the cap of 256.
    assert window.size <= max(MIN_SIZE, 2 * rate * (rtt + 1 / rate + jitter / 2)), window.size


def test_a_fast_server_grows_the_window_to_its_cap() -> None:
    window = Window(16)
    _run(window, rate=100_000, rtt=0.020)
    assert window.size == 16


def test_a_near_server_gets_whole_windows_up_to_the_cap() -> None:
    # Shortest round trip under NEAR: whole windows (a wake-up of the server per window), no bound but the cap.
    window = Window(32)
    assert _run(window, rate=2_000, rtt=0.0002) >= 0.95 * 2_000
    assert window.size == window.batch == 32


def test_a_deferral_starts_again_from_one() -> None:
    window = Window(16)
    _run(window, rate=500, rtt=0.020, messages=200)
    window.written(10_000, 100.0)
    window.settled(10_000, 100.02, deferred=True)
    assert window.size == 1
