"""
The accounting of one message sent with retries: who has it, who refused it, who is still to get it.

:class:`SendAccount` is fed the outcome of each attempt of
:meth:`~airflow_provider_hve.smtp.HveSmtpSession.send` (a :class:`~airflow_provider_hve.transport.Delivery`, or the
error the attempt raised with its ``completed``, ``in_flight`` and ``accepted``) and says what happens next: send
again to these recipients (:class:`SendAgain`), return this :class:`SendResult`, or raise this error. It does no
I/O and keeps no clock: the caller attempts, backs off, and tells it when the retry budget is spent
(:meth:`SendAccount.give_up`). It is tested by feeding outcomes (``tests/unit/test_send_outcome.py``).

The rules it keeps: a recipient HVE accepted the message for is never sent it again, and every error after that
names them (``accepted``, "Already accepted by HVE"); a message handed over without a final reply is never sent
again (its outcome is unknown); only recipients refused with a temporary ``4xx`` are sent again after a
delivery, and after a connection that broke, only those not yet handed over.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from airflow_provider_hve.diagnostics import describe_os_error, smtp_reply_hint
from airflow_provider_hve.exceptions import HveCancelledError, HveConnectionError, HveError, HveSendError
from airflow_provider_hve.transport.envelope import Delivery


@dataclass(frozen=True)
class SendResult:
    """What the server did with one message: ``refused`` maps address -> (code, reply)."""

    message_id: str
    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, e.g. for XCom."""
        return {
            "message_id": self.message_id,
            "accepted": list(self.accepted),
            "refused": {addr: [code, reply] for addr, (code, reply) in self.refused.items()},
        }


@dataclass(frozen=True)
class SendAgain:
    """
    Send the message again to ``recipients`` after a backoff; with no retry left, ask :meth:`SendAccount.give_up`.

    ``cause`` says why, for the log and the backoff (HVE said it is busy: a longer one).
    """

    recipients: tuple[str, ...]
    cause: str


Next: TypeAlias = SendAgain | SendResult | HveError
"""What :meth:`SendAccount.feed` says: send again, return the result, or raise the error (its ``__cause__`` set)."""


class SendAccount:
    """
    The account of one message across the attempts of a send.

    :param conn_id: the connection's id, for error messages.
    :param message_id: the message's Message-ID.
    :param envelope: every recipient of the message.
    :param accepted: the list to record accepted recipients in (a caller interrupted meanwhile reads it); a new
        one if not given.
    :param gave_up: returns the sentence an error ends with once retries were made or the budget is spent
        (how many attempts, how long, the budget); called only when such an error is built.

    Example::

        account = SendAccount("hve_default", "<1@contoso.com>", ["a@contoso.com"], gave_up=lambda: " Gave up.")
        step = account.feed(Delivery("<1@contoso.com>", "<1@contoso.com>", accepted=["a@contoso.com"]))
        assert step == SendResult("<1@contoso.com>", ("a@contoso.com",))
    """

    def __init__(
        self,
        conn_id: str,
        message_id: str,
        envelope: Sequence[str],
        *,
        accepted: list[str] | None = None,
        gave_up: Callable[[], str],
    ) -> None:
        self.conn_id = conn_id
        self.message_id = message_id
        self.pending: list[str] = list(envelope)
        """Who the next attempt sends the message to."""
        self.accepted: list[str] = accepted if accepted is not None else []
        self.refused: dict[str, tuple[int, str]] = {}
        """Recipients refused for good (and, once the budget is spent, those refused with a ``4xx``)."""
        self.attempts = 0
        """Attempts whose outcome was fed."""
        self._gave_up = gave_up
        # What the last SendAgain was for, so that give_up() can end the send: the broken connection's error, or the
        # recipients refused with a 4xx.
        self._last: HveConnectionError | dict[str, tuple[int, str]] | None = None

    def feed(self, outcome: Delivery | HveError) -> Next:
        """
        Account for one attempt's outcome and say what happens next.

        :param outcome: the attempt's delivery, or the error it raised (not
            :class:`~airflow_provider_hve.exceptions.HveCancelledError`: see :meth:`cancelled`).
        """
        self.attempts += 1
        self.accepted.extend(outcome.accepted)
        if isinstance(outcome, Delivery):
            return self._delivered(outcome)
        if isinstance(outcome, HveConnectionError):
            return self._broken(outcome)
        if not self.accepted:  # AUTH refused on the reconnect, MAIL FROM refused...
            return outcome
        return _caused_by(_with_accepted(outcome, self.accepted), outcome)

    def give_up(self) -> SendResult | HveError:
        """Say what the send ends with when :class:`SendAgain` was answered but no retry is left."""
        last = self._last
        if isinstance(last, HveConnectionError):
            if self.attempts == 1 and not self.accepted:
                return last
            error = HveConnectionError(
                f"{last}{_already_accepted(self.accepted)}{self._gave_up()}",
                unsent=[] if self.accepted else [self.message_id],
                accepted=self.accepted,
            )
            return _caused_by(error, last)
        self.refused.update(last or {})
        return self._finished()

    def cancelled(self, reason: str) -> HveCancelledError:
        """
        Return the error for a send cancelled before its next attempt (or while that attempt's token was awaited).

        :param reason: why, as the cancel token says.
        """
        when = f"after {self.attempts} attempt(s)" if self.attempts else "before its first attempt"
        state = f"not sent to {', '.join(self.pending)}" if self.accepted else "HVE has not accepted it"
        return HveCancelledError(
            f"Sending message {self.message_id} was cancelled ({reason or 'cancelled'}) {when} (connection "
            f"{self.conn_id!r}); no further attempt: {state}.{_already_accepted(self.accepted)}",
            unsent=[] if self.accepted else [self.message_id],
            accepted=self.accepted,
        )

    def _delivered(self, delivery: Delivery) -> Next:
        temporary = {addr: reply for addr, reply in delivery.refused.items() if 400 <= reply[0] < 500}
        self.refused.update({addr: reply for addr, reply in delivery.refused.items() if addr not in temporary})
        if not temporary:
            return self._finished()
        self._last = temporary
        self.pending = list(temporary)
        return SendAgain(tuple(temporary), "; ".join(f"{addr}: {c} {r}" for addr, (c, r) in temporary.items()))

    def _broken(self, exc: HveConnectionError) -> Next:
        # This attempt or an earlier one may have delivered it to some recipients (a 50-recipient batch of a split
        # message): they are in ``accepted`` and must not get it twice. The batches that completed refused some for
        # good, and some with a 4xx (those not written: 451): only the latter are sent again.
        if exc.completed:
            self.pending = []
        for partly in exc.completed:
            self.refused.update({a: r for a, r in partly.refused.items() if not 400 <= r[0] < 500})
            self.pending += [a for a, r in partly.refused.items() if 400 <= r[0] < 500]
        have_it = set(self.accepted)  # never again to a recipient HVE took it for, whatever the error said
        self.pending = [a for a in self.pending if a not in have_it]
        if exc.in_flight:
            return _caused_by(self._outcome_unknown(exc), exc)
        if not self.pending:
            return self._finished()
        self._last = exc
        if exc.permanent:
            return self.give_up()
        return SendAgain(tuple(self.pending), str(exc))

    def _finished(self) -> SendResult | HveSendError:
        if self.accepted:
            return SendResult(message_id=self.message_id, accepted=tuple(self.accepted), refused=self.refused)
        details = "; ".join(f"{addr}: {code} {reply}" for addr, (code, reply) in self.refused.items())
        hints = {smtp_reply_hint(code, reply) for code, reply in self.refused.values()} - {""}
        return HveSendError(
            f"HVE refused the message for every recipient (connection {self.conn_id!r}): "
            f"{details}.{''.join(sorted(hints))}{self._gave_up() if self.attempts > 1 else ''}",
            refused=self.refused,
        )

    def _outcome_unknown(self, exc: HveConnectionError) -> HveConnectionError:
        cause = exc.__cause__
        what = describe_os_error(cause) if cause is not None else "the server closed the connection"
        message_id = self.message_id
        return HveConnectionError(
            f"The connection to HVE broke after message {message_id} was handed over and before HVE confirmed it "
            f"(connection {self.conn_id!r}: {what}): its outcome is unknown. HVE may have delivered it, so it was "
            f"not sent again: a second copy could reach the recipients twice. Check whether it arrived (message "
            f"trace by Message-ID {message_id}) before sending it again.{_already_accepted(self.accepted)}",
            in_flight=[message_id],
            completed=exc.completed,
            accepted=self.accepted,
        )


def _already_accepted(accepted: Sequence[str]) -> str:
    return f" Already accepted by HVE: {', '.join(accepted)} (not sent to them again)." if accepted else ""


def _with_accepted(exc: HveError, accepted: Sequence[str]) -> HveError:
    """The same error (type, attributes), its text and ``accepted`` naming the recipients that already have it."""
    again = copy.copy(exc)
    again.args = (f"{exc}{_already_accepted(accepted)}", *exc.args[1:])
    again.accepted = tuple(accepted)
    return again


def _caused_by(error: HveError, cause: HveError) -> HveError:
    """``error`` as ``raise error from cause`` leaves it."""
    error.__cause__ = cause
    return error
