"""
The listener's shared memory: which alerts arrived lately, the digest being collected, the open threads.

It lives in ``<alert_dir>/journal/`` so every process of the deployment on that file system (scheduler, task
processes, the API server) shares it; every change is made under one ``fcntl`` lock. The folder is 0700 and
every file 0600 from its first byte (opened with that mode, never widened later).

- ``state.json``: the times of the last alerts (enough to count them in the window), when the digest being
  collected started, and the open threads (task -> Message-ID of its first alert), replaced atomically.
- ``pending.jsonl``: the failures of the digest being collected, one JSON line each (appended: O(1) per alert).
- ``due-<n>.jsonl``: a digest whose window ended, waiting to be sent; ``sending-<n>.<pid>.jsonl`` while one
  process sends it (a claim older than :data:`STALE_CLAIM_SECONDS` is taken back: its sender died).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

STALE_CLAIM_SECONDS = 600.0
LOCK_TIMEOUT_SECONDS = 10.0
MAX_THREADS = 10_000
_STATE = "state.json"
_PENDING = "pending.jsonl"


@dataclass
class JournalState:
    """What ``state.json`` holds; changed only inside :meth:`Journal.locked`."""

    arrivals: list[float] = field(default_factory=list)
    pending_since: float | None = None
    pending_count: int = 0
    batch_seq: int = 0
    threads: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalState:
        return cls(
            arrivals=[float(t) for t in data.get("arrivals", [])],
            pending_since=data.get("pending_since"),
            pending_count=int(data.get("pending_count", 0)),
            batch_seq=int(data.get("batch_seq", 0)),
            threads=dict(data.get("threads", {})),
        )


def _open_private(path: str, flags: int) -> int:
    """Open ``path`` readable by its owner only from its first byte (the umask can only narrow 0600)."""
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)  # a planted symlink is not followed
    try:
        os.fchmod(fd, 0o600)
    except BaseException:  # another user's file: no descriptor leaks per alert (the listener carries on)
        os.close(fd)
        raise
    return fd


class Journal:
    """The journal folder and its lock. Example: ``with Journal(path).locked() as state: ...``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _ensure(self) -> None:
        parent = os.path.dirname(self.path.rstrip(os.sep))
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        if not os.path.isdir(self.path):
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.path, 0o700)
        os.chmod(self.path, 0o700)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[JournalState]:
        """
        Hold the journal's lock; yield its state, written back (atomically) when the block ends without error.

        Raises ``TimeoutError`` (an ``OSError``) when another process held the lock for more than ``timeout``
        seconds (default :data:`LOCK_TIMEOUT_SECONDS`), and ``OSError`` when the journal cannot be created or
        opened: the listener then sends the alert on its own, uncounted.
        """
        self._ensure()
        lock_fd = _open_private(self.file("lock"), os.O_RDWR | os.O_CREAT)
        try:
            timeout = LOCK_TIMEOUT_SECONDS if timeout is None else timeout
            give_up = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= give_up:
                        raise TimeoutError(f"the alert journal {self.path} stayed locked for {timeout:g} s") from None
                    time.sleep(0.02)
            state = self._read_state()
            before = self._dump(state)
            yield state
            if self._dump(state) != before:  # most hooks (a task that never alerted succeeds) change nothing
                self._write_state(state)
        finally:
            os.close(lock_fd)  # releases the lock

    def _read_state(self) -> JournalState:
        try:
            fd = os.open(self.file(_STATE), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            with os.fdopen(fd, encoding="utf-8") as fh:
                return JournalState.from_json(json.load(fh))
        except FileNotFoundError:
            return JournalState()
        except (ValueError, TypeError, AttributeError):  # a torn or foreign file: start again, never fail an alert
            return JournalState()

    @staticmethod
    def _dump(state: JournalState) -> str:
        return json.dumps(
            [state.arrivals, state.pending_since, state.pending_count, state.batch_seq, state.threads], sort_keys=True
        )

    def _write_state(self, state: JournalState) -> None:
        if len(state.threads) > MAX_THREADS:  # the oldest threads go first
            oldest = sorted(state.threads, key=lambda k: state.threads[k].get("at", 0.0))
            for key in oldest[: len(state.threads) - MAX_THREADS]:
                del state.threads[key]
        data = {
            "arrivals": state.arrivals,
            "pending_since": state.pending_since,
            "pending_count": state.pending_count,
            "batch_seq": state.batch_seq,
            "threads": state.threads,
        }
        tmp = self.file(f".{_STATE}.{os.getpid()}.tmp")
        fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.file(_STATE))

    # The digest being collected, and the digests due. Call these while holding the lock.

    def append_pending(self, entry: dict[str, Any]) -> None:
        fd = _open_private(self.file(_PENDING), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")

    def close_pending(self, state: JournalState) -> str | None:
        """Turn the digest being collected into a due batch; return its file name (None if nothing pending)."""
        pending = self.file(_PENDING)
        state.pending_since = None
        state.pending_count = 0
        if not os.path.exists(pending):
            return None
        state.batch_seq += 1
        name = f"due-{state.batch_seq:08d}.jsonl"
        os.replace(pending, self.file(name))
        return name

    def claim_due(self) -> list[str]:
        """Claim every due batch (and stale claims of dead senders) for this process; return the claimed names."""
        claimed = []
        now = time.time()
        for name in sorted(os.listdir(self.path)):
            path = self.file(name)
            if name.startswith("sending-"):
                try:
                    if now - os.stat(path).st_mtime < STALE_CLAIM_SECONDS:
                        continue
                except FileNotFoundError:
                    continue
                seq = name.split("-", 1)[1].split(".", 1)[0]
            elif name.startswith("due-") and name.endswith(".jsonl"):
                seq = name[len("due-") : -len(".jsonl")]
            else:
                continue
            target = f"sending-{seq}.{os.getpid()}.jsonl"
            os.replace(path, self.file(target))
            os.utime(self.file(target))
            claimed.append(target)
        return claimed

    def release(self, claimed: str) -> None:
        """Give a claimed batch back (its send failed): the next flush sends it."""
        seq = claimed.split("-", 1)[1].split(".", 1)[0]
        os.replace(self.file(claimed), self.file(f"due-{seq}.jsonl"))

    def read_batch(self, name: str) -> list[dict[str, Any]]:
        entries = []
        fd = os.open(self.file(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as fh:
            for line in fh:
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries

    def done(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file(name))
