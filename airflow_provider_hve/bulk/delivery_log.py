"""Which rows earlier tries of a task delivered, kept in Airflow's ``task_state_store`` across retries."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

UNKNOWN_MARK = "?"
"""Prefix of a delivery-log key whose outcome is unknown (handed over, no final reply): never sent again."""


class DeliveryLog(Protocol):
    """Remembers which rows were delivered, so a retried task does not send them again."""

    def delivered(self) -> set[str]:
        """Return the keys recorded by earlier tries."""

    def record(self, keys: Sequence[str]) -> None:
        """Remember ``keys`` as delivered (may buffer; see :meth:`flush`)."""

    def flush(self) -> None:
        """Persist what :meth:`record` buffered."""


def delivery_key(index: int, address: str) -> str:
    """Identify a row across tries: its position and a hash of its address (the record holds no address)."""
    return f"{index}:{hashlib.sha256(address.lower().encode()).hexdigest()[:16]}"


class TaskStateDeliveryLog:
    """
    A :class:`DeliveryLog` in Airflow's ``task_state_store`` (Airflow 3.3+): survives retries of the task.

    Keys are written in chunks (``<prefix>/<n>``) so each write stays small; buffered keys are written
    every ``flush_every`` records or ``flush_seconds``, and always by :meth:`flush` (also when the task
    fails). A task killed outright can lose at most the unflushed window: those rows may be sent again.

    :param store: ``context["task_state_store"]``.
    :param prefix: key prefix; one per operator.
    """

    CHUNK = 500

    def __init__(self, store: Any, prefix: str = "hve_mail_merge", flush_every: int = 50, flush_seconds: float = 1.0):
        self._store = store
        self._prefix = prefix
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._chunks = int(store.get(f"{prefix}/chunks", 0) or 0)
        self._current: list[str] = list(store.get(f"{prefix}/{self._chunks}", []) or [])
        self._buffered = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def delivered(self) -> set[str]:
        keys: set[str] = set(self._current)
        for n in range(self._chunks):
            keys.update(self._store.get(f"{self._prefix}/{n}", []) or [])
        return keys

    def record(self, keys: Sequence[str]) -> None:
        with self._lock:
            self._current.extend(keys)
            self._buffered += len(keys)
            due = self._buffered >= self._flush_every or time.monotonic() - self._last >= self._flush_seconds
            if due:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buffered:
            return
        while len(self._current) >= self.CHUNK:
            full, self._current = self._current[: self.CHUNK], self._current[self.CHUNK :]
            self._store.set(f"{self._prefix}/{self._chunks}", full)
            self._chunks += 1
            self._store.set(f"{self._prefix}/chunks", self._chunks)
        self._store.set(f"{self._prefix}/{self._chunks}", self._current)
        self._buffered = 0
        self._last = time.monotonic()
