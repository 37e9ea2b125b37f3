"""
One DATA or BDAT transaction: the bytes to write, and what its replies decide. Pure: no I/O, no queue.

A DATA transaction (RFC 5321, pipelined by RFC 2920) writes ``MAIL FROM``, every ``RCPT TO`` and ``DATA``; after
the ``354`` the content follows in a second write (with the next transaction's commands). A BDAT transaction
(RFC 3030) is one write: ``MAIL FROM``, every ``RCPT TO``, ``BDAT <n> LAST`` with the content, and ``RSET``.

The ``RSET`` ending each BDAT transaction keeps one refused transaction from spoiling the next one already on the
wire: RFC 3030 leaves open whether a refused ``BDAT ... LAST`` (no recipient accepted) ends the transaction, and
without the RSET the next pipelined ``MAIL FROM`` could meet ``503 nested MAIL``. It costs a reply line, not a
round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_provider_hve.transport.envelope import Delivery, refuses_the_message

ACCEPTED_RCPT = (250, 251)
"""Replies to ``RCPT TO`` that accept the recipient."""

STOPPED_BEFORE_THIS_BATCH = (451, "4.4.2 Not sent: the run stopped before this batch")
"""How the recipients of a partly delivered message's batches not written are refused when a run stops."""

RSET = b"RSET\r\n"
EMPTY_MESSAGE = b".\r\n"


@dataclass(eq=False)
class Transaction:
    """One ``MAIL``/``RCPT``/``DATA`` or ``BDAT`` transaction: a message, or one 50-recipient batch of it."""

    delivery: Delivery
    recipients: Sequence[str]
    content: bytes = b""
    """DATA: the dot-stuffed content, written after the ``354``. BDAT: empty (the content is in the commands)."""
    accepted: list[str] = field(default_factory=list)
    replies: list[tuple[int, str]] = field(default_factory=list)
    """The replies to its commands so far: MAIL, each RCPT, then DATA or BDAT."""

    def refuse(self, code: int, reply: str) -> None:
        """Record every recipient of this transaction as refused with the reply to its ``MAIL FROM``."""
        self.delivery.refused.update({address: (code, reply) for address in self.recipients})

    def record_recipients(self) -> None:
        """Record each recipient's reply to its ``RCPT TO``: accepted (until the final reply) or refused."""
        for address, (code, reply) in zip(self.recipients, self.replies[1:], strict=False):
            if code in ACCEPTED_RCPT:
                self.accepted.append(address)
            else:
                self.delivery.refused[address] = (code, reply)

    @property
    def commands_answered(self) -> bool:
        """Every command reply is in: MAIL, each RCPT, and DATA or BDAT."""
        return len(self.replies) == len(self.recipients) + 2


def data_commands(sender: str, parameters: str, transaction: Transaction) -> list[bytes]:
    """The command lines of a DATA transaction: MAIL FROM, each RCPT TO, DATA."""
    commands = [f"MAIL FROM:<{sender}>{parameters}\r\n"]
    commands += [f"RCPT TO:<{address}>\r\n" for address in transaction.recipients]
    commands.append("DATA\r\n")
    return [command.encode("utf-8") for command in commands]


def bdat_group(sender: str, parameters: str, transaction: Transaction, payload: bytes) -> bytes:
    """The one write of a BDAT transaction: MAIL FROM, each RCPT TO, ``BDAT <n> LAST``, the content, RSET."""
    commands = [f"MAIL FROM:<{sender}>{parameters}\r\n"]
    commands += [f"RCPT TO:<{address}>\r\n" for address in transaction.recipients]
    commands.append(f"BDAT {len(payload)} LAST\r\n")
    return "".join(commands).encode("utf-8") + payload + RSET


@dataclass(frozen=True)
class Verdict:
    """What a transaction's replies decide."""

    then: bytes = b""
    """DATA: what to write next: the content, an empty message, or RSET (nothing for BDAT)."""
    hands_over: bool = False
    """``then`` is content with accepted recipients: once written, HVE may deliver it."""
    final: tuple[int, str] | None = None
    """The transaction is finished with this reply (``None``: its final reply follows ``then``)."""
    stop: tuple[int, str] | None = None
    """The reply ends the session: the sender is refused (5xx), or the session lost its authentication (530)."""
    deferred: bool = False
    """A whole transaction was refused or deferred (throttling, a quota): the window goes back to one."""


def mail_refused(transaction: Transaction, code: int, reply: str) -> Verdict:
    """The verdict when ``MAIL FROM`` is not accepted (``code`` is not 250)."""
    if 400 <= code < 500 or (code != 530 and refuses_the_message(code, reply)):
        # Throttling (432 4.3.2, 451 4.3.0...) or this message only (552 5.3.4): the session goes on. The RCPT
        # and DATA replies that follow a refused MAIL say nothing more ("503 need MAIL").
        transaction.delivery.whole = (code, reply)
        transaction.refuse(code, reply)
        return Verdict(then=RSET, final=(code, reply), deferred=True)
    if code != 530:
        # HVE's own reply for this batch's recipients (a partly delivered message completes with it).
        transaction.refuse(code, reply)
    # 530 5.7.57: the session lost its authentication; a new session fixes it, this message was not taken.
    return Verdict(then=RSET, stop=(code, reply), deferred=True)


def after_data_commands(transaction: Transaction) -> Verdict:
    """Decide a DATA transaction from its command replies: write its content, an empty message, or RSET."""
    mail_code, mail_reply = transaction.replies[0]
    if mail_code != 250:
        return mail_refused(transaction, mail_code, mail_reply)
    transaction.record_recipients()
    data_code, data_reply = transaction.replies[-1] if transaction.commands_answered else (0, "")
    if data_code == 354 and transaction.accepted:
        return Verdict(then=transaction.content, hands_over=True)
    if data_code == 354:
        # DATA accepted after every RCPT was refused: an empty message, as RFC 2920 asks; its reply is read like
        # a final reply and the transaction completes with every recipient refused.
        return Verdict(then=EMPTY_MESSAGE)
    # The transaction ended without content (every RCPT or the DATA refused): clear it with RSET, or the next
    # MAIL FROM gets "503 sender already specified".
    return Verdict(then=RSET, final=(data_code, data_reply or "no recipient accepted"))


def after_bdat(transaction: Transaction) -> Verdict:
    """Decide a BDAT transaction from its replies: MAIL, each RCPT, and the one to ``BDAT ... LAST``."""
    mail_code, mail_reply = transaction.replies[0]
    if mail_code != 250:
        verdict = mail_refused(transaction, mail_code, mail_reply)
        return Verdict(final=verdict.final, stop=verdict.stop, deferred=True)
    transaction.record_recipients()
    final_code, final_reply = transaction.replies[-1]
    deferred = final_code != 250 and bool(transaction.accepted)
    if not transaction.accepted:
        final_reply = final_reply or "no recipient accepted"
    return Verdict(final=(final_code, final_reply), deferred=deferred)
