"""
The alert outbox: alerts HVE could not take for a reason that passes, kept on disk until a flush delivers them.

One directory, ``<alert_dir>/outbox/`` (mode 0700), one file per alert (mode 0600 from its first byte, written
whole: a temporary file, fsync, then a hard link to its name that fails if the name exists). Its name says what a
flusher needs without opening it, and is the same for the same alert in every process (so two writers of one alert
make one file); when it was raised is the file's modification time (set by the writer, kept by renames)::

    <connection tag>-<key>.alert                                                queued
    <the same>.alert.claimed~<claimed, ms since the epoch>~<host>~<pid>          claimed by one flusher
    .tmp-<random>                                                               being written or released

A file holds one JSON line (the envelope and what the alert is), then the message as SMTP carries it: rendered,
secrets already masked, never a token. Who may change a file: a writer creates it (:meth:`Outbox.keep`); a flusher
claims it by renaming it to its claimed name (a rename succeeds for one process only, also on a shared volume),
then deletes it once HVE accepted it (:meth:`Claim.delivered`) or puts it back (:meth:`Claim.release`: renamed to a
private name first, so a flusher that lost its claim never recreates it); a claim older than ``claim_timeout``
belongs to a flusher that died: the next flusher claims it again and resends it with the same Message-ID, as a
possible duplicate.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_ALERTS = 1000
DEFAULT_CLAIM_TIMEOUT = 600.0
"""Seconds after which a claim is taken to belong to a flusher that died (far beyond one send's minute)."""
SUFFIX = ".alert"
CLAIMED = ".claimed~"
_TMP = ".tmp-"
_NAME = re.compile(r"(?P<tag>[0-9a-f]{8})-(?P<key>[0-9a-f]{16})\.alert(?:\.claimed~(?P<claimed>\d+)~.*)?")
DEFAULT_ALERT_DIR = "{AIRFLOW_HOME}/hve_alerts"
_FORMAT = 1


def connection_tag(conn_id: str) -> str:
    """Return the short tag of a connection id in file names (a flush after a send reads only its own)."""
    return hashlib.sha256(conn_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]


@dataclass(frozen=True)
class KeptAlert:
    """One alert in the outbox: the rendered message as SMTP carries it, its envelope, and why it waits."""

    message_id: str
    conn_id: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    raised_at: float
    """When it was first sent, seconds since the epoch."""
    origin: str
    """Who raised it: ``HveNotifier`` or ``email backend``."""
    reason: str
    """Why HVE did not take it: the error, which names no secret."""
    payload: bytes = field(repr=False)
    attempts: int = 1

    def to_bytes(self) -> bytes:
        head = {
            "format": _FORMAT,
            "message_id": self.message_id,
            "conn_id": self.conn_id,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "subject": self.subject,
            "raised_at": self.raised_at,
            "origin": self.origin,
            "reason": self.reason,
            "attempts": self.attempts,
        }
        return json.dumps(head, ensure_ascii=True).encode("ascii") + b"\n" + self.payload

    @classmethod
    def from_bytes(cls, data: bytes) -> KeptAlert:
        line, _, payload = data.partition(b"\n")
        head: dict[str, Any] = json.loads(line)
        if head.pop("format", None) != _FORMAT:
            raise ValueError("not an alert file of this provider version")
        head["recipients"] = tuple(head["recipients"])
        return cls(payload=payload, **head)


@dataclass(frozen=True)
class Entry:
    """A file of the outbox as one directory listing shows it (nothing read yet)."""

    name: str
    raised_ns: int
    tag: str
    key: str
    claimed_ms: int | None

    @property
    def queued_name(self) -> str:
        return self.name.split(CLAIMED, 1)[0]

    def stale(self, now: float, claim_timeout: float) -> bool:
        return self.claimed_ms is not None and now - self.claimed_ms / 1000 > claim_timeout


class Outbox:
    """
    The directory of kept alerts, shared by every process that sends mail (a shared volume across workers).

    :param directory: the outbox directory (``<alert_dir>/outbox``).
    :param max_alerts: most queued alerts; beyond it the oldest is dropped, with an ERROR line naming it.
    :param claim_timeout: seconds after which a claim counts as left by a flusher that died.

    Example::

        outbox = Outbox.configured()
        for entry in outbox.entries():
            print(entry.name)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_alerts: int = DEFAULT_MAX_ALERTS,
        claim_timeout: float = DEFAULT_CLAIM_TIMEOUT,
    ) -> None:
        if max_alerts < 1:
            raise ValueError(f"[hve] alert_outbox_max is {max_alerts}; use 1 or more.")
        self.directory = Path(directory)
        self.max_alerts = max_alerts
        self.claim_timeout = claim_timeout

    @classmethod
    def configured(cls) -> Outbox:
        """Return the outbox of ``[hve] alert_dir`` with ``alert_outbox_max`` and ``alert_outbox_claim_timeout``."""
        from airflow.providers.common.compat.sdk import conf

        return cls(
            configured_alert_dir() / "outbox",
            max_alerts=conf.getint("hve", "alert_outbox_max", fallback=DEFAULT_MAX_ALERTS),
            claim_timeout=conf.getfloat("hve", "alert_outbox_claim_timeout", fallback=DEFAULT_CLAIM_TIMEOUT),
        )

    # -- writers ---------------------------------------------------------------------------------------

    def keep(self, alert: KeptAlert) -> Path:
        """
        Write ``alert`` (0600, atomically) and return its path; drop the oldest beyond the cap.

        The same Message-ID for the same recipients, queued or claimed, is kept once (the alert was raised twice,
        also by two processes at once: its file name is the same, and it is created only if absent).
        """
        self._make_directory()
        key = hashlib.sha256(f"{alert.message_id}\0{','.join(sorted(alert.recipients))}".encode()).hexdigest()[:16]
        tag = connection_tag(alert.conn_id)
        path = self.directory / f"{tag}-{key}{SUFFIX}"
        present = self._present(tag, key)
        if present is not None:
            log.info("HVE alert %s is in the outbox already (%s).", alert.message_id, present)
            return self.directory / present
        if not self._write(path, alert.to_bytes(), raised_at=alert.raised_at, exclusive=True):
            log.info("HVE alert %s is in the outbox already (%s).", alert.message_id, path.name)
            return path
        # A flusher may have claimed the earlier copy between the look above and the link: then ours is a second
        # one. Take it back (a rename, so a flusher that claimed ours meanwhile keeps it) and leave theirs.
        present = self._present(tag, key, claimed_only=True)
        if present is not None:
            with contextlib.suppress(FileNotFoundError):
                self._take_back(path)
                log.info("HVE alert %s is being delivered already (%s).", alert.message_id, present)
                return self.directory / present
        self._enforce_cap()
        return path

    def _present(self, tag: str, key: str, *, claimed_only: bool = False) -> str | None:
        """The name of the file of this alert (queued or claimed), if there is one."""
        for entry in self.entries():
            if entry.key == key and entry.tag == tag and (entry.claimed_ms is not None or not claimed_only):
                return entry.name
        return None

    def _take_back(self, path: Path) -> Path:
        """Rename ``path`` to a private name and delete it; FileNotFoundError if another process has it now."""
        private = self.directory / f"{_TMP}{secrets.token_hex(8)}"
        os.rename(path, private)
        os.unlink(private)
        return private

    def entries(self, conn_id: str | None = None) -> list[Entry]:
        """List queued and claimed alerts, oldest first: one directory listing, no file opened."""
        try:
            listing = os.scandir(self.directory)
        except FileNotFoundError:
            return []
        tag = connection_tag(conn_id) if conn_id is not None else None
        found = []
        with listing:
            for item in listing:
                match = _NAME.fullmatch(item.name)
                if match is None or (tag is not None and match["tag"] != tag):
                    continue
                try:
                    raised_ns = item.stat(follow_symlinks=False).st_mtime_ns  # when it was raised (set by keep)
                except FileNotFoundError:  # claimed, delivered or released meanwhile
                    continue
                claimed = int(match["claimed"]) if match["claimed"] else None
                found.append(Entry(item.name, raised_ns, match["tag"], match["key"], claimed))
        return sorted(found, key=lambda entry: (entry.raised_ns, entry.name))

    def read(self, entry: Entry) -> KeptAlert:
        """Read one alert (for listing it; a flusher reads what it claimed)."""
        return KeptAlert.from_bytes((self.directory / entry.name).read_bytes())

    # -- flushers --------------------------------------------------------------------------------------

    def claim(self, entry: Entry) -> Claim | None:
        """
        Take ``entry`` for delivery by renaming it to a name of this process; None if another took it first.

        A claim older than ``claim_timeout`` (its flusher died) is taken over the same way: the returned claim is
        ``stale``, its alert may have reached HVE already.
        """
        now = time.time()
        if entry.claimed_ms is not None and not entry.stale(now, self.claim_timeout):
            return None
        claimed = _claimed_name(entry.queued_name, now)
        try:
            os.rename(self.directory / entry.name, self.directory / claimed)
        except FileNotFoundError:  # another flusher renamed it first (or delivered it)
            return None
        path = self.directory / claimed
        try:
            alert = KeptAlert.from_bytes(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            unreadable = path.with_name(f"{entry.queued_name}.unreadable")
            os.rename(path, unreadable)
            log.error("HVE alert outbox: %s cannot be read (%s); moved aside as %s.", entry.name, exc, unreadable.name)
            return None
        return Claim(self, path, entry.queued_name, alert, stale=entry.claimed_ms is not None)

    # -- internals -------------------------------------------------------------------------------------

    def _make_directory(self) -> None:
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o700)
        if os.stat(self.directory).st_mode & 0o777 != 0o700:  # a umask that took bits, or made by hand
            os.chmod(self.directory, 0o700)

    def _write(self, path: Path, data: bytes, *, raised_at: float, exclusive: bool = False) -> bool:
        """
        Write ``path`` whole or not at all: 0600 from its first byte whatever the umask, fsync, rename.

        Its modification time is ``raised_at``. ``exclusive``: only if ``path`` does not exist (a hard link, which
        fails if it does; then nothing is written and False returned).
        """
        temporary = self._temporary(data, raised_at)
        if not exclusive:
            os.replace(temporary, path)
        else:
            try:
                if not _link_or_rename(temporary, path):
                    return False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
        self._sync_directory()
        return True

    def _temporary(self, data: bytes, raised_at: float) -> Path:
        """A private ``.tmp-`` file holding ``data`` (0600, fsynced, modification time ``raised_at``)."""
        temporary = self.directory / f"{_TMP}{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(temporary, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask can only take bits away; this makes it exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.utime(fd, ns=(time.time_ns(), int(raised_at * 1e9)))  # before the fsync: the order is durable too
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        os.close(fd)
        return temporary

    def _sync_directory(self) -> None:
        # The rename is durable once the directory is: without it a power cut could forget the new name.
        with contextlib.suppress(OSError):
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _enforce_cap(self) -> None:
        queued = [entry for entry in self.entries() if entry.claimed_ms is None]
        for entry in queued[: max(0, len(queued) - self.max_alerts)]:
            try:
                what = self.read(entry)
                os.unlink(self.directory / entry.name)
            except FileNotFoundError:  # claimed for delivery meanwhile
                continue
            except (OSError, ValueError, TypeError):
                what = None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.directory / entry.name)
            described = (
                f"{what.message_id} {what.subject!r} to {', '.join(what.recipients)}, raised at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(what.raised_at))}"
                if what is not None
                else "(unreadable)"
            )
            log.error(
                "HVE alert outbox %s holds more than %d alerts ([hve] alert_outbox_max): dropped the oldest, %s: "
                "%s. It will not be delivered.",
                self.directory,
                self.max_alerts,
                entry.name,
                described,
            )


@dataclass
class Claim:
    """An alert one flusher took: deliver it, then :meth:`delivered`; or :meth:`release` it; or :meth:`drop` it."""

    outbox: Outbox
    path: Path
    queued_name: str
    alert: KeptAlert
    stale: bool = False
    """Taken over from a flusher that died: HVE may have accepted it already (resent as a possible duplicate)."""

    def delivered(self) -> None:
        """HVE accepted it: delete the file (only under its claimed name: never a copy another flusher took over)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            log.error(
                "HVE alert %s was delivered, but its claim %s was gone: another flusher took it over (this send "
                "lasted longer than [hve] alert_outbox_claim_timeout); it may be sent twice.",
                self.alert.message_id,
                self.path.name,
            )

    def release(self, reason: str, recipients: Sequence[str] | None = None) -> None:
        """Put it back in the queue for a later flush, with ``reason`` and (when given) fewer ``recipients``."""
        again = replace(
            self.alert,
            reason=reason[:2000],
            attempts=self.alert.attempts + 1,
            recipients=tuple(recipients) if recipients is not None else self.alert.recipients,
        )
        # At every step the alert is a claim another flusher can take over, or queued: never only a private file.
        # 1. The new content first, in a private file: if that fails (disk full), the claim stays as it is.
        outbox = self.outbox
        temporary = outbox._temporary(again.to_bytes(), again.raised_at)
        try:
            # 2. Renew the claim under a fresh claimed name (atomic): if another flusher took it over meanwhile (a
            #    stale claim), the claimed name is gone and nothing more is done, so no second copy can appear.
            fresh = outbox.directory / _claimed_name(self.queued_name, time.time())
            try:
                os.rename(self.path, fresh)
            except FileNotFoundError:
                log.warning(
                    "HVE alert %s was taken over by another flusher (%s outlived [hve] alert_outbox_claim_timeout), "
                    "not released.",
                    self.alert.message_id,
                    self.path.name,
                )
                return
            self.path = fresh
            # 3. The fresh claim gets the new content; 4. it is queued, never over a copy kept again meanwhile.
            os.replace(temporary, fresh)
            if not _link_or_rename(fresh, outbox.directory / self.queued_name):
                log.info("HVE alert %s is queued again already (%s).", self.alert.message_id, self.queued_name)
                os.unlink(fresh)
            outbox._sync_directory()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def drop(self) -> None:
        """Delete it undelivered (refused for good; the caller logs why); only under its claimed name."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _claimed_name(queued_name: str, now: float) -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
    return f"{queued_name}{CLAIMED}{int(now * 1000)}~{host}~{os.getpid()}"


# A file system without hard links (SMB shares such as Azure Files): link() fails with one of these.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.ENOSYS, errno.EMLINK}
)


def _link_or_rename(source: Path, target: Path) -> bool:
    """
    Give ``source`` the name ``target`` unless ``target`` exists (a hard link); False if it exists.

    ``source`` is removed on success. Where the file system has no hard links, a rename, which replaces a
    ``target`` created meanwhile: that copy is the same alert (the name is the alert's), so one file stays.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        os.replace(source, target)
        return True
    with contextlib.suppress(FileNotFoundError):
        os.unlink(source)
    return True


def configured_alert_dir() -> Path:
    """Return ``[hve] alert_dir``: default ``{AIRFLOW_HOME}/hve_alerts``, shared with the alert listener."""
    from airflow.providers.common.compat.sdk import conf

    return expand_alert_dir(conf.get("hve", "alert_dir", fallback=""))


def expand_alert_dir(value: str | None) -> Path:
    """
    Return the folder ``[hve] alert_dir`` names: ``{AIRFLOW_HOME}`` and ``~`` expanded; empty: the default.

    The one place both the outbox and the alert listener (:mod:`~airflow_provider_hve.alerts.config`) read it. A
    relative path is refused: each process would resolve it against its own working directory, and the outbox
    would be split between them.

    :raises HveConfigError: the path is not absolute.
    """
    from airflow_provider_hve.exceptions import HveConfigError

    value = (value or "").strip() or DEFAULT_ALERT_DIR
    expanded = os.path.expanduser(value.replace("{AIRFLOW_HOME}", _airflow_home()))
    if not os.path.isabs(expanded):
        raise HveConfigError(
            f"[hve] alert_dir is {value!r}, a relative path: each process would resolve it against its own working "
            f"directory and the alert outbox would be split between them. Use an absolute path (or "
            f"{{AIRFLOW_HOME}}/..., with an absolute AIRFLOW_HOME)."
        )
    return Path(expanded)


def _airflow_home() -> str:
    try:
        from airflow.configuration import AIRFLOW_HOME
    except ImportError:  # pragma: no cover - a layout without it
        AIRFLOW_HOME = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return str(AIRFLOW_HOME)


def recipients_to_keep(error: BaseException, recipients: Iterable[str]) -> list[str]:
    """
    Return the recipients an alert should be kept for after ``error``: those HVE may take later.

    Kept: HVE or Entra unreachable, a broken or refused connection, ``421`` and other ``4xx`` replies, Entra's
    HTTP 429 / 5xx beyond its retries, and a send cancelled between attempts (a Deadline Alert whose trigger ended
    during an outage: the send stops, but keeping the rendered message is a local write, not a further attempt; a
    send is cancelled only before an attempt or in the wait after a temporary failure, never after a permanent
    refusal or a hand-over without a reply). Not kept (empty): a permanent refusal (``5xx``, a credential Entra or
    HVE refused, no STARTTLS, a bad certificate), a message handed over without a reply (HVE may have it: never sent
    twice), a wrong argument. Recipients HVE accepted already are left out.
    """
    from airflow_provider_hve.exceptions import (
        HveAuthError,
        HveCancelledError,
        HveConnectionError,
        HveError,
        HveSendError,
    )

    recipients = list(recipients)
    accepted = {address.lower() for address in getattr(error, "accepted", ())}
    rest = [address for address in recipients if address.lower() not in accepted]
    if isinstance(error, HveCancelledError):
        cause = error.__cause__
        if isinstance(cause, HveError) and not isinstance(cause, HveCancelledError):
            return recipients_to_keep(cause, rest)
        return rest
    if isinstance(error, HveConnectionError):
        return [] if error.permanent or error.in_flight else rest
    if isinstance(error, HveAuthError):
        return rest if error.temporary else []
    if isinstance(error, HveSendError):
        if error.smtp_code is not None and 400 <= error.smtp_code < 500:
            return rest
        later = {address.lower() for address, (code, _) in error.refused.items() if 400 <= code < 500}
        return [address for address in rest if address.lower() in later]
    return []
