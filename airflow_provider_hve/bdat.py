"""Windows of BDAT transactions (RFC 3030 CHUNKING over RFC 2920 PIPELINING) on one authenticated connection.

With DATA the client must wait for ``354`` before the content, so a stream of messages costs one round trip
each. With CHUNKING the content follows ``BDAT <n> LAST`` without waiting, so a whole transaction is one write:
``MAIL FROM``, every ``RCPT TO``, ``BDAT <n> LAST`` with the content, and ``RSET``. :class:`BdatPipeline` gathers
up to ``window`` such transactions, writes them at once, and reads their replies (in order) just before it
writes the next window: one round trip per window instead of one per message.

The ``RSET`` ending each transaction keeps one refused transaction from spoiling the next one already on the
wire: RFC 3030 leaves open whether a refused ``BDAT ... LAST`` (no recipient accepted) ends the transaction,
and without the RSET the next pipelined ``MAIL FROM`` could meet ``503 nested MAIL``. It costs a reply line,
not a round trip.

The window starts at one transaction and doubles after each window HVE took without deferring anything, up to
``window`` (TCP's slow start, roughly); a whole transaction refused or deferred (throttling, a quota) brings it
back to one. So a throttled or failing session behaves like one with ``window=1``, and a healthy one reaches its full
window after a few round trips.

The trade-off of the window: every transaction written and not answered is handed over, so when the connection
breaks, up to ``window`` messages have an unknown outcome (never sent again: no duplicates). ``window=1`` keeps
one message in flight, as the DATA pipeline does.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from airflow_provider_hve.connection import DEFAULT_BDAT_WINDOW, MAX_BDAT_WINDOW
from airflow_provider_hve.pipeline import (
    _ACCEPTED_RCPT,
    Delivery,
    Pipeline,
    _Transaction,
)
from airflow_provider_hve.pipeline import refuses_the_message as _refuses_the_message

if TYPE_CHECKING:
    import smtplib


class BdatPipeline(Pipeline):
    """
    Send messages as pipelined ``BDAT`` transactions, ``window`` at a time; same interface as :class:`Pipeline`.

    :param smtp: the connection, after STARTTLS, EHLO and AUTH; the server offers PIPELINING and CHUNKING.
    :param sender: the envelope sender (MAIL FROM).
    :param conn_id: the connection id, for error messages.
    :param window: how many transactions are written before their replies are read (1 or more).

    Example::

        pipeline = BdatPipeline(smtp, "reports@contoso.com", conn_id="hve_default", window=16)
        for n, (payload, recipients) in enumerate(outbox):
            done.extend(pipeline.submit(n, payload, recipients, message_id))
        done.extend(pipeline.flush())
    """

    def __init__(self, smtp: smtplib.SMTP, sender: str, *, conn_id: str, window: int = DEFAULT_BDAT_WINDOW) -> None:
        super().__init__(smtp, sender, conn_id=conn_id, pipelining=True)
        if not 1 <= window <= MAX_BDAT_WINDOW:
            raise ValueError(f"window must be from 1 to {MAX_BDAT_WINDOW}, not {window!r}.")
        self.window = window
        self.current_window = 1  # grows to ``window`` while HVE takes everything (see the module docstring)
        self._deferred = False  # a whole transaction of the window being read was refused or deferred
        self._gathered: list[tuple[_Transaction, bytes]] = []  # built, not written yet: safe to send again
        self._written: list[_Transaction] = []  # written, replies not read yet

    def submit(self, key: Hashable, payload: bytes, recipients: Sequence[str], message_id: str = "") -> list[Delivery]:
        """
        Add one message (CRLF line ends) to the window; once the window holds ``window`` transactions, read the
        replies to the window before and write it. Return the deliveries completed meanwhile.

        A caller that may stop on a reply (a mail merge meeting a quota) calls :meth:`collect` first, with the
        number of transactions the message adds, applies what it returns, and only then submits: ``submit``
        then reads nothing, so nothing is written after a reply that stops the run.

        Raises as :meth:`Pipeline.submit` does.
        """
        prepared = self._prepare(key, payload, recipients, message_id)
        if prepared is not None:
            delivery, batches, payload, parameters = prepared
            content = payload  # CRLF line ends (Pipeline._prepare)
            for batch in batches:
                commands = [f"MAIL FROM:<{self._sender}>{parameters}\r\n"]
                commands += [f"RCPT TO:<{address}>\r\n" for address in batch]
                commands.append(f"BDAT {len(content)} LAST\r\n")
                group = "".join(commands).encode("utf-8") + content + b"RSET\r\n"
                self.transactions += 1
                self._gathered.append((_Transaction(delivery, batch), group))
            # A message's batches go out together: a window holds whole messages, at least one.
            if len(self._gathered) >= self.current_window:
                self._write_window()
        return self._take_completed()

    def collect(self, transactions: int = 1) -> list[Delivery]:
        """
        Read the replies due before the next :meth:`submit` writes anything; return the deliveries completed.

        That is the previous window's replies when the next message fills the window (it will be written then),
        else nothing: a caller that may stop (a mail merge meeting a quota) sees every reply that arrives before
        more is written.

        :param transactions: how many transactions the next message adds (one per 50 recipients).
        """
        if self._written and len(self._gathered) + transactions >= self.current_window:
            self._read_window()
        return self._take_completed()

    def flush(self) -> list[Delivery]:
        """Write what is gathered and read every outstanding reply; return the deliveries completed."""
        self._write_window()
        self._read_window()
        return self._take_completed()

    def _drop_unwritten(self) -> None:
        """Forget the transactions gathered and not written (:meth:`drain`): certainly not accepted."""
        self._gathered = []

    def _read_written(self) -> None:
        """Read every reply to the window already written (:meth:`drain`)."""
        self._read_window()

    # -- windows -------------------------------------------------------------------------------------------

    def _write_window(self) -> None:
        """Read the replies to the window on the wire, then write the gathered transactions in one write."""
        self._read_window()
        if not self._gathered:
            return
        self._probe_if_idle()  # before anything of the window is handed over
        gathered, self._gathered = self._gathered, []
        self._written = [transaction for transaction, _ in gathered]
        for transaction in self._written:
            # Handed over from the first byte written: a broken write leaves their outcome unknown.
            self._handed_over[id(transaction)] = transaction
        self._write(b"".join(group for _, group in gathered))

    def _read_window(self) -> None:
        """Read every reply to the written window, in order; raise what refused the sender once all are read."""
        refusal: tuple[int, str] | None = None
        # Each transaction leaves the list once settled. On a broken connection those still in it stay handed
        # over: unknown, never sent again (see _hung_up_at for a 421).
        had_written, self._deferred = bool(self._written), False
        while self._written:
            settled = self._read_transaction()
            refusal = refusal or settled  # the first refusal is the one to report
        if self._deferred:
            self.current_window = 1
        elif had_written:
            self.current_window = min(self.window, 2 * self.current_window)
        if refusal is not None:
            code, reply = refusal
            if code == 530:  # the session lost its authentication; a new session fixes it
                raise self._broken(None, f"{code} {reply}")
            raise self._sender_refused(code, reply)  # with every delivery read in this window

    def _hung_up_at(self, final_of: _Transaction | None) -> None:
        # A 421 answers one command and the server closes: the commands behind it were neither carried out nor
        # answered, so no transaction still unanswered was accepted (they are sent again, not unknown). Only a
        # connection that breaks without a reply leaves the window's outcome unknown.
        for transaction in self._written:
            self._handed_over.pop(id(transaction), None)

    def _read_transaction(self) -> tuple[int, str] | None:
        """
        Read the first unsettled transaction's replies (MAIL, RCPTs, BDAT, RSET) and settle it; return what to
        raise once the window is read: the reply refusing the sender (a ``530``: the connection is then broken).
        """
        transaction = self._written[0]
        mail_code, mail_reply = self._read(final_of=transaction)
        if mail_code != 250:
            # Refused before any content was taken: certainly not delivered, even if the connection ends before
            # the replies to its RCPTs and BDAT (an idle server's "451 4.7.0 Timeout", then the end).
            self._handed_over.pop(id(transaction), None)
        replies = [self._read(final_of=transaction) for _ in transaction.recipients]
        final_code, final_reply = self._read(final_of=transaction)
        refusal = self._settle(transaction, (mail_code, mail_reply), replies, (final_code, final_reply))
        del self._written[0]
        self._read()  # RSET: the next transaction starts clean whatever this one's fate
        return refusal

    def _settle(
        self,
        transaction: _Transaction,
        mail: tuple[int, str],
        replies: list[tuple[int, str]],
        final: tuple[int, str],
    ) -> tuple[int, str] | None:
        """Record one transaction's outcome from its replies (see :meth:`_read_transaction`)."""
        (mail_code, mail_reply), (final_code, final_reply) = mail, final
        delivery = transaction.delivery
        if mail_code != 250 or (final_code != 250 and any(code in _ACCEPTED_RCPT for code, _ in replies)):
            self._deferred = True
        if mail_code != 250:
            # Refused before any content was taken: certainly not delivered.
            self._handed_over.pop(id(transaction), None)
            transaction.refuse(mail_code, mail_reply)
            if 400 <= mail_code < 500 or _refuses_the_message(mail_code, mail_reply):
                delivery.whole = (mail_code, mail_reply)
                self._finish(transaction, mail_code, mail_reply)
                return None
            # The sender is refused: the message stays open, not handed over (a message an earlier batch of which
            # was accepted completes partly delivered, this batch with HVE's reply); the session ends.
            return mail_code, mail_reply
        for address, (code, reply) in zip(transaction.recipients, replies, strict=True):
            if code in _ACCEPTED_RCPT:
                transaction.accepted.append(address)
            else:
                delivery.refused[address] = (code, reply)
        if not transaction.accepted:
            final_reply = final_reply or "no recipient accepted"
        self._finish(transaction, final_code, final_reply)
        return None
