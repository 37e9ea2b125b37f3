"""The sliding window's size against a modelled link: a FIFO server of a given rate behind a round trip."""

from __future__ import annotations

import heapq

import pytest

from airflow_provider_hve.transport.window import MIN_SIZE, Window


def _run(window: Window, *, rate: float, rtt: float, messages: int = 10_000) -> tuple[float, int]:
    """
    Send ``messages`` as fast as the window lets a client that builds instantly; return the rate over the second
    half (slow start is over) and the most in flight.
    """
    now, server_free, written, settled, most, half = 0.0, 0.0, 0, 0, 0, 0.0
    replies: list[tuple[float, int]] = []  # (when the final reply reaches the client, transaction)
    while settled < messages:
        while written < messages and written - settled < window.size:
            window.written(written, now)
            # The transaction reaches the server half a round trip later and waits for the ones before it.
            done = max(now + rtt / 2, server_free) + 1 / rate
            server_free = done
            heapq.heappush(replies, (done + rtt / 2, written))
            written += 1
            most = max(most, written - settled)
        now, key = heapq.heappop(replies)
        window.settled(key, now, deferred=False)
        settled += 1
        half = now if settled == messages // 2 else half
    return (messages - messages // 2) / (now - half), most


@pytest.mark.parametrize(("rate", "rtt"), [(300, 0.020), (500, 0.020), (250, 0.010), (1000, 0.050)])
def test_the_window_keeps_the_server_busy_with_about_rate_times_rtt_in_flight(rate: float, rtt: float) -> None:
    window = Window(256)
    achieved, _ = _run(window, rate=rate, rtt=rtt)
    assert achieved >= 0.95 * rate  # the link never idles the server
    # What a reset leaves unknown: about rate x RTT (plus the margin), not the cap of 256.
    assert window.size <= max(MIN_SIZE, 1.25 * rate * rtt + 4), window.size


def test_a_fast_server_grows_the_window_to_its_cap() -> None:
    window = Window(16)
    _run(window, rate=100_000, rtt=0.020)
    assert window.size == 16


def test_a_deferral_starts_again_from_one() -> None:
    window = Window(16)
    _run(window, rate=500, rtt=0.020, messages=200)
    window.written(10_000, 100.0)
    window.settled(10_000, 100.02, deferred=True)
    assert window.size == 1
