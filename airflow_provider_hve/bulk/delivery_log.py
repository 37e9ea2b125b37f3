"""
What earlier tries of a task did with each row, kept across retries (``task_state_store`` on Airflow 3.3+,
Airflow Variables before: :mod:`airflow_provider_hve.state`).

The record is a journal of entries, replayed in order on the next try (the last entry of a row wins):

* ``<key>``: HVE accepted the row; a retry skips it.
* ``>key`` (:data:`INTENT_MARK`), written **before** the row is handed over: if it is the row's last entry, the
  try ended without recording what happened (the worker was killed): the row may have been delivered, so it
  is ``unknown``, never sent again unless ``resend_unknown``.
* ``?key`` (:data:`UNKNOWN_MARK`): handed over, and the connection broke before HVE's answer: ``unknown``.
* ``-key`` (:data:`RELEASED_MARK`): announced, then certainly not delivered (refused, not sent): sent again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

UNKNOWN_MARK = "?"
"""Prefix of a delivery-log key whose outcome is unknown (handed over, no final reply): never sent again."""
INTENT_MARK = ">"
"""Prefix of the entry written before a row is handed over (write-ahead): left last, the row is unknown."""
RELEASED_MARK = "-"
"""Prefix of the entry that cancels an intent: the row was certainly not delivered (a retry sends it)."""
WAIT_RECHECK = 0.5
"""Seconds between two looks at whether a session waiting for its row's intent should give up (a stop)."""


class DeliveryLog(Protocol):
    """
    Remembers what a try did with each row, so a retried task does not send anything twice.

    :meth:`record` may buffer; a log that does (such as :class:`TaskStateDeliveryLog`) also has
    ``wait_recorded(entry, give_up)``, which returns once ``entry`` is durable (or ``give_up()`` is true). The
    merge calls it for a row's intent before handing the row over; a log without it must have written an entry
    when :meth:`record` returns.
    """

    def delivered(self) -> set[str]:
        """Return what earlier tries left: the keys delivered, and ``?key`` for each row with an unknown outcome."""

    def record(self, keys: Sequence[str]) -> None:
        """Remember journal entries (see the module's docstring), in order."""

    def flush(self) -> None:
        """Persist what :meth:`record` buffered."""


def delivery_key(index: int, address: str) -> str:
    """Identify a row across tries: its position and a hash of its address (the record holds no address)."""
    return f"{index}:{hashlib.sha256(address.lower().encode()).hexdigest()[:16]}"


def replay(entries: Iterable[str]) -> set[str]:
    """
    Replay a journal (oldest first): return the keys delivered, and ``?key`` for each unknown row.

    An intent that is a row's last entry makes it unknown: the try that wrote it ended before it could record
    the outcome.
    """
    last: dict[str, str] = {}
    for entry in entries:
        mark = entry[:1]
        if mark in (UNKNOWN_MARK, INTENT_MARK, RELEASED_MARK):
            last[entry[1:]] = mark
        else:
            last[entry] = ""
    done: set[str] = set()
    for key, mark in last.items():
        if mark == "":
            done.add(key)
        elif mark != RELEASED_MARK:
            done.add(UNKNOWN_MARK + key)
    return done


class TaskStateDeliveryLog:
    """
    A :class:`DeliveryLog` in a task's state store (``task_state_store`` on 3.3+, Variables before).

    A writer thread writes what :meth:`record` buffered, as soon as it is buffered: each write takes all the
    entries that came meanwhile, so the sessions never wait on the store unless they run ahead of it
    (:meth:`wait_recorded`). Entries are kept in chunks (``<prefix>/<n>``) of at most :attr:`CHUNK` entries, so
    each write stays small: a write replaces the current chunk (and, when a chunk fills, adds the next one).

    :param store: ``context["task_state_store"]`` or a :class:`~airflow_provider_hve.state.VariableStore`.
    :param prefix: key prefix; one per operator.
    """

    CHUNK = 500

    def __init__(self, store: Any, prefix: str = "hve_mail_merge") -> None:
        self._store = store
        self._prefix = prefix
        self._chunks = int(store.get(f"{prefix}/chunks", 0) or 0)
        self._current: list[str] = list(store.get(f"{prefix}/{self._chunks}", []) or [])
        self._pending: list[str] = []  # recorded, not yet written
        self._writing: set[str] = set()  # intents in _pending or in the write under way
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._write_lock = threading.Lock()  # one write at a time: the writer thread's, or flush()'s
        self._writer: threading.Thread | None = None
        self.writes = 0
        self.write_seconds = 0.0

    def delivered(self) -> set[str]:
        entries: list[str] = []
        for n in range(self._chunks):
            entries.extend(self._store.get(f"{self._prefix}/{n}", []) or [])
        entries.extend(self._current)
        return replay(entries)

    def record(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        with self._changed:
            self._pending.extend(keys)
            self._writing.update(key for key in keys if key.startswith(INTENT_MARK))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="hve-delivery-log", daemon=True)
                self._writer.start()
            self._changed.notify_all()

    def wait_recorded(self, entry: str, give_up: Callable[[], bool] = lambda: False) -> bool:
        """
        Return once ``entry`` (an intent :meth:`record` was given) is durable, or as soon as ``give_up()`` is
        true (the run stopped; checked every :data:`WAIT_RECHECK` seconds); raise the store's error if a write
        failed. True if the log fell behind: the entry was not durable yet when asked, although an earlier write
        had finished (the first write of a run is always waited for: it is no sign of a slow store).
        """
        with self._changed:
            late = entry in self._writing and self.writes > 0
            while entry in self._writing and self._error is None and not give_up():
                self._changed.wait(WAIT_RECHECK)
            self._raise_if_failed()
            return late

    def flush(self, timeout: float | None = None) -> None:
        """
        Write everything recorded so far (the writer thread then ends; a later record starts it again).

        :param timeout: seconds to wait for a write under way; then :class:`HveError` (the store hangs).
        """
        with self._changed:
            writer, self._writer = self._writer, None
            self._changed.notify_all()
        if writer is not None:
            writer.join(timeout)
            if writer.is_alive():
                from airflow_provider_hve.exceptions import HveError

                raise HveError(
                    f"The mail merge's delivery record did not finish a write in {timeout:g} s (the store, Airflow's "
                    "metadata database or API server, does not answer): a retry may find rows unknown. Check the "
                    "API server's (2.11: the metadata database's) health, then clear the task once it answers; its "
                    "unknown rows are listed in XCom 'hve_summary'."
                )
        self._write_pending()
        with self._changed:
            self._raise_if_failed()

    # -- writing -------------------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._changed:
                while not self._pending and self._writer is me and self._error is None:
                    self._changed.wait()
                if self._writer is not me or self._error is not None:
                    return  # flush() writes the rest
            self._write_pending()

    def _write_pending(self) -> None:
        with self._write_lock:
            with self._changed:
                batch, self._pending = self._pending, []
            if not batch:
                return
            if self._error is not None:
                return  # the record is not coherent past a failed write: write nothing more
            started = time.monotonic()
            try:
                self._write(batch)
            except BaseException as exc:
                with self._changed:
                    self._error = exc
                    self._pending[:0] = batch  # not written; never counted as durable
                    self._changed.notify_all()
                return
            self.writes += 1
            self.write_seconds += time.monotonic() - started
            with self._changed:
                self._writing.difference_update(batch)
                self._changed.notify_all()

    def _write(self, batch: list[str]) -> None:
        # The state (chunks, current) changes only once every write of the batch succeeded. A reader between two
        # of these writes sees a full chunk twice at worst (the counter not yet moved on): replay is idempotent.
        chunks, current = self._chunks, self._current + batch
        while len(current) >= self.CHUNK:
            full, current = current[: self.CHUNK], current[self.CHUNK :]
            self._store.set(f"{self._prefix}/{chunks}", full)
            chunks += 1
            self._store.set(f"{self._prefix}/chunks", chunks)
        self._store.set(f"{self._prefix}/{chunks}", current)
        self._chunks, self._current = chunks, current

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            from airflow_provider_hve.exceptions import HveError

            raise HveError(
                "Could not write the mail merge's delivery record (what each row became, kept so a retry sends "
                f"nothing twice), so nothing more is handed over: {type(self._error).__name__}: {self._error}. To "
                "send without a record (a retry may then mail a recipient twice), set at_least_once=True on the task."
            ) from self._error
