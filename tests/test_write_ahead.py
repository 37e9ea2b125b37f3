"""A worker killed outright (SIGKILL) while a mail merge sends: the next try sends nothing twice.

The killed try cannot record anything more; what it recorded before is all the next try has. The delivery log
writes each row's intent before the row is handed over (write-ahead), so a row the killed try may have
delivered is ``unknown`` in the next try, never sent again; every other row is delivered exactly once. The
durable store here is a SQLite file (committed on every write), standing in for ``task_state_store`` or
Airflow Variables, shared by the killed process and the retry like a metadata database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_provider_hve.bulk import MailMerge, TaskStateDeliveryLog
from airflow_provider_hve.bulk.delivery_log import replay
from airflow_provider_hve.bulk.merge import MIN_WRITE_AHEAD
from airflow_provider_hve.connection import DEFAULT_BDAT_WINDOW
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox

ROWS = 200
STALLED_AFTER = 100
ROW_LIST = [{"email": f"wa{n:04d}@contoso.example", "name": f"Person {n}"} for n in range(ROWS)]


class SqliteStore:
    """``task_state_store``'s get / set / delete on a SQLite file: every set is committed before it returns."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT)")

    def get(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    def delete(self, key: str) -> None:
        self._db.execute("DELETE FROM state WHERE key = ?", (key,))


CHILD = textwrap.dedent(
    """
    import logging, sys
    sys.path.insert(0, {tests!r})
    logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format="%(message)s")
    from test_write_ahead import ROW_LIST, SqliteStore
    from airflow_provider_hve.bulk import MailMerge, TaskStateDeliveryLog
    from airflow_provider_hve.hooks.hve import HveHook

    log = TaskStateDeliveryLog(SqliteStore({db!r}), prefix="merge")
    MailMerge(HveHook(hve_conn_id="hve_default"), subject="x", text_content="y", sessions=1, delivery_log=log,
              message_id_seed="dag\\0run\\0merge\\0-1").run(ROW_LIST)
    """
)


def _killed_once(code: str, db: Path, ready: Callable[[subprocess.Popen[bytes]], object]) -> str:
    """
    Run ``code`` (a first try on the store ``db``) in a child process; SIGKILL it once ``ready(child)`` returns;
    return what it printed.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", code.format(tests=str(Path(__file__).parent), db=str(db))],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        ready(child)
        child.send_signal(signal.SIGKILL)
    finally:
        output = child.communicate(timeout=30)[0].decode(errors="replace")
    assert child.returncode == -signal.SIGKILL, output
    return output


def _recorded(path: Path) -> set[str]:
    return TaskStateDeliveryLog(SqliteStore(path), prefix="merge").delivered()


def test_a_merge_killed_while_sending_is_retried_without_sending_anything_twice(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Path
) -> None:
    hve_connection()
    db = tmp_path / "state.sqlite"
    SqliteStore(db)  # the table exists before either process opens it
    # Row 100 is delivered and its 250 held: the killed try cannot know it arrived (the write-ahead case).
    sandbox.smtp.stall_after(STALLED_AFTER, 30)

    def stalled(child: subprocess.Popen[bytes]) -> None:
        sandbox.wait_for_messages(STALLED_AFTER + 1, timeout=60)
        # Killed once its record has not changed for 1.5 s: the try is stuck on the stalled reply.
        deadline, seen, since = time.monotonic() + 30, _recorded(db), time.monotonic()
        while time.monotonic() - since < 1.5:
            assert time.monotonic() < deadline and child.poll() is None, "the first try did not stall"
            time.sleep(0.05)
            if (now := _recorded(db)) != seen:
                seen, since = now, time.monotonic()

    output = _killed_once(CHILD, db, stalled)
    first = len(sandbox.messages)
    # How far ahead of the sessions the killed try wrote intents: its start, or farther if its sessions had to wait
    # for the record (said in its debug log).
    ahead = max([MIN_WRITE_AHEAD, *map(int, re.findall(r"intents now go (\d+) rows ahead", output))])

    # The retry: same record, same Message-IDs, nothing learned from the killed process but the store.
    log = TaskStateDeliveryLog(SqliteStore(db), prefix="merge")
    merge = MailMerge(
        HveHook(hve_conn_id="hve_default"),
        subject="x",
        text_content="y",
        sessions=1,
        delivery_log=log,
        message_id_seed="dag\0run\0merge\0-1",
    )
    report = merge.run(ROW_LIST)
    # The record's cost is in the summary: how many writes, and how long they took in the writer thread.
    assert report.as_dict()["delivery_record_writes"] == report.record_writes
    assert report.record_writes >= 1 or not report.accepted, "rows sent without a record"

    received = Counter(m.rcpt_tos[0] for m in sandbox.messages)
    twice = {address: n for address, n in received.items() if n > 1}
    assert not twice, f"delivered more than once: {twice}"
    # Every outcome read before the stall (all but the stalled BDAT window's) was durable in time.
    assert report.skipped >= STALLED_AFTER - DEFAULT_BDAT_WINDOW
    unknown = set(report.unknown)
    # Row 100 arrived before the kill: the retry does not know, so it is unknown, not sent again.
    assert ROW_LIST[STALLED_AFTER]["email"] in unknown
    # Unknown: what the session held when the worker died (a BDAT window written, the next one gathered, the row
    # taken) and the intents written ahead of it, no more.
    assert len(unknown) <= 2 * DEFAULT_BDAT_WINDOW + ahead, (len(unknown), ahead)
    every = {row["email"] for row in ROW_LIST}
    assert set(received) | unknown == every, "a row was neither delivered nor reported unknown"
    assert report.accepted + report.skipped + len(unknown) == ROWS
    assert len(sandbox.messages) == first + report.accepted
    # The retry's own record: its rows are delivered, the unknown ones stay unknown for a third try.
    assert replay_counts(_recorded(db)) == (ROWS - len(unknown), len(unknown))


def replay_counts(done: set[str]) -> tuple[int, int]:
    unknown = sum(1 for key in done if key.startswith("?"))
    return len(done) - unknown, unknown


def test_the_journal_replays_to_the_last_entry_of_each_row() -> None:
    # accepted; intent only (killed: unknown); released (sent again); unknown; intent then accepted;
    # released in one try, then intent in the next (killed again: unknown).
    entries = ["0:a", ">1:b", ">2:c", "-2:c", "?3:d", ">4:e", "4:e", "-5:f", ">5:f"]
    assert replay(entries) == {"0:a", "?1:b", "?3:d", "4:e", "?5:f"}


SINGLE_CHILD = textwrap.dedent(
    """
    import sys, types
    sys.path.insert(0, {tests!r})
    from test_write_ahead import SqliteStore
    from airflow_provider_hve.operators.hve import HveEmailOperator

    operator = HveEmailOperator(task_id="alert", to="oncall@contoso.example", subject="Disk full", html_content="x")
    ti = types.SimpleNamespace(try_number=1, dag_id="d", run_id="r", task_id="alert", map_index=-1)
    operator.execute({{"task_state_store": SqliteStore({db!r}), "ti": ti}})
    """
)


def test_a_single_send_killed_while_waiting_for_hves_answer_is_not_sent_again(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Path
) -> None:
    # The message is delivered and its 250 held; the worker is killed meanwhile. The retry cannot know whether
    # it arrived: it must not send it again (by default), and its error says why and what to do.
    import pytest

    from airflow_provider_hve.exceptions import HveSendError
    from airflow_provider_hve.operators.hve import HveEmailOperator

    hve_connection()
    db = tmp_path / "state.sqlite"
    SqliteStore(db)
    sandbox.smtp.stall_after(0, 30)
    _killed_once(SINGLE_CHILD, db, lambda child: sandbox.wait_for_messages(1, timeout=60))
    message_id = str(sandbox.messages[0].message["Message-ID"])

    operator = HveEmailOperator(task_id="alert", to="oncall@contoso.example", subject="Disk full", html_content="x")
    import types

    ti = types.SimpleNamespace(try_number=2, dag_id="d", run_id="r", task_id="alert", map_index=-1)
    with pytest.raises(HveSendError, match=rf"try 1 handed {message_id} to HVE .* ended \(its worker died"):
        operator.execute({"task_state_store": SqliteStore(db), "ti": ti})  # type: ignore[arg-type]
    assert len(sandbox.smtp_sessions) == 1, "the retry connected to HVE"
    assert len(sandbox.messages) == 1, "the retry sent the alert a second time"


class RefusingStore(SqliteStore):
    """A store that takes no write (the API server refuses, the database is read-only)."""

    def set(self, key: str, value: Any) -> None:
        raise OSError("the store refused the write")


def test_nothing_is_handed_over_before_its_intent_is_durable(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Path
) -> None:
    # Not even each session's first row: with a store that takes no write, nothing reaches HVE.
    import pytest

    from airflow_provider_hve.exceptions import HveError

    hve_connection()
    log = TaskStateDeliveryLog(RefusingStore(tmp_path / "state.sqlite"), prefix="merge")
    merge = MailMerge(HveHook(hve_conn_id="hve_default"), subject="x", text_content="y", sessions=2, delivery_log=log)
    with pytest.raises(HveError, match="Could not write the mail merge's delivery record"):
        merge.run(ROW_LIST[:50])
    assert not sandbox.messages, "a row was handed over without its intent in the store"
    report = merge.last_report
    assert report is not None and report.accepted == 0 and len(report.not_sent) == 50


def test_a_single_send_interrupted_before_the_hand_over_is_sent_by_the_retry(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Path
) -> None:
    # HVE throttles MAIL FROM (432): the send backs off 2-4 s, and the task's execution_timeout (SIGALRM, as
    # Airflow raises it) strikes during the backoff. Nothing was handed over, so the retry sends the alert: once.
    import logging
    import threading
    import types

    import pytest

    from airflow_provider_hve.operators.hve import HveEmailOperator
    from airflow_provider_hve.sandbox.smtp_server import TOO_MANY_CONNECTIONS

    class Timeout(Exception):
        """Stands in for AirflowTaskTimeout (raised from a SIGALRM handler, as Airflow does)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Timeout("execution_timeout")

    hve_connection()
    db = tmp_path / "state.sqlite"
    sandbox.smtp.throttle(TOO_MANY_CONNECTIONS, command="MAIL", count=1)

    class AlarmInTheBackoff(logging.Handler):
        """Raises the timeout 0.3 s after the send says it backs off (at least 2 s after a 432)."""

        def emit(self, record: logging.LogRecord) -> None:
            if "Sending it again in" in record.getMessage():
                main = threading.main_thread().ident or 0
                threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGALRM)).start()

    handler = AlarmInTheBackoff()
    logging.getLogger("airflow_provider_hve.smtp").addHandler(handler)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        operator = HveEmailOperator(task_id="alert", to="oncall@contoso.example", subject="Disk full", html_content="x")
        ti = types.SimpleNamespace(try_number=1, dag_id="d", run_id="r", task_id="alert", map_index=-1)
        with pytest.raises(Timeout):
            operator.execute({"task_state_store": SqliteStore(db), "ti": ti})  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGALRM, previous)
        logging.getLogger("airflow_provider_hve.smtp").removeHandler(handler)
    assert not sandbox.messages

    ti = types.SimpleNamespace(try_number=2, dag_id="d", run_id="r", task_id="alert", map_index=-1)
    result = operator.execute({"task_state_store": SqliteStore(db), "ti": ti})  # type: ignore[arg-type]
    assert result["accepted"] == ["oncall@contoso.example"]
    assert [m.rcpt_tos for m in sandbox.wait_for_messages(1)] == [["oncall@contoso.example"]]


def test_a_store_that_refuses_writes_stops_both_operators_before_sending_unless_at_least_once(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Path
) -> None:
    # Never a silent downgrade: without a record nothing goes (the error says how to opt out); with
    # at_least_once=True the operators send, and write nothing to the store.
    import types

    import pytest

    from airflow_provider_hve.exceptions import HveError
    from airflow_provider_hve.operators.hve import HveEmailOperator, HveMailMergeOperator

    class CountingRefusingStore(RefusingStore):
        writes = 0

        def set(self, key: str, value: Any) -> None:
            CountingRefusingStore.writes += 1
            super().set(key, value)

    hve_connection()
    ti = types.SimpleNamespace(try_number=1, dag_id="d", run_id="r", task_id="t", map_index=-1)
    ti.xcom_push = lambda **kwargs: None
    context = {"task_state_store": CountingRefusingStore(tmp_path / "state.sqlite"), "ti": ti}
    single = {"task_id": "alert", "to": "oncall@contoso.example", "subject": "Disk full", "html_content": "x"}
    merge = {"task_id": "merge", "recipients": ROW_LIST[:20], "subject": "x", "text_content": "y", "sessions": 2}
    for operator in (HveEmailOperator(**single), HveMailMergeOperator(**merge)):  # type: ignore[arg-type]
        with pytest.raises(HveError, match="set at_least_once=True on the task"):
            operator.execute(context)  # type: ignore[arg-type]
    assert not sandbox.messages, "sent without a record"
    assert CountingRefusingStore.writes >= 2
    CountingRefusingStore.writes = 0
    HveEmailOperator(**single, at_least_once=True).execute(context)  # type: ignore[arg-type]
    summary = HveMailMergeOperator(**merge, at_least_once=True).execute(context)  # type: ignore[arg-type]
    assert summary["accepted"] == 20
    assert len(sandbox.wait_for_messages(21)) == 21
    assert CountingRefusingStore.writes == 0, "at_least_once=True wrote to the store"


def test_a_try_after_one_that_sent_everything_sends_nothing(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Path
) -> None:
    # The try sent everything, then ended before Airflow recorded the success (killed while it cleaned up, or the
    # success not reported): its record says so first, and the next try of either operator sends nothing.
    import types

    from airflow_provider_hve.operators.hve import HveEmailOperator, HveMailMergeOperator

    hve_connection()
    single_store, merge_store = SqliteStore(tmp_path / "single.sqlite"), SqliteStore(tmp_path / "merge.sqlite")
    single = HveEmailOperator(task_id="alert", to="oncall@contoso.example", subject="Disk full", html_content="x")
    merge = HveMailMergeOperator(task_id="merge", recipients=ROW_LIST[:30], subject="x", text_content="y")
    results = []
    for try_number in (1, 2):
        ti = types.SimpleNamespace(try_number=try_number, dag_id="d", run_id="r", task_id="t", map_index=-1)
        ti.xcom_push = lambda **kwargs: None
        sent = single.execute({"task_state_store": single_store, "ti": ti})  # type: ignore[arg-type]
        summary = merge.execute({"task_state_store": merge_store, "ti": ti})  # type: ignore[arg-type]
        results.append((sent, summary))
    (first, _), (sent, summary) = results
    assert sent["accepted"] == [] and sent["message_id"] == first["message_id"]
    assert summary["accepted"] == 0 and summary["skipped_already_delivered"] == 30
    assert len(sandbox.wait_for_messages(31)) == 31
    time.sleep(0.3)
    assert len(sandbox.messages) == 31, "a try after a complete one sent again"


def test_a_resend_of_an_unknown_message_that_fails_keeps_its_message_id_for_the_next_try(
    sandbox: HveSandbox, hve_connection: Callable[..., str], tmp_path: Path
) -> None:
    # Try 1 handed M1 over and lost the answer. Try 2 (resend_unknown=True) resends M1, but HVE refuses MAIL FROM
    # for good. Try 3 must send M1 again, not a message under a new Message-ID (which no mailbox store would take
    # for a copy of M1, should M1 have arrived).
    import types

    import pytest

    from airflow_provider_hve.exceptions import HveSendError
    from airflow_provider_hve.operators.hve import UNKNOWN_OUTCOME_KEY, HveEmailOperator
    from airflow_provider_hve.sandbox.smtp_server import TOO_MANY_CONNECTIONS

    hve_connection(send_retries=0)
    store = SqliteStore(tmp_path / "state.sqlite")
    first = "<unknown.1@contoso.example>"
    store.set(UNKNOWN_OUTCOME_KEY, {"message_id": first, "try_number": 1})
    operator = HveEmailOperator(
        task_id="alert", to="oncall@contoso.example", subject="Disk full", html_content="x", resend_unknown=True
    )
    sandbox.smtp.throttle(TOO_MANY_CONNECTIONS, command="MAIL", count=10)
    ti = types.SimpleNamespace(try_number=2, dag_id="d", run_id="r", task_id="alert", map_index=-1)
    with pytest.raises(HveSendError):
        operator.execute({"task_state_store": store, "ti": ti})  # type: ignore[arg-type]
    assert not sandbox.messages
    sandbox.smtp.reset_faults()
    ti = types.SimpleNamespace(try_number=3, dag_id="d", run_id="r", task_id="alert", map_index=-1)
    result = operator.execute({"task_state_store": store, "ti": ti})  # type: ignore[arg-type]
    (message,) = sandbox.wait_for_messages(1)
    assert result["message_id"] == first and message.message["Message-ID"] == first
