"""SMTP transactions over one authenticated connection, pipelined (RFC 2920) when the server offers it.

Between an Airflow worker and HVE every SMTP reply costs a network round trip. Without pipelining a message
to one recipient costs four (MAIL, RCPT, DATA, content). With pipelining the client writes ``MAIL FROM``,
every ``RCPT TO`` and ``DATA`` at once and reads the replies together, and it sends a message's content
without waiting, reading its final reply together with the next message's command replies: one round trip
per message in a stream.

A message with more than :data:`MAX_RECIPIENTS_PER_TRANSACTION` recipients becomes several transactions of
the same bytes; its :class:`Delivery` is reported once all of them are done.

The envelope is checked here, at the wire, whoever built it: an address that could break out of its
``MAIL FROM:<...>`` or ``RCPT TO:<...>`` line is refused before a byte is written. A message with 8-bit
content declares ``BODY=8BITMIME`` when the server offers it, and is re-encoded to 7 bits when it does not
(RFC 6152); a message larger than the server's advertised ``SIZE`` is refused without being sent.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_hve.diagnostics import is_session_wide, smtp_reply_hint
from airflow_provider_hve.exceptions import HveConfigError, HveConnectionError, HveSendError
from airflow_provider_hve.wire import check_envelope_address, close_quietly, refuse_utf8_header, utf8_header

if TYPE_CHECKING:
    import smtplib

MAX_RECIPIENTS_PER_TRANSACTION = 50
"""HVE accepts at most 50 recipients per message; larger envelopes are split into several transactions."""

IDLE_PROBE_SECONDS = 5.0
"""A session quiet for this long is checked with ``NOOP`` before anything is handed over (see ``_probe_if_idle``)."""

_LAST_WRITE = "hve_last_write"
_ACCEPTED_RCPT = (250, 251)
# Printable ASCII without space, '<' and '>': anything else could end the address, the command line or the
# reply count (CR, LF, NUL), or needs SMTPUTF8 where the server's EHLO does not offer it.
_ENHANCED_CODE = re.compile(r"\b5\.(\d{1,3})\.(\d{1,3})\b")
_BARE_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


@dataclass
class Delivery:
    """The outcome of one message: each recipient accepted or refused with the server's reply."""

    key: Hashable
    message_id: str
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    whole: tuple[int, str] | None = None
    """The reply that refused the whole transaction (to MAIL FROM, or after the content), if one did: a
    condition of the server or the session (throttling, quota), not of a recipient."""


@dataclass
class _Transaction:
    """One ``MAIL``/``RCPT``/``DATA`` transaction: a message, or one 50-recipient batch of it."""

    delivery: Delivery
    recipients: Sequence[str]
    accepted: list[str] = field(default_factory=list)

    def refuse(self, code: int, reply: str) -> None:
        """Record every recipient of this transaction as refused with the reply to its ``MAIL FROM``."""
        self.delivery.refused.update({address: (code, reply) for address in self.recipients})


@dataclass
class _Next:
    """What to write after a transaction's command replies: its content, an empty message, or RSET."""

    data: bytes
    awaiting: _Transaction | None = None
    """The transaction whose final reply follows ``data``."""
    handed_over: bool = False
    """``data`` is the content of a message with accepted recipients: once written, HVE may deliver it."""


STOPPED_BEFORE_THIS_BATCH = (451, "4.4.2 Not sent: the run stopped before this batch")
"""How the recipients of a partly delivered message's batches not written are refused when a run stops."""


@dataclass
class _OpenMessage:
    """A submitted message whose transactions are not all finished."""

    delivery: Delivery
    recipients: Sequence[str]
    transactions_left: int


class Pipeline:
    """
    Send messages over an authenticated ``smtplib.SMTP`` connection, pipelining when the server offers it.

    :param smtp: the connection, after STARTTLS, EHLO and AUTH.
    :param sender: the envelope sender (MAIL FROM).
    :param conn_id: the connection id, for error messages.
    :param pipelining: force it on or off; default: whatever the server advertises.

    Example::

        pipeline = Pipeline(smtp, "reports@contoso.com", conn_id="hve_default")
        for n, (payload, recipients) in enumerate(outbox):
            done.extend(pipeline.submit(n, payload, recipients, message_id))
        done.extend(pipeline.flush())
    """

    def __init__(self, smtp: smtplib.SMTP, sender: str, *, conn_id: str, pipelining: bool | None = None) -> None:
        self._smtputf8 = smtp.has_extn("smtputf8")
        check_envelope_address(sender, "envelope_from", smtputf8=self._smtputf8)
        self._smtp = smtp
        self._sender = sender
        self._conn_id = conn_id
        self.pipelining = smtp.has_extn("pipelining") if pipelining is None else pipelining
        self._size = smtp.has_extn("size")
        self._max_size = _advertised_size(smtp)
        self._eight_bit = smtp.has_extn("8bitmime")
        self._awaiting: _Transaction | None = None  # content sent, final reply not read yet
        self._staged: tuple[_Transaction, bytes] | None = None  # commands sent, replies not read yet
        self._next: _Next | None = None  # the staged transaction's replies read, what follows not written yet
        self._completed: list[Delivery] = []  # finished, not yet returned to the caller
        self._rset_pending = False  # an RSET was written, its reply not read yet
        self._open: dict[int, _OpenMessage] = {}  # by id(delivery)
        # Transactions whose content was written and whose final reply was not read, by id(transaction). Per
        # transaction, not per message: one batch of a split message may be delivered and the next refused.
        self._handed_over: dict[int, _Transaction] = {}
        self.transactions = 0
        # When the client last wrote on this connection (the server's idle clock runs from its last command): kept
        # on the smtplib object, which outlives the pipelines of one session (HveSmtpSession.send makes one each).
        if not isinstance(getattr(smtp, _LAST_WRITE, None), float):
            setattr(smtp, _LAST_WRITE, time.monotonic())
        if smtp.sock is not None:
            # Small pipelined writes must not wait for the peer's delayed ACK (Nagle).
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def submit(self, key: Hashable, payload: bytes, recipients: Sequence[str], message_id: str = "") -> list[Delivery]:
        """
        Send one message (CRLF line ends) to ``recipients``; return the deliveries completed meanwhile.

        With pipelining, this message's own outcome usually arrives with the next :meth:`submit` or with
        :meth:`flush`.

        A message larger than the server's advertised ``SIZE`` completes at once, every recipient refused
        with ``552 5.3.4``, and nothing of it is written.

        :raises HveConfigError: an envelope address is not a plain ASCII address (nothing was written).
        :raises HveSendError: the server refused the sender (nothing more can be sent in this session).
        :raises HveConnectionError: the connection broke; its ``in_flight`` lists the messages whose outcome is
            unknown (handed over, no final reply), ``unsent`` those that were certainly not accepted.
        """
        prepared = self._prepare(key, payload, recipients, message_id)
        if prepared is not None:
            delivery, chunks, payload, parameters = prepared
            content = _dot_stuffed(payload)
            for chunk in chunks:
                self._transaction(_Transaction(delivery, chunk), content, parameters)
        return self._take_completed()

    def _prepare(
        self, key: Hashable, payload: bytes, recipients: Sequence[str], message_id: str
    ) -> tuple[Delivery, list[Sequence[str]], bytes, str] | None:
        """
        Check a message and open it: return its delivery, its 50-recipient batches, the payload to send (7-bit
        when the server lacks 8BITMIME) and the MAIL FROM parameters; ``None`` when it completed at once (too big).
        """
        if isinstance(recipients, (str, bytes)):
            raise HveConfigError(
                f"Message {message_id or key!r}: 'recipients' is a single string; give a list of addresses."
            )
        if not recipients:
            raise HveSendError(f"Message {message_id or key!r} has no recipients.")
        # UTF-8 headers first: the refusal then names the header's argument ('to'), not the envelope's.
        utf8_headers = utf8_header(payload)
        if utf8_headers is not None and not self._smtputf8:
            raise refuse_utf8_header(*utf8_headers, self._conn_id)
        for address in recipients:
            check_envelope_address(address, "recipients", smtputf8=self._smtputf8)
        delivery = Delivery(key=key, message_id=message_id)
        eight_bit = _has_8bit(payload)
        if eight_bit and not self._eight_bit and utf8_headers is None:
            # (UTF-8 headers go as they are: a server that offers SMTPUTF8 takes 8-bit content, RFC 6531 3.1.)
            payload, eight_bit = seven_bit(payload), False
        # CRLF line ends before anything is counted: SIZE= and the BDAT octet count are of what is sent.
        payload = _BARE_LINE_ENDS.sub(b"\r\n", payload)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        if self._max_size and len(payload) > self._max_size:
            reply = (
                f"5.3.4 Not sent: the message is {len(payload):,} bytes and the server accepts at most "
                f"{self._max_size:,} (the SIZE it advertises)"
            )
            delivery.whole = (552, reply)
            delivery.refused.update({address: (552, reply) for address in recipients})
            self._completed.append(delivery)
            return None
        chunks = [
            recipients[i : i + MAX_RECIPIENTS_PER_TRANSACTION]
            for i in range(0, len(recipients), MAX_RECIPIENTS_PER_TRANSACTION)
        ]
        self._open[id(delivery)] = _OpenMessage(delivery, recipients, len(chunks))
        parameters = (f" SIZE={len(payload)}" if self._size else "") + (
            " BODY=8BITMIME" if eight_bit and self._eight_bit else ""
        )
        if utf8_headers is not None or not (self._sender.isascii() and all(a.isascii() for a in recipients)):
            parameters += " SMTPUTF8"  # an internationalised address or UTF-8 headers (checked: the server offers it)
        return delivery, chunks, payload, parameters

    def collect(self, transactions: int = 1) -> list[Delivery]:
        """
        Read the replies due before the next :meth:`submit` writes anything; return the deliveries completed.

        With pipelining, that is the final reply of the message before last and the command replies of the last
        one; its content is written by the next :meth:`submit` (or :meth:`flush`), not here. A caller that must
        decide whether to hand over more (a mail merge that may stop on a quota reply) calls this first, applies
        what it returns, and then calls :meth:`submit` or :meth:`drain`: the round trips are the same.

        :param transactions: how many transactions the next message adds (one per 50 recipients). For a message
            over 50 recipients, the content of the message before and its final reply are dealt with here (one
            round trip more), since its first batch would otherwise read that reply in :meth:`submit` and write
            on regardless.
        """
        self._collect()
        if transactions > 1:
            self._send_next()
            self._read_outstanding()
        return self._take_completed()

    def _collect(self) -> None:
        if self._staged is not None and self._next is None:
            self._next = self._resolve_staged()

    def flush(self) -> list[Delivery]:
        """Send what is staged and read every outstanding reply; return the deliveries completed."""
        self._collect()
        self._send_next()
        self._read_outstanding()
        return self._take_completed()

    def drain(self) -> list[Delivery]:
        """
        Read the final reply of the message already handed over, hand over nothing more, and close the
        connection; return the deliveries completed.

        For stopping early. A message whose commands went out but whose content did not is dropped with the
        connection: the server got no end of data, so it was certainly not accepted. A message over 50
        recipients whose first batches were accepted completes partly delivered: the recipients of its batches
        not sent are refused with a temporary ``451 4.4.2`` (sent again by a later run, never lost).
        """
        self._drop_unwritten()
        try:
            self._read_written()
        finally:
            self.abort()
        self._complete_partly_delivered(STOPPED_BEFORE_THIS_BATCH)
        return self._take_completed()

    def _drop_unwritten(self) -> None:
        """Forget what is staged and not written (:meth:`drain`): certainly not accepted."""
        self._staged = self._next = None

    def _read_written(self) -> None:
        """Read the final reply of everything written (:meth:`drain`)."""
        self._read_outstanding()

    def _sender_refused(self, code: int, reply: str) -> HveSendError:
        """
        The error for a refused sender: nothing more is sent in this session, so a message over 50 recipients an
        earlier batch of which was accepted completes partly delivered (the refused batch with HVE's reply, the
        batches not written with ``451 4.4.2 Not sent``); every delivery read goes with the error.
        """
        self._complete_partly_delivered(STOPPED_BEFORE_THIS_BATCH)
        return HveSendError(
            f"HVE refused MAIL FROM:<{self._sender}> (connection {self._conn_id!r}): {code} "
            f"{reply}.{smtp_reply_hint(code, reply)} Nothing more is sent in this session.",
            smtp_code=code,
            completed=self._take_completed(),
        )

    def _complete_partly_delivered(self, why: tuple[int, str], skip: Collection[int] = ()) -> int:
        """
        Complete each open message that some recipients certainly got (an earlier 50-recipient batch accepted)
        and the others certainly did not, its unanswered recipients refused with ``why``; return how many.
        """
        partly = 0
        for key, message in list(self._open.items()):
            if key in skip or not message.delivery.accepted:
                continue
            answered = {*message.delivery.accepted, *message.delivery.refused}
            message.delivery.refused.update({a: why for a in message.recipients if a not in answered})
            del self._open[key]
            self._completed.append(message.delivery)
            partly += 1
        return partly

    def abort(self) -> None:
        """
        Close the connection at once, without QUIT.

        The server may be waiting for a message's content after its 354: a command (QUIT included) would be
        read as content, and it would never answer. A message without its final dot is never delivered.
        """
        close_quietly(self._smtp)

    def _read_outstanding(self) -> None:
        """Read the final reply of the message whose content went last, or the reply to the last RSET."""
        if self._awaiting is not None:
            transaction, self._awaiting = self._awaiting, None
            self._finish(transaction, *self._read(final_of=transaction))
        if self._rset_pending:
            self._rset_pending = False
            self._read()

    def _take_completed(self) -> list[Delivery]:
        completed, self._completed = self._completed, []
        return completed

    @property
    def in_flight(self) -> list[Delivery]:
        """
        Messages whose content was handed to the server but whose outcome is not known yet.

        After a broken connection these may or may not have been delivered: resending them risks a
        duplicate. A message whose content was not written yet is not in flight and can be sent again.
        """
        unanswered = {id(transaction.delivery) for transaction in self._handed_over.values()}
        return [message.delivery for key, message in self._open.items() if key in unanswered]

    # -- one transaction ---------------------------------------------------------------------------------

    def _transaction(self, transaction: _Transaction, content: bytes, parameters: str) -> None:
        commands = [f"MAIL FROM:<{self._sender}>{parameters}\r\n"]
        commands += [f"RCPT TO:<{address}>\r\n" for address in transaction.recipients]
        commands.append("DATA\r\n")
        self.transactions += 1
        if self._staged is None and self._next is None and self._awaiting is None and not self._rset_pending:
            self._probe_if_idle()
        if not self.pipelining:
            self._transaction_in_lockstep(transaction, commands, content)
            return

        # The previous transaction's replies have had the time this message took to build: read them, and
        # send its content and this transaction's commands in one write. This transaction's replies are read
        # on the next call, while the caller builds the next message.
        self._collect()
        self._send_next("".join(commands).encode("utf-8"))
        self._staged = (transaction, content)

    def _send_next(self, then: bytes = b"") -> None:
        """Write what follows the staged transaction's replies (if read), then ``then``, in one write."""
        after, self._next = self._next, None
        if after is None:
            if then:
                self._write(then)
            return
        if after.handed_over and after.awaiting is not None:
            self._handed_over[id(after.awaiting)] = after.awaiting
        self._write(after.data + then)
        if after.awaiting is not None:
            self._awaiting = after.awaiting
        else:
            self._rset_pending = True

    def _resolve_staged(self) -> _Next:
        """Read the staged transaction's replies; return what to write next (its content, or RSET)."""
        assert self._staged is not None
        (transaction, content), self._staged = self._staged, None
        self._read_outstanding()
        replies = [self._read() for _ in range(len(transaction.recipients) + 2)]
        return self._after_commands(transaction, replies, content)

    def _transaction_in_lockstep(self, transaction: _Transaction, commands: list[str], content: bytes) -> None:
        replies = []
        for command in commands:
            self._write(command.encode("utf-8"))
            replies.append(self._read())
            if replies[0][0] != 250:
                break
        self._next = self._after_commands(transaction, replies, content)
        self._send_next()
        self._read_outstanding()

    def _after_commands(self, transaction: _Transaction, replies: list[tuple[int, str]], content: bytes) -> _Next:
        """Record the command replies; return what to write next: the content, an empty message, or RSET."""
        mail_code, mail_reply = replies[0]
        delivery = transaction.delivery
        if 400 <= mail_code < 500:
            # Throttling (432 4.3.2, 451 4.3.0...): this transaction is refused, the session goes on. The RCPT
            # and DATA replies that follow a refused MAIL say nothing more ("503 need MAIL").
            delivery.whole = (mail_code, mail_reply)
            transaction.refuse(mail_code, mail_reply)
            self._finish(transaction, mail_code, mail_reply)
            return _Next(b"RSET\r\n")
        if mail_code == 530:
            # 530 5.7.57: the session lost its authentication. A new session fixes it; this message was not taken.
            raise self._broken(None, f"{mail_code} {mail_reply}")
        if refuses_the_message(mail_code, mail_reply):
            # 552 5.3.4 (too big for this server): the sender is fine, only this message is refused.
            delivery.whole = (mail_code, mail_reply)
            transaction.refuse(mail_code, mail_reply)
            self._finish(transaction, mail_code, mail_reply)
            return _Next(b"RSET\r\n")
        if mail_code != 250:
            # HVE's own reply for this batch's recipients (a partly delivered message completes with it).
            transaction.refuse(mail_code, mail_reply)
            raise self._sender_refused(mail_code, mail_reply)
        for address, (code, reply) in zip(transaction.recipients, replies[1:-1], strict=False):
            if code in _ACCEPTED_RCPT:
                transaction.accepted.append(address)
            else:
                delivery.refused[address] = (code, reply)
        data_code, data_reply = replies[-1] if len(replies) == len(transaction.recipients) + 2 else (0, "")
        if data_code == 354 and transaction.accepted:
            return _Next(content, awaiting=transaction, handed_over=True)
        if data_code == 354:
            # DATA accepted after every RCPT was refused: an empty message, as RFC 2920 asks; its reply is
            # read like a final reply and the transaction completes with every recipient refused.
            return _Next(b".\r\n", awaiting=transaction)
        # The transaction ended without content (every RCPT or the DATA refused): clear it with RSET, or the
        # next MAIL FROM gets "503 sender already specified". Its reply is read with the next batch.
        self._finish(transaction, data_code, data_reply or "no recipient accepted")
        return _Next(b"RSET\r\n")

    def _finish(self, transaction: _Transaction, code: int, reply: str) -> None:
        delivery = transaction.delivery
        self._handed_over.pop(id(transaction), None)
        if code == 250:
            delivery.accepted.extend(transaction.accepted)
        else:
            if transaction.accepted:
                delivery.whole = (code, reply)
            for address in transaction.accepted:
                delivery.refused[address] = (code, reply)
        message = self._open[id(delivery)]
        message.transactions_left -= 1
        if message.transactions_left > 0:
            return
        del self._open[id(delivery)]
        # Kept on the pipeline until handed to the caller: an error later in the same call must not lose it.
        self._completed.append(delivery)

    # -- I/O -----------------------------------------------------------------------------------------------

    def _probe_if_idle(self) -> None:
        """
        On a session quiet for :data:`IDLE_PROBE_SECONDS`, with no reply outstanding, check with ``NOOP`` that it is
        alive before handing anything over. A server that closed it meanwhile (Exchange: ``451 4.7.0 Timeout
        waiting for client input``, then the end of the connection) would otherwise take the next message's bytes
        and leave its outcome unknown; found here, nothing was handed over and it is sent again on a new session.
        """
        if time.monotonic() - getattr(self._smtp, _LAST_WRITE) < IDLE_PROBE_SECONDS:
            return
        self._write(b"NOOP\r\n")
        code, reply = self._read()
        if code != 250:
            raise self._broken(None, f"{code} {reply}")

    def _write(self, data: bytes) -> None:
        import smtplib

        try:
            self._smtp.send(data)
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise self._broken(exc) from exc
        setattr(self._smtp, _LAST_WRITE, time.monotonic())

    def _read(self, final_of: _Transaction | None = None) -> tuple[int, str]:
        import smtplib

        try:
            code, reply = self._smtp.getreply()
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise self._broken(exc) from exc
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        if code == 421:
            self._hung_up_at(final_of)
            raise self._broken(None, f"{code} {text}")
        return code, text

    def _hung_up_at(self, final_of: _Transaction | None) -> None:
        """Forget what a ``421`` (the server closes, answering and doing nothing more) proves was not accepted."""
        if final_of is not None:
            # A 421 in place of the final reply is a definite answer: this transaction was not accepted, so
            # sending it again cannot duplicate it (an earlier batch of the same message may have been).
            self._handed_over.pop(id(final_of), None)

    def _broken(self, exc: BaseException | None, reply: str | None = None) -> HveConnectionError:
        """
        The error for a broken connection: each open message is unknown (a transaction handed over without a
        final reply), partly delivered (completed: an earlier batch accepted, the rest refused with the reply,
        temporary), or not delivered at all (unsent, safe to send again).
        """
        in_flight = self.in_flight
        unknown_ids = {id(delivery) for delivery in in_flight}
        # What the recipients of a partly delivered message who did not get it are refused with: always a
        # temporary reply (the reply itself when it is one, e.g. 421), so that they are sent again.
        code_text, _, reply_text = (reply or "").partition(" ")
        code = _reply_code(code_text)
        if code is not None and 400 <= code < 500:
            why = (code, reply_text)
        else:
            why = (451, f"4.4.2 Not sent: the connection to HVE broke first ({reply or type(exc).__name__})")
        # Certainly delivered to some recipients, certainly not to the others: a result, not a resend.
        partly = self._complete_partly_delivered(why, skip=unknown_ids)
        unsent = [message.delivery for key, message in self._open.items() if key not in unknown_ids]
        unknown = ", ".join(d.message_id or str(d.key) for d in in_flight) or "none"
        cause = f"{reply}.{smtp_reply_hint(code, reply_text)}" if reply else f"{type(exc).__name__}: {exc}."
        partial = f" {partly} partly delivered (some recipients accepted, the others not sent)." if partly else ""
        return HveConnectionError(
            f"The connection to HVE broke (connection {self._conn_id!r}): {cause} Messages whose outcome is "
            f"unknown (may have been delivered): {unknown}; {len(unsent)} not delivered, safe to send again."
            f"{partial}",
            in_flight=[d.key for d in in_flight],
            unsent=[d.key for d in unsent],
            completed=self._take_completed(),
        )


def refuses_the_message(code: int, reply: str) -> bool:
    """
    Tell whether a ``5xx`` reply to ``MAIL FROM`` refuses this message rather than the sender or the session.

    ``552`` (RFC 1870: too big for the advertised ``SIZE``), and the enhanced codes ``5.3.4`` (too big for the
    system), ``5.2.3`` (too long for an administrative limit) and ``5.6.x`` (the content) concern the message:
    the next message may go.

    :param code: the reply code.
    :param reply: the reply text after the code.
    """
    if not 500 <= code < 600 or is_session_wide(code, reply):
        return False
    match = _ENHANCED_CODE.search(reply)
    if match is None:
        return code == 552
    return (match.group(1), match.group(2)) in {("3", "4"), ("2", "3")} or match.group(1) == "6"


def seven_bit(payload: bytes) -> bytes:
    """
    Re-encode a message with 8-bit content for a server without 8BITMIME (RFC 6152).

    The stdlib generator re-encodes each 8-bit text part with its charset's transfer encoding (base64 for
    UTF-8); headers are already 7-bit.
    """
    import io
    from email.generator import BytesGenerator
    from email.parser import BytesParser

    from airflow_provider_hve.message import WIRE_POLICY

    message = BytesParser(policy=WIRE_POLICY).parsebytes(payload)
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=WIRE_POLICY.clone(cte_type="7bit")).flatten(message)
    return buffer.getvalue()


def _has_8bit(payload: bytes) -> bool:
    return not payload.isascii()


def _advertised_size(smtp: smtplib.SMTP) -> int:
    """Return the SIZE limit from the EHLO reply (RFC 1870), or 0 when none is given."""
    value = (smtp.esmtp_features.get("size") or "").strip()
    return int(value) if value.isascii() and value.isdecimal() else 0


def _reply_code(text: str) -> int | None:
    """Return the reply code of ``"421 4.3.2 ..."``-like text, or None when it does not start with one."""
    return int(text) if len(text) == 3 and text.isascii() and text.isdecimal() else None


def _dot_stuffed(payload: bytes) -> bytes:
    """Return the DATA content of ``payload`` (CRLF line ends, ending in CRLF: see ``Pipeline._prepare``)."""
    return _LEADING_DOT.sub(b"..", payload) + b".\r\n"
