"""
The public face of the transport: :class:`Pipeline` (DATA) and :class:`BdatPipeline` (a sliding BDAT window).

Both put messages through the same :class:`~airflow_provider_hve.transport.queue.ReplyQueue` and
:class:`~airflow_provider_hve.transport.loop.SocketLoop`; they differ only in when they write and when they wait.

DATA (RFC 2920): a message costs one round trip: its commands are written with the content of the message
before (whose ``354`` came with the commands' replies), and their replies read on the next call. Without
PIPELINING, each command waits for its reply (lockstep).

BDAT (RFC 3030): a transaction is one write, so several may be on the wire. Replies are read as they arrive,
and a new transaction may go as soon as one settles: a *sliding* window of at most
:attr:`BdatPipeline.current_window` transactions written and unanswered (sized by
:class:`~airflow_provider_hve.transport.window.Window`), so the link never idles waiting for a whole window.
Transactions are gathered until there are :attr:`~airflow_provider_hve.transport.window.Window.batch` of them
(a whole window on a fast link, one on a slow one), then written together once the window has room for them.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from airflow_provider_hve.transport.envelope import Capabilities, Delivery, check_envelope_address
from airflow_provider_hve.transport.loop import DEFAULT_TIMEOUT, SocketLoop
from airflow_provider_hve.transport.queue import ReplyQueue, Settled
from airflow_provider_hve.transport.transactions import STOPPED_BEFORE_THIS_BATCH, Transaction
from airflow_provider_hve.transport.window import DEFAULT_SIZE, Window

if TYPE_CHECKING:
    import smtplib


class Pipeline:
    """
    Send messages over an authenticated ``smtplib.SMTP`` connection with DATA, pipelining when the server offers it.

    :param smtp: the connection, after STARTTLS, EHLO and AUTH.
    :param sender: the envelope sender (MAIL FROM).
    :param conn_id: the connection id, for error messages.
    :param pipelining: force it on or off; default: whatever the server advertises.
    :param timeout: seconds to wait for each reply; default: the ``smtplib.SMTP``'s timeout.
    :param server: the server's name for error messages; default: the socket's peer.

    Example::

        pipeline = Pipeline(smtp, "reports@contoso.com", conn_id="hve_default")
        for n, (payload, recipients) in enumerate(outbox):
            done.extend(pipeline.submit(n, payload, recipients, message_id))
        done.extend(pipeline.flush())
    """

    chunking = False

    def __init__(
        self,
        smtp: smtplib.SMTP,
        sender: str,
        *,
        conn_id: str,
        pipelining: bool | None = None,
        timeout: float | None = None,
        server: str | None = None,
    ) -> None:
        capabilities = Capabilities.of(smtp)
        check_envelope_address(sender, "envelope_from", smtputf8=capabilities.smtputf8)
        self.pipelining = capabilities.pipelining if pipelining is None else pipelining
        self._queue = ReplyQueue(
            sender, conn_id=conn_id, server=capabilities, chunking=self.chunking, pipelining=self.pipelining
        )
        timeout = timeout or getattr(smtp, "timeout", None)
        self._loop = SocketLoop(
            smtp,
            self._queue,
            timeout=timeout if isinstance(timeout, (int, float)) and timeout > 0 else DEFAULT_TIMEOUT,
            server=server or _peer(smtp),
            on_settled=self._settled,
        )

    @property
    def transactions(self) -> int:
        """How many transactions were submitted (one per 50 recipients of each message)."""
        return self._queue.transactions

    @property
    def waited(self) -> float:
        """Seconds this pipeline spent blocked on the server's replies."""
        return self._loop.waited

    @property
    def in_flight(self) -> list[Delivery]:
        """
        Messages whose content was handed to the server but whose outcome is not known yet.

        After a broken connection these may or may not have been delivered: resending them risks a
        duplicate. A message whose content was not written yet is not in flight and can be sent again.
        """
        return self._queue.in_flight

    def submit(self, key: Hashable, payload: bytes, recipients: Sequence[str], message_id: str = "") -> list[Delivery]:
        """
        Send one message (CRLF line ends) to ``recipients``; return the deliveries completed meanwhile.

        With pipelining, this message's own outcome usually arrives with the next :meth:`submit` or with
        :meth:`flush`. A message larger than the server's advertised ``SIZE`` completes at once, every recipient
        refused with ``552 5.3.4``, and nothing of it is written.

        :raises HveConfigError: an envelope address is not a plain ASCII address (nothing was written).
        :raises HveSendError: the server refused the sender (nothing more can be sent in this session).
        :raises HveConnectionError: the connection broke; its ``in_flight`` lists the messages whose outcome is
            unknown (handed over, no final reply), ``unsent`` those that were certainly not accepted.
        """
        prepared = self._queue.prepare(key, payload, recipients, message_id)
        if prepared is not None:
            for batch in prepared.batches:
                # The previous transaction's replies have had the time this message took to build: read them,
                # and write its content and this transaction's commands in one write.
                self._loop.wait(lambda: not self._queue.expecting)
                self._probe_if_idle()
                self._queue.enqueue(prepared, batch)
                self._write_through()
        return self._queue.take_completed()

    def collect(self, transactions: int = 1) -> list[Delivery]:
        """
        Read the replies due before the next :meth:`submit` writes anything; return the deliveries completed.

        A caller that must decide whether to hand over more (a mail merge that may stop on a quota reply) calls
        this first, applies what it returns, and then calls :meth:`submit` or :meth:`drain`: the round trips are
        the same.

        :param transactions: how many transactions the next message adds (one per 50 recipients). For a message
            over 50 recipients, the content of the message before and its final reply are dealt with here (one
            round trip more), since its first batch would otherwise read that reply in :meth:`submit`.
        """
        self._loop.wait(lambda: not self._queue.expecting)
        if transactions > 1:
            self.flush()
        return self._queue.take_completed()

    def flush(self) -> list[Delivery]:
        """Write everything queued and read every outstanding reply; return the deliveries completed."""
        while True:
            self._loop.wait(lambda: not self._queue.expecting)
            if not self._queue.has_unwritten:
                return self._queue.take_completed()
            self._write(None)  # DATA content or RSET after a reply: no probe (a NOOP would be read as content)

    def drain(self) -> list[Delivery]:
        """
        Read the final reply of what is already handed over, hand over nothing more, and close the connection;
        return the deliveries completed.

        For stopping early. A message whose commands went out but whose content did not is dropped with the
        connection: the server got no end of data, so it was certainly not accepted. A message over 50
        recipients whose first batches were accepted completes partly delivered: the recipients of its batches
        not sent are refused with a temporary ``451 4.4.2`` (sent again by a later run, never lost).
        """
        self._queue.drop_unwritten()
        try:
            self._loop.wait(self._drained)
        finally:
            self.abort()
        self._queue.complete_partly_delivered(STOPPED_BEFORE_THIS_BATCH)
        return self._queue.take_completed()

    def abort(self) -> None:
        """
        Close the connection at once, without QUIT.

        The server may be waiting for a message's content after its 354: a command (QUIT included) would be
        read as content, and it would never answer. A message without its final dot is never delivered.
        """
        self._loop.abort()

    def _drained(self) -> bool:
        """DATA: every content written is answered (the command replies of the last message may be left)."""
        return not self._queue.unknown

    def _write_through(self) -> None:
        """Write what may go; without PIPELINING, command by command, each reply read before the next."""
        self._write(None)
        while not self.pipelining and self._queue.has_unwritten:
            self._loop.wait(lambda: not self._queue.expecting)
            self._write(None)
        if not self.pipelining:
            self._loop.wait(lambda: not self._queue.expecting)

    def _write(self, transactions: int | None) -> None:
        self._loop.write(transactions)

    def _probe_if_idle(self) -> None:
        if not self._queue.expecting and not self._queue.unanswered:
            self._loop.probe_if_idle()

    def _settled(self, events: list[Settled], now: float) -> None:
        """The loop read the final replies of ``events`` at ``now`` (the DATA pipeline has no window)."""


class BdatPipeline(Pipeline):
    """
    Send messages as pipelined ``BDAT`` transactions in a sliding window; same interface as :class:`Pipeline`.

    :param smtp: the connection, after STARTTLS, EHLO and AUTH; the server offers PIPELINING and CHUNKING.
    :param sender: the envelope sender (MAIL FROM).
    :param conn_id: the connection id, for error messages.
    :param window: the most transactions written and unanswered (the connection's ``bdat_window``), 1 to 256.
    :param timeout: seconds to wait for each reply; default: the ``smtplib.SMTP``'s timeout.
    :param server: the server's name for error messages; default: the socket's peer.

    Example::

        pipeline = BdatPipeline(smtp, "reports@contoso.com", conn_id="hve_default", window=16)
        for n, (payload, recipients) in enumerate(outbox):
            done.extend(pipeline.submit(n, payload, recipients, message_id))
        done.extend(pipeline.flush())
    """

    chunking = True

    def __init__(
        self,
        smtp: smtplib.SMTP,
        sender: str,
        *,
        conn_id: str,
        window: int = DEFAULT_SIZE,
        timeout: float | None = None,
        server: str | None = None,
    ) -> None:
        self._window = Window(window)
        super().__init__(smtp, sender, conn_id=conn_id, pipelining=True, timeout=timeout, server=server)
        self.window = window

    @property
    def current_window(self) -> int:
        """How many transactions may be written and unanswered now (slow start, then sized by measurement)."""
        return self._window.size

    def submit(self, key: Hashable, payload: bytes, recipients: Sequence[str], message_id: str = "") -> list[Delivery]:
        """
        Queue one message (CRLF line ends); write what is queued once it fills the window's free room. Return the
        deliveries completed meanwhile.

        A caller that may stop on a reply (a mail merge meeting a quota) calls :meth:`collect` first, with the
        number of transactions the message adds, applies what it returns, and only then submits: ``submit``
        then reads nothing, so nothing is written after a reply that stops the run. Without that, ``submit``
        waits for room itself.

        Raises as :meth:`Pipeline.submit` does.
        """
        prepared = self._queue.prepare(key, payload, recipients, message_id)
        if prepared is not None:
            self._queue.enqueue(prepared)  # a message's batches go out together: a window holds whole messages
            if self._queue.gathered >= self._window.batch:
                self._wait_for_room(0)  # at once after collect(); without it, submit() waits here
                self._probe_if_idle()
                self._write(None)
        return self._queue.take_completed()

    def collect(self, transactions: int = 1) -> list[Delivery]:
        """
        Read the replies that have arrived, and wait for more only while the window has no room for what is
        written, what is gathered and ``transactions`` more; return the deliveries completed.

        :param transactions: how many transactions the next message adds (one per 50 recipients).
        """
        self._loop.poll()
        if self._queue.gathered + transactions >= self._window.batch:
            self._wait_for_room(transactions)  # the next submit() writes: room for it now, not there
        return self._queue.take_completed()

    def flush(self) -> list[Delivery]:
        """Write every transaction gathered and read every outstanding reply; return the deliveries completed."""
        if self._queue.has_unwritten:
            self._probe_if_idle()  # before anything is handed over
        return super().flush()

    def _drained(self) -> bool:
        """BDAT: every reply to what was written is read."""
        return not self._queue.expecting

    def _wait_for_room(self, transactions: int) -> None:
        """
        Read until the window holds what is written, what is gathered and ``transactions`` more (or nothing
        written is unanswered: a message larger than the window goes alone).
        """
        queue = self._queue

        def room() -> bool:
            return not queue.unanswered or queue.unanswered + queue.gathered + transactions <= self._window.size

        if not room():
            self._window.full()
            self._loop.wait(room)

    def _write(self, transactions: int | None) -> None:
        self._loop.write(transactions, self._handing_over)

    def _handing_over(self, transactions: list[Transaction]) -> None:
        """Note them written before their bytes go: a reply read while they are written may settle them."""
        now = time.monotonic()
        for transaction in transactions:
            self._window.written(id(transaction), now)

    def _settled(self, events: list[Settled], now: float) -> None:
        for event in events:
            self._window.settled(id(event.transaction), now, deferred=event.deferred)


def _peer(smtp: smtplib.SMTP) -> str:
    """The server's address, for error messages."""
    try:
        host, port, *_ = smtp.sock.getpeername() if smtp.sock is not None else ("HVE", 0)
    except (OSError, ValueError):
        return "the HVE server"
    return f"{host}:{port}" if port else str(host)
