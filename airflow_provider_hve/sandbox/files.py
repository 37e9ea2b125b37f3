"""Private files and folders: the sandbox's keys, tokens and delivered mail are readable by their owner only."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """
    Create ``path`` and any missing parents with mode 0700 (whatever the umask), and return it.

    Folders that exist already are left as they are: they are the user's.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        # The mode is given at creation (the umask can only narrow it): no moment at 0755.
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, DIR_MODE)
    return path


def write_private(path: Path, data: bytes) -> None:
    """
    Write ``data`` to ``path`` as a file of mode 0600 from its first byte, replacing it atomically.

    The bytes go to a new file created 0600 in the same folder (``O_EXCL``, never a symlink's target), which
    then replaces ``path``: a reader sees the old file or the new one, never a key readable by others or half a
    token, and the file is never written first and restricted afterwards.
    """
    # One name per process and thread: two writers of the same file never share a temporary one.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # left by a killed run with the same process and thread ids
    descriptor = os.open(temporary, flags, FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
