"""tests/warm.py: its children end as a Python process does, and none outlives the session."""

from __future__ import annotations

import atexit
import signal
import time
from pathlib import Path

from tests import warm


def _leave_a_mark_at_exit(path: str) -> None:
    atexit.register(Path(path).write_text, "atexit ran")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_a_child_runs_its_atexit_handlers(tmp_path: Path) -> None:
    # The provider's own clean-up (and Airflow's) is registered with atexit: a child must run it, as python -m does.
    mark = tmp_path / "mark"
    done = warm.start(_leave_a_mark_at_exit, str(mark)).wait(120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert mark.read_text() == "atexit ran"


def test_a_child_not_waited_for_is_killed_at_the_end_of_the_session() -> None:
    warm.stop_all()  # what an earlier failed test left is not this test's to count
    child = warm.start(_sleep, 600)  # as a test that fails before it waits for its child
    assert child.process.is_alive()
    assert warm.stop_all() == 1  # what pytest_sessionfinish (tests/conftest.py) calls
    assert child.process.exitcode == -signal.SIGKILL
    assert not any(Path(file.name).exists() for file in child._files)
    assert warm.stop_all() == 0
