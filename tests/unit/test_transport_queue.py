"""The reply queue without a socket: bytes in, bytes and settled transactions out (sans-I/O).

A small scripted server (:class:`ScriptedServer`) reads what the queue writes and answers one command at a time,
so a ``421`` really means "nothing behind it was carried out", and the end of the connection can come after the
server carried out more than it answered (the case where outcomes are unknown). Hypothesis draws the messages
(1 to 120 recipients: split at 50), each reply, and an EOF or a ``421`` at every position of the reply stream.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_hve.exceptions import HveConnectionError, HveSendError
from airflow_provider_hve.transport import Capabilities, Delivery
from airflow_provider_hve.transport.queue import ReplyQueue
from airflow_provider_hve.transport.replies import ProtocolViolation, ReplyParser

SENDER = "reports@contoso.example"
PAYLOAD = b"Subject: x\r\n\r\nhello\r\n.dot line\r\n"
MODES = ["bdat", "data", "lockstep"]


def queue(mode: str) -> ReplyQueue:
    chunking = mode == "bdat"
    server = Capabilities(pipelining=mode != "lockstep", chunking=chunking)
    return ReplyQueue(SENDER, conn_id="t", server=server, chunking=chunking, pipelining=mode != "lockstep")


def addresses(key: int, count: int) -> list[str]:
    return [f"m{key}r{n}@contoso.example" for n in range(count)]


# -- a scripted server -----------------------------------------------------------------------------------------

Choose = Callable[[str], int]


@dataclass
class ScriptedServer:
    """Answers the client's bytes one command at a time, each reply code chosen by ``choose(command)``."""

    choose: Choose
    buffer: bytes = b""
    in_data: bool = False
    mail_ok: bool = False
    recipients: list[str] = field(default_factory=list)
    delivered: set[str] = field(default_factory=set)
    named: list[str] = field(default_factory=list)  # every RCPT of the current transaction, accepted or not
    content_seen: set[str] = field(default_factory=set)  # recipients named in transactions whose content arrived
    closed: bool = False

    def feed(self, data: bytes) -> None:
        assert not self.closed or not data, "written after the server closed"
        self.buffer += data

    def next_reply(self) -> bytes | None:
        """Carry out the next complete command and return its reply; ``None``: nothing complete."""
        if self.in_data:
            end = (b"\r\n" + self.buffer).find(b"\r\n.\r\n")  # the content may be empty: just ".\r\n"
            if end == -1:
                return None
            self.buffer, self.in_data = self.buffer[end + 3 :], False
            return self._final()
        end = self.buffer.find(b"\r\n")
        if end == -1:
            return None
        line, rest = self.buffer[:end].decode(), self.buffer[end + 2 :]
        if match := re.fullmatch(r"BDAT (\d+) LAST", line):
            size = int(match.group(1))
            if len(rest) < size:
                return None
            self.buffer = rest[size:]
            self.content_seen.update(self.named)
            return self._final() if self.mail_ok and self.recipients else b"503 5.5.1 No valid recipients\r\n"
        self.buffer = rest
        return self._command(line)

    def _command(self, line: str) -> bytes:
        verb = line.split(":")[0].split(" ")[0]
        if verb == "MAIL":
            code = self.choose("MAIL")
            self.mail_ok, self.recipients, self.named = code == 250, [], []
            return f"{code} {'2.1.0 ok' if code == 250 else _TEXT[code]}\r\n".encode()
        if verb == "RCPT":
            self.named.append(line[len("RCPT TO:<") : -1])
            if not self.mail_ok:
                return b"503 5.5.1 Need MAIL\r\n"
            code = self.choose("RCPT")
            if code == 250:
                self.recipients.append(line[len("RCPT TO:<") : -1])
            return f"{code} {'2.1.5 ok' if code == 250 else _TEXT[code]}\r\n".encode()
        if verb == "DATA":
            if not self.mail_ok:
                return b"503 5.5.1 Need MAIL\r\n"
            self.in_data = True
            return b"354 go ahead\r\n"
        if verb == "RSET":
            self.mail_ok, self.recipients = False, []
            return b"250 2.0.0 reset\r\n"
        assert verb == "NOOP", line
        return b"250 2.0.0 ok\r\n"

    def _final(self) -> bytes:
        self.content_seen.update(self.named)
        code = self.choose("final") if self.recipients else 554
        if code == 250:
            self.delivered.update(self.recipients)
        self.mail_ok, self.recipients = False, []
        return f"{code} {'2.0.0 queued' if code == 250 else _TEXT[code]}\r\n".encode()

    def run_to_end(self) -> None:
        """Carry out everything received without answering (the connection ends before the replies)."""
        while self.next_reply() is not None:
            pass


_TEXT = {
    451: "4.3.0 Try again later",
    550: "5.1.1 User unknown",
    554: "5.2.0 Quota exceeded",
    552: "5.3.4 Message too big",
    530: "5.7.57 Client not authenticated",
    553: "5.7.60 SendAs denied",
}


# -- the driver: what Pipeline/BdatPipeline do, without the socket ---------------------------------------------


@dataclass
class Run:
    mode: str
    server: ScriptedServer
    fault_at: int | None = None
    fault: str = "eof"
    window: int = 4
    replies: int = 0
    q: ReplyQueue = field(init=False)
    completed: list[Delivery] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.q = queue(self.mode)

    def write(self, transactions: int | None = None) -> None:
        self.server.feed(self.q.bytes_to_write(transactions))

    def read_one(self) -> None:
        """Feed the next reply (or the fault) to the queue."""
        if self.fault_at is not None and self.replies >= self.fault_at:
            if self.fault == "421":  # carries out nothing more
                self.server.closed = True
                self.q.receive(b"421 4.3.2 Service not available, closing\r\n")
                raise AssertionError("a 421 did not break the connection")
            self.server.run_to_end()  # carried out what it got, answered nothing
            self.server.closed = True
            raise self.q.receive_eof()
        reply = self.server.next_reply()
        assert reply is not None, "the queue waits for a reply to nothing it wrote"
        self.replies += 1
        half = len(reply) // 2  # in two pieces: a reply cut by the network is put together again
        self.q.receive(reply[:half])
        self.q.receive(reply[half:])

    def read_all(self) -> None:
        while self.q.expecting:
            self.read_one()

    def submit(self, key: int, count: int) -> None:
        prepared = self.q.prepare(key, PAYLOAD, addresses(key, count), f"<{key}@x>")
        assert prepared is not None
        if self.mode == "bdat":
            self.q.enqueue(prepared)
            while self.q.unanswered and self.q.unanswered + self.q.gathered > self.window:
                self.read_one()
            self.write()
            return
        for batch in prepared.batches:
            self.read_all()
            self.q.enqueue(prepared, batch)
            self.write()
            while self.mode == "lockstep" and (self.q.has_unwritten or self.q.expecting):
                self.read_all()
                self.write()

    def flush(self) -> None:
        while self.q.has_unwritten or self.q.expecting:
            self.read_all()
            self.write()


@dataclass
class Outcome:
    completed: list[Delivery]
    unknown: list[int]
    unsent: list[int]
    error: BaseException | None


def run(run: Run, messages: list[int]) -> Outcome:
    try:
        for key, count in enumerate(messages):
            run.submit(key, count)
            run.completed += run.q.take_completed()
        run.flush()
    except HveConnectionError as exc:
        return Outcome(run.completed + exc.completed, list(exc.in_flight), list(exc.unsent), exc)
    except HveSendError as exc:  # the sender refused: what is open was not sent, nothing is in flight
        assert run.q.in_flight == []
        return Outcome(run.completed + exc.completed, [], [d.key for d in run.q.unsent], exc)
    return Outcome(run.completed + run.q.take_completed(), [], [], None)


def check_accounting(outcome: Outcome, messages: list[int], server: ScriptedServer) -> None:
    """Every recipient of a submitted message ends exactly once: accepted, refused, unknown or unsent."""
    submitted = {key for key in range(len(messages))}
    completed = {d.key: d for d in outcome.completed}
    assert len(completed) == len(outcome.completed), "a message completed twice"
    unknown, unsent = set(outcome.unknown), set(outcome.unsent)
    assert not (unknown & unsent) and not (set(completed) & (unknown | unsent))
    for key, delivery in completed.items():
        everyone = set(addresses(key, messages[key]))
        assert not (set(delivery.accepted) & set(delivery.refused))
        assert set(delivery.accepted) | set(delivery.refused) == everyone
    ended = set(completed) | unknown | unsent
    assert ended <= submitted
    if outcome.error is None:
        assert set(completed) == submitted
    accepted = {a for d in outcome.completed for a in d.accepted}
    maybe = {a for key in unknown for a in addresses(key, messages[key])}
    # Reported accepted: delivered. Delivered: reported accepted, or unknown (never reported unsent or refused).
    assert accepted <= server.delivered
    assert server.delivered <= accepted | maybe
    # Unknown only where content reached the server.
    for key in unknown:
        assert set(addresses(key, messages[key])) & server.content_seen, f"message {key} unknown, never written"


def chooser(data: st.DataObject, weights: dict[str, list[int]]) -> Choose:
    def choose(command: str) -> int:
        return data.draw(st.sampled_from(weights[command]), label=command)

    return choose


HEALTHY = {"MAIL": [250], "RCPT": [250], "final": [250]}
MIXED = {"MAIL": [250, 250, 250, 250, 451, 552], "RCPT": [250, 250, 250, 550], "final": [250, 250, 250, 451, 554]}
SESSION_ENDING = {"MAIL": [250, 250, 250, 250, 250, 553, 530], "RCPT": [250, 550], "final": [250, 250, 451]}


# -- examples --------------------------------------------------------------------------------------------------


def test_the_queue_cuts_complete_replies_and_keeps_the_rest() -> None:
    parser = ReplyParser()
    replies = parser.feed(b"250-first\r\n250 second\r\n354 go\r\n25")
    assert [(r.code, r.text) for r in replies] == [(250, "first\nsecond"), (354, "go")] and parser.buffered == 2


@pytest.mark.parametrize(
    "data",
    [b"250-" + b"x" * 9000 + b"\r\n", b"250-x\r\n" * 300, b"hello\r\n", b"250-" + b"x" * 70000],
    ids=["long-line", "many-lines", "not-a-reply", "endless-line"],
)
def test_replies_are_bounded(data: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ReplyParser().feed(data)


def test_endless_250_lines_break_the_connection_without_growing() -> None:
    q = queue("bdat")
    prepared = q.prepare(1, PAYLOAD, ["a@contoso.example"])
    assert prepared is not None
    q.enqueue(prepared)
    q.bytes_to_write()
    with pytest.raises(HveConnectionError) as caught:
        for _ in range(1000):
            q.receive(b"250-" + b"x" * 500 + b"\r\n")
    assert caught.value.in_flight == [1]


def test_a_bdat_transaction_is_one_write_and_settles_on_its_final_reply() -> None:
    q = queue("bdat")
    prepared = q.prepare("k", PAYLOAD, ["a@contoso.example", "b@contoso.example"])
    assert prepared is not None
    q.enqueue(prepared)
    wire = q.bytes_to_write()
    assert wire.startswith(b"MAIL FROM:<reports@contoso.example>\r\nRCPT TO:<a@contoso.example>\r\n")
    assert wire.endswith(b"BDAT %d LAST\r\n" % len(PAYLOAD) + PAYLOAD + b"RSET\r\n")
    assert q.in_flight and q.unanswered == 1
    events = q.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 queued\r\n")
    assert [e.deferred for e in events] == [False] and q.unanswered == 1  # its RSET reply still to come
    (delivery,) = q.take_completed()
    assert delivery.accepted == ["a@contoso.example"]
    assert delivery.refused == {"b@contoso.example": (550, "5.1.1 unknown")}
    q.receive(b"250 reset\r\n")
    assert q.unanswered == 0 and not q.expecting


def test_data_content_waits_for_its_354_and_goes_with_the_next_commands() -> None:
    q = queue("data")
    for key in (1, 2):
        prepared = q.prepare(key, PAYLOAD, [f"u{key}@contoso.example"])
        assert prepared is not None
        q.enqueue(prepared)
    first = q.bytes_to_write()
    assert first.endswith(b"DATA\r\n") and b"u2@" not in first  # message 2 waits for message 1's 354
    q.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    second = q.bytes_to_write()
    assert second.startswith(b"Subject: x\r\n\r\nhello\r\n..dot line\r\n.\r\nMAIL FROM:")  # dot-stuffed, then message 2
    assert [d.key for d in q.in_flight] == [1]


def test_a_421_leaves_nothing_unknown_and_a_silent_end_leaves_the_window_unknown() -> None:
    for ending, unknown in ((b"421 4.3.2 closing\r\n", []), (None, [1, 2])):
        q = queue("bdat")
        for key in (0, 1, 2):
            prepared = q.prepare(key, PAYLOAD, [f"u{key}@contoso.example"])
            assert prepared is not None
            q.enqueue(prepared)
        q.bytes_to_write()
        q.receive(b"250 ok\r\n250 ok\r\n250 queued\r\n250 reset\r\n")
        with pytest.raises(HveConnectionError) as caught:
            if ending is None:
                raise q.receive_eof()
            q.receive(ending)
        assert caught.value.in_flight == unknown
        assert sorted(caught.value.unsent) == sorted({1, 2} - set(unknown))
        assert [d.key for d in caught.value.completed] == [0]


def test_a_refused_sender_is_raised_once_the_window_is_read() -> None:
    q = queue("bdat")
    for key in (0, 1):
        prepared = q.prepare(key, PAYLOAD, [f"u{key}@contoso.example"])
        assert prepared is not None
        q.enqueue(prepared)
    q.bytes_to_write()
    q.receive(b"553 5.7.60 SendAs denied\r\n503 need MAIL\r\n503 need MAIL\r\n250 reset\r\n")  # no raise yet
    with pytest.raises(HveSendError, match="5.7.60") as caught:
        q.receive(b"250 ok\r\n250 ok\r\n250 queued\r\n250 reset\r\n")
    assert [d.key for d in caught.value.completed] == [1]


# -- properties ------------------------------------------------------------------------------------------------

MESSAGES = st.lists(st.integers(1, 120), min_size=1, max_size=6)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=MESSAGES, data=st.data())
def test_every_recipient_ends_exactly_once(mode: str, messages: list[int], data: st.DataObject) -> None:
    weights = data.draw(st.sampled_from([HEALTHY, MIXED, SESSION_ENDING]), label="server")
    server = ScriptedServer(chooser(data, weights))
    window = data.draw(st.integers(1, 8), label="window")
    outcome = run(Run(mode, server, window=window), messages)
    check_accounting(outcome, messages, server)


@pytest.mark.parametrize("fault", ["eof", "421"])
@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=MESSAGES, data=st.data())
def test_a_fault_at_any_reply_loses_and_duplicates_nothing(
    mode: str, fault: str, messages: list[int], data: st.DataObject
) -> None:
    weights = data.draw(st.sampled_from([HEALTHY, MIXED]), label="server")
    total = sum(m + 3 + (m - 1) // 50 * 3 for m in messages) + 10  # about the replies of the whole run
    fault_at = data.draw(st.integers(0, total), label="fault at reply")
    server = ScriptedServer(chooser(data, weights))
    outcome = run(Run(mode, server, fault_at=fault_at, fault=fault, window=data.draw(st.integers(1, 8))), messages)
    check_accounting(outcome, messages, server)
    if fault == "421" and outcome.error is not None:
        # The commands behind the 421 were not carried out: nothing unknown, and nothing accepted after it.
        assert outcome.unknown == []


@pytest.mark.parametrize("mode", MODES)
def test_a_fault_at_every_position_of_a_split_message(mode: str) -> None:
    messages = [3, 120, 51, 1]
    total = sum(messages) + 20  # past the last reply: no fault at all
    for fault in ("eof", "421"):
        for position in range(total):
            server = ScriptedServer(lambda command: 250)
            outcome = run(Run(mode, server, fault_at=position, fault=fault, window=3), messages)
            check_accounting(outcome, messages, server)
            if fault == "421":
                assert outcome.unknown == []
