"""
The reply queue: the SMTP client's protocol state, fed bytes, giving bytes and events. No I/O, no clock.

Every command written enqueues the reply it expects and what that reply settles: ``MAIL``, each ``RCPT``, then
``DATA`` (whose ``354`` releases the content, whose own reply is the final one) or ``BDAT ... LAST`` (the final
reply itself), ``RSET`` and ``NOOP``. Replies come back in the order of the commands (RFC 2920), so the queue
is a FIFO: the first reply received answers the first command not answered yet.

The loop around it (:mod:`~airflow_provider_hve.transport.loop`) writes :meth:`ReplyQueue.bytes_to_write` and
feeds what it reads to :meth:`ReplyQueue.receive`; tests feed bytes directly
(``tests/unit/test_transport_queue.py``).

The accounting of a broken connection is here, in one place: a transaction whose content was written and whose
final reply was not read is *unknown* (:attr:`ReplyQueue.in_flight`: HVE may have delivered it, it is never sent
again); a message with nothing handed over is *unsent* (safe to send again); a message over 50 recipients whose
earlier batches were accepted completes *partly delivered*. A ``421`` answers one command and the server closes:
the commands behind it were neither carried out nor answered, so nothing unanswered was accepted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field

from airflow_provider_hve.diagnostics import smtp_reply_hint
from airflow_provider_hve.exceptions import HveConnectionError, HveSendError
from airflow_provider_hve.transport.envelope import Capabilities, Delivery, Prepared, dot_stuffed, prepare
from airflow_provider_hve.transport.replies import ProtocolViolation, ReplyParser
from airflow_provider_hve.transport.transactions import (
    STOPPED_BEFORE_THIS_BATCH,
    Transaction,
    Verdict,
    after_bdat,
    after_data_commands,
    bdat_group,
    data_commands,
)

CONTENT = "content"
"""The command name of a DATA transaction's content (its reply is the final one)."""


@dataclass(eq=False)
class Expected:
    """A reply the queue waits for: to which command, of which transaction."""

    command: str
    transaction: Transaction | None = None


@dataclass(eq=False)
class Unit:
    """Bytes to write and the replies they will bring."""

    data: bytes
    expects: list[Expected]
    transaction: Transaction | None = None
    hands_over: bool = False
    """Once written (from its first byte), HVE may deliver the transaction: its outcome is unknown until answered."""
    opens: bool = False
    """Writes a new transaction's commands (what the window counts)."""


@dataclass(frozen=True)
class Settled:
    """An event of :meth:`ReplyQueue.receive`: a transaction written is settled (its final reply read)."""

    transaction: Transaction
    deferred: bool


@dataclass
class OpenMessage:
    """A submitted message whose transactions are not all finished."""

    delivery: Delivery
    recipients: Sequence[str]
    transactions_left: int


@dataclass
class Stop:
    """A reply that ends the session, raised once every reply written before it is read."""

    code: int
    reply: str


@dataclass
class Ledger:
    """The messages of one queue: open, handed over, completed (kept until the caller takes them)."""

    open: dict[int, OpenMessage] = field(default_factory=dict)  # by id(delivery)
    # Per transaction, not per message: one batch of a split message may be delivered and the next refused.
    handed_over: dict[int, Transaction] = field(default_factory=dict)
    # BDAT transactions written whose last reply (to their RSET) is not read: what the window counts.
    unanswered: dict[int, Transaction] = field(default_factory=dict)
    completed: list[Delivery] = field(default_factory=list)


class ReplyQueue:
    """
    The protocol state of one pipelined SMTP session after AUTH: bytes in, bytes and settled transactions out.

    :param sender: the envelope sender (MAIL FROM).
    :param conn_id: the connection id, for error messages.
    :param server: what the server's EHLO offers.
    :param chunking: send BDAT transactions (the server offers CHUNKING and PIPELINING).
    :param pipelining: write the commands of a DATA transaction together (else one at a time, in lockstep).

    Example::

        queue = ReplyQueue("reports@contoso.com", conn_id="c", server=Capabilities(pipelining=True, chunking=True),
                           chunking=True, pipelining=True)
        queue.enqueue(queue.prepare(1, b"Subject: x\\r\\n\\r\\nhi\\r\\n", ["a@contoso.com"]))
        wire = queue.bytes_to_write()
        events = queue.receive(b"250 ok\\r\\n250 ok\\r\\n250 queued\\r\\n250 reset\\r\\n")
    """

    def __init__(
        self,
        sender: str,
        *,
        conn_id: str,
        server: Capabilities,
        chunking: bool,
        pipelining: bool,
        server_name: str = "",
    ) -> None:
        self.sender = sender
        self.conn_id = conn_id
        self.server = server
        self.server_name = server_name or "HVE"
        self.chunking = chunking
        self.pipelining = pipelining or chunking
        self.transactions = 0
        self.closing = False  # drain(): write nothing more, not even what a reply calls for
        self.just_written: list[Transaction] = []  # the transactions the last bytes_to_write() opened
        self._unwritten: deque[Unit] = deque()
        self._expected: deque[Expected] = deque()
        self._parser = ReplyParser()  # bounded: no server makes the client grow
        self._stop: Stop | None = None
        self._ledger = Ledger()

    # -- what is submitted ----------------------------------------------------------------------------------

    def prepare(
        self, key: Hashable, payload: bytes, recipients: Sequence[str], message_id: str = ""
    ) -> Prepared | None:
        """Check and open a message; return ``None`` when it completed at once (too big: nothing to write)."""
        prepared = prepare(
            key, payload, recipients, message_id, sender=self.sender, server=self.server, conn_id=self.conn_id
        )
        if isinstance(prepared, Delivery):
            self._ledger.completed.append(prepared)
            return None
        self._ledger.open[id(prepared.delivery)] = OpenMessage(prepared.delivery, recipients, len(prepared.batches))
        return prepared

    def enqueue(self, prepared: Prepared, batch: Sequence[str] | None = None) -> Transaction:
        """Queue one transaction of a prepared message (every batch when ``batch`` is ``None``, the last returned)."""
        transaction = Transaction(prepared.delivery, prepared.batches[0])
        for recipients in prepared.batches if batch is None else [batch]:
            transaction = Transaction(prepared.delivery, recipients)
            self.transactions += 1
            if self.chunking:
                self._unwritten.append(self._bdat_unit(prepared, transaction))
            else:
                transaction.content = dot_stuffed(prepared.payload)
                self._unwritten.extend(self._data_units(prepared, transaction))
        return transaction

    def _bdat_unit(self, prepared: Prepared, transaction: Transaction) -> Unit:
        expects = [Expected("MAIL", transaction)] + [Expected("RCPT", transaction) for _ in transaction.recipients]
        expects += [Expected("BDAT", transaction), Expected("RSET", transaction)]
        data = bdat_group(self.sender, prepared.parameters, transaction, prepared.payload)
        return Unit(data, expects, transaction, hands_over=True, opens=True)

    def _data_units(self, prepared: Prepared, transaction: Transaction) -> list[Unit]:
        commands = data_commands(self.sender, prepared.parameters, transaction)
        names = ["MAIL"] + ["RCPT"] * len(transaction.recipients) + ["DATA"]
        expects = [Expected(name, transaction) for name in names]
        if self.pipelining:
            return [Unit(b"".join(commands), expects, transaction, opens=True)]
        units = [Unit(command, [expected], transaction) for command, expected in zip(commands, expects, strict=True)]
        units[0].opens = True
        return units

    def probe(self) -> None:
        """
        Queue a ``NOOP`` before anything else: its reply proves the session alive (anything but 250 breaks it).

        Only between transactions (nothing expected, no DATA content waiting): the server reads it as a command.
        """
        self._unwritten.appendleft(Unit(b"NOOP\r\n", [Expected("NOOP")]))

    # -- what is written ------------------------------------------------------------------------------------

    def bytes_to_write(self, transactions: int | None = None) -> bytes:
        """
        Return what may be written now, and count it written (handed over from its first byte).

        :param transactions: how many new transactions may go (the window's room); ``None``: no limit.
        """
        out: list[bytes] = []
        self.just_written = []
        while self._unwritten and self._stop is None and self._may_write(self._unwritten[0], transactions):
            unit = self._unwritten.popleft()
            transactions = transactions - 1 if transactions is not None and unit.opens else transactions
            self._expected.extend(unit.expects)
            if unit.transaction is not None and unit.opens:
                self.just_written.append(unit.transaction)
                if self.chunking:
                    self._ledger.unanswered[id(unit.transaction)] = unit.transaction
            if unit.hands_over and unit.transaction is not None:
                self._ledger.handed_over[id(unit.transaction)] = unit.transaction
            out.append(unit.data)
            if not self.pipelining:
                break
        return b"".join(out)

    def _may_write(self, unit: Unit, transactions: int | None) -> bool:
        if not self.pipelining and self._expected:
            return False  # lockstep: one command, then its reply
        if unit.opens and transactions is not None and transactions <= 0:
            return False
        # DATA: the next transaction's commands wait for the content of the one before (released by its 354).
        return not (unit.opens and not self.chunking and any(e.command == "DATA" for e in self._expected))

    def drop_unwritten(self) -> None:
        """Forget what is not written (:meth:`Pipeline.drain`): certainly not accepted; write nothing more."""
        self._unwritten.clear()
        self.closing = True

    # -- what is read ---------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Settled]:
        """
        Take bytes read from the server; return the transactions they settled.

        :raises HveSendError: the server refused the sender (raised once every reply written before is read).
        :raises HveConnectionError: a ``421``, a ``530``, a failed ``NOOP``, or bytes that are not a reply.
        """
        try:
            replies = self._parser.feed(data)
        except ProtocolViolation as exc:
            raise self.broken(exc) from exc
        if len(replies) > len(self._expected):
            # More replies than commands written (a server cannot answer what it has not read): matched in order,
            # the extra one would shift every reply after it by one (a refused message read as accepted). Checked
            # before any of them is applied: what was handed over stays unknown.
            reply = replies[len(self._expected)]
            raise self.broken(None, f"{reply.code} {reply.text} (a reply to no command)")
        events: list[Settled] = []
        for reply in replies:
            events += self._on_reply(self._expected.popleft(), reply.code, reply.text)
        if self._stop is not None and not self._expected:
            raise self._stopped(self._stop)
        return events

    def receive_eof(self) -> HveConnectionError:
        """Return the error for a connection the server closed (to raise)."""
        return self.broken(ConnectionResetError("the server closed the connection"))

    @property
    def expecting(self) -> int:
        """How many replies are due for what was written."""
        return len(self._expected)

    @property
    def unanswered(self) -> int:
        """How many BDAT transactions were written and not answered to the last reply (what the window counts)."""
        return len(self._ledger.unanswered)

    @property
    def unknown(self) -> int:
        """How many transactions were handed over and not answered (their outcome unknown if the connection broke)."""
        return len(self._ledger.handed_over)

    @property
    def gathered(self) -> int:
        """How many transactions are queued and not written."""
        return sum(1 for unit in self._unwritten if unit.opens)

    @property
    def has_unwritten(self) -> bool:
        """Something is queued and not written (a transaction, a DATA content, an RSET)."""
        return bool(self._unwritten)

    def _on_reply(self, expected: Expected, code: int, text: str) -> list[Settled]:
        if code == 421:
            # The server closes: nothing unanswered was carried out (never unknown, sent again).
            self._ledger.handed_over.clear()
            raise self.broken(None, f"{code} {text}")
        transaction = expected.transaction
        if expected.command == "NOOP" and code != 250:
            raise self.broken(None, f"{code} {text}")
        if transaction is None:
            return []  # RSET, NOOP
        if expected.command == "RSET":  # the last reply of a BDAT transaction: the window has room again
            self._ledger.unanswered.pop(id(transaction), None)
            return []
        if expected.command == CONTENT:
            return self._finish(transaction, code, text)
        transaction.replies.append((code, text))
        if expected.command == "MAIL" and code != 250:
            # Refused before any content was taken: certainly not delivered, even if the connection ends before
            # the replies to its RCPTs and BDAT (an idle server's "451 4.7.0 Timeout", then the end).
            self._ledger.handed_over.pop(id(transaction), None)
            if not self.pipelining:  # lockstep: its RCPT and DATA are not written
                self._unwritten = deque(u for u in self._unwritten if u.transaction is not transaction)
                return self._decided(transaction, after_data_commands(transaction))
        if expected.command == "BDAT":
            return self._decided(transaction, after_bdat(transaction))
        if expected.command == "DATA":
            return self._decided(transaction, after_data_commands(transaction))
        return []

    def _decided(self, transaction: Transaction, verdict: Verdict) -> list[Settled]:
        """Apply what a transaction's command replies decided."""
        if verdict.stop is not None:
            self._stop = self._stop or Stop(*verdict.stop)  # the first refusal is the one to report
            return [Settled(transaction, deferred=True)]
        if verdict.then and not self.closing:
            expected = Expected("RSET") if verdict.final is not None else Expected(CONTENT, transaction)
            unit = Unit(verdict.then, [expected], transaction, hands_over=verdict.hands_over)
            self._unwritten.appendleft(unit)  # right after the 354 (or the refusal), before anything else
        if verdict.final is None:
            return []
        return self._finish(transaction, *verdict.final, deferred=verdict.deferred)

    def _finish(self, transaction: Transaction, code: int, reply: str, *, deferred: bool = False) -> list[Settled]:
        delivery = transaction.delivery
        self._ledger.handed_over.pop(id(transaction), None)
        if code == 250:
            delivery.accepted.extend(transaction.accepted)
        else:
            if transaction.accepted:
                delivery.whole = (code, reply)
                deferred = True
            for address in transaction.accepted:
                delivery.refused[address] = (code, reply)
        message = self._ledger.open[id(delivery)]
        message.transactions_left -= 1
        if message.transactions_left <= 0:
            del self._ledger.open[id(delivery)]
            # Kept until handed to the caller: an error later in the same call must not lose it.
            self._ledger.completed.append(delivery)
        return [Settled(transaction, deferred)]

    # -- outcomes -------------------------------------------------------------------------------------------

    def take_completed(self) -> list[Delivery]:
        """Return the deliveries completed since the last call."""
        completed, self._ledger.completed = self._ledger.completed, []
        return completed

    @property
    def in_flight(self) -> list[Delivery]:
        """
        Messages whose content was handed to the server but whose outcome is not known yet.

        After a broken connection these may or may not have been delivered: resending them risks a duplicate. A
        message whose content was not written yet is not in flight and can be sent again.
        """
        unanswered = {id(transaction.delivery) for transaction in self._ledger.handed_over.values()}
        return [message.delivery for key, message in self._ledger.open.items() if key in unanswered]

    @property
    def unsent(self) -> list[Delivery]:
        """Open messages nothing of which is handed over without an answer: certainly not accepted, safe to resend."""
        unknown = {id(delivery) for delivery in self.in_flight}
        return [message.delivery for key, message in self._ledger.open.items() if key not in unknown]

    def complete_partly_delivered(self, why: tuple[int, str], skip: Collection[int] = ()) -> int:
        """
        Complete each open message that some recipients certainly got (an earlier 50-recipient batch accepted)
        and the others certainly did not, its unanswered recipients refused with ``why``; return how many.
        """
        partly = 0
        for key, message in list(self._ledger.open.items()):
            if key in skip or not message.delivery.accepted:
                continue
            answered = {*message.delivery.accepted, *message.delivery.refused}
            message.delivery.refused.update({a: why for a in message.recipients if a not in answered})
            del self._ledger.open[key]
            self._ledger.completed.append(message.delivery)
            partly += 1
        return partly

    def _stopped(self, stop: Stop) -> HveConnectionError | HveSendError:
        self._stop = None
        if stop.code == 530:  # the session lost its authentication; a new session fixes it
            return self.broken(None, f"{stop.code} {stop.reply}")
        return self.sender_refused(stop.code, stop.reply)

    def sender_refused(self, code: int, reply: str) -> HveSendError:
        """
        The error for a refused sender: nothing more is sent in this session, so a message over 50 recipients an
        earlier batch of which was accepted completes partly delivered (the refused batch with HVE's reply, the
        batches not written with ``451 4.4.2 Not sent``); every delivery read goes with the error.
        """
        self.complete_partly_delivered(STOPPED_BEFORE_THIS_BATCH)
        return HveSendError(
            f"HVE refused MAIL FROM:<{self.sender}> (connection {self.conn_id!r}): {code} "
            f"{reply}.{smtp_reply_hint(code, reply)} Nothing more is sent in this session.",
            smtp_code=code,
            completed=self.take_completed(),
        )

    def broken(self, exc: BaseException | None, reply: str | None = None) -> HveConnectionError:
        """
        The error for a broken connection: each open message is unknown (a transaction handed over without a
        final reply), partly delivered (completed: an earlier batch accepted, the rest refused with the reply,
        temporary), or not delivered at all (unsent, safe to send again).
        """
        in_flight = self.in_flight
        unknown_ids = {id(delivery) for delivery in in_flight}
        # Certainly delivered to some recipients, certainly not to the others: a result, not a resend.
        partly = self.complete_partly_delivered(temporary_reason(exc, reply), skip=unknown_ids)
        unsent = self.unsent
        unknown = ", ".join(d.message_id or str(d.key) for d in in_flight) or "none"
        code = reply_code(reply or "")
        cause = f"{reply}.{smtp_reply_hint(code, (reply or '')[4:])}" if reply else f"{type(exc).__name__}: {exc}."
        partial = f" {partly} partly delivered (some recipients accepted, the others not sent)." if partly else ""
        return HveConnectionError(
            f"The connection to HVE broke (connection {self.conn_id!r}): {cause} Messages whose outcome is "
            f"unknown (may have been delivered): {unknown}; {len(unsent)} not delivered, safe to send again."
            f"{partial}",
            in_flight=[d.key for d in in_flight],
            unsent=[d.key for d in unsent],
            completed=self.take_completed(),
        )


def temporary_reason(exc: BaseException | None, reply: str | None) -> tuple[int, str]:
    """
    What the recipients of a partly delivered message who did not get it are refused with: always a temporary
    reply (the reply itself when it is one, e.g. 421), so that they are sent again.
    """
    code = reply_code(reply or "")
    if code is not None and 400 <= code < 500 and reply is not None:
        return code, reply[4:]
    return 451, f"4.4.2 Not sent: the connection to HVE broke first ({reply or type(exc).__name__})"


def reply_code(text: str) -> int | None:
    """Return the reply code of ``"421 4.3.2 ..."``-like text, or None when it does not start with one."""
    code = text.partition(" ")[0]
    return int(code) if len(code) == 3 and code.isascii() and code.isdecimal() else None
