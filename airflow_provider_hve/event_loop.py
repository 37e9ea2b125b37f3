"""
Blocking work off the triggerer's event loop, with every call to Airflow's supervisor kept on that loop.

In the triggerer (Deadline Alerts, Airflow 3.1+) a task-SDK call that talks to the supervisor, such as
``mask_secret`` (which tells it a secret to mask) or a connection look-up, goes over one request/response
channel that belongs to the event loop. Airflow 3.1 lets only the event loop's thread use it: the same call
from a worker thread starts a second event loop that reads the same socket, the replies cross, and the
trigger runner dies (``RuntimeError: Response read out of order``), taking every deferred task of the
deployment with it. Airflow 3.2 made the channel safe from any thread.

:func:`run_in_thread` runs blocking work (MSAL, smtplib) in a worker thread; inside it, :func:`call_on_loop`
hands a supervisor call back to the event loop's thread and waits for it. Outside :func:`run_in_thread`
(a task, the DAG processor, a test) :func:`call_on_loop` simply calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# The event loop that started the current worker thread, and that loop's thread. asyncio.to_thread copies the
# context into the worker, so the worker sees what run_in_thread set; nothing else ever sets it.
_OWNER: contextvars.ContextVar[tuple[asyncio.AbstractEventLoop, int] | None] = contextvars.ContextVar(
    "hve_event_loop_owner", default=None
)
LOOP_CALL_TIMEOUT = 60.0
"""Seconds a worker thread waits for the event loop to run a supervisor call (the loop is idle: it awaits us)."""


async def run_in_thread(func: Callable[..., T], /, *args: Any) -> T:
    """Await ``func(*args)`` run in a worker thread; its :func:`call_on_loop` calls run on this event loop."""
    reset = _OWNER.set((asyncio.get_running_loop(), threading.get_ident()))
    try:
        return await asyncio.to_thread(func, *args)
    finally:
        _OWNER.reset(reset)


def call_on_loop(func: Callable[..., T], /, *args: Any) -> T:
    """
    Call ``func(*args)`` on the event loop that started this worker thread (see :func:`run_in_thread`).

    On the loop it runs inside a greenback portal where ``greenback`` is installed (the triggerer's): Airflow
    3.2+ needs one for a synchronous SDK call made on the loop's thread. Called anywhere else, it just calls.
    """
    owner = _OWNER.get()
    if owner is None or owner[1] == threading.get_ident():
        return func(*args)
    loop = owner[0]

    async def on_the_loop() -> T:
        try:
            import greenback
        except ImportError:
            pass
        else:
            await greenback.ensure_portal()
        return func(*args)

    future = asyncio.run_coroutine_threadsafe(on_the_loop(), loop)
    try:
        return future.result(timeout=LOOP_CALL_TIMEOUT)
    except concurrent.futures.TimeoutError:  # not the built-in TimeoutError before Python 3.11
        future.cancel()
        raise RuntimeError(
            f"The triggerer's event loop did not run {getattr(func, '__name__', func)!r} within "
            f"{LOOP_CALL_TIMEOUT:.0f} s: it is blocked or stopping. See the triggerer's log for a trigger that "
            "blocks its event loop."
        ) from None
