"""Cancelling a send from another thread: no new attempt, no further wait, never half a step.

The sender makes a :class:`CancelToken` current for its thread with :func:`cancellable`; the send's loops look
at it between steps: :meth:`~airflow_provider_hve.smtp.HveSmtpSession.send` before each attempt and while it
backs off (the wait ends at once), the token provider while it waits out Entra's ``Retry-After``. A step under
way is never interrupted: the SMTP command being answered, or the content of a message being written, is
finished (a half-written message must not be left on a connection), and a message already handed over keeps
its outcome. :class:`~airflow_provider_hve.exceptions.HveCancelledError` says what was left undone.

Example::

    token = CancelToken()
    with cancellable(token):  # in the sending thread
        hook.send_email(...)  # another thread: token.cancel("the trigger was cancelled")
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_local = threading.local()


class CancelToken:
    """A one-way switch that one thread sets and a sending thread looks at; thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        """Why it was cancelled (the first reason given)."""

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel: the send starts no further attempt and its current wait ends at once."""
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; return True as soon as the token is cancelled (at once if it already is)."""
        return self._event.wait(max(0.0, seconds))


def current() -> CancelToken | None:
    """Return the token of the calling thread's send, or None outside :func:`cancellable`."""
    return getattr(_local, "token", None)


@contextmanager
def cancellable(token: CancelToken) -> Iterator[CancelToken]:
    """Make ``token`` the current one of this thread for the duration of the block."""
    previous = current()
    _local.token = token
    try:
        yield token
    finally:
        _local.token = previous


def cancelled() -> CancelToken | None:
    """Return the current token if it has been cancelled, else None."""
    token = current()
    return token if token is not None and token.cancelled else None


def back_off(seconds: float, sleep: Callable[[float], object]) -> bool:
    """
    Wait ``seconds`` before a retry; return True if the send was cancelled meanwhile (the wait ended at once).

    Outside :func:`cancellable` this is ``sleep(seconds)`` (a test's stand-in clock included).
    """
    token = current()
    if token is None:
        sleep(seconds)
        return False
    return token.wait(seconds)
