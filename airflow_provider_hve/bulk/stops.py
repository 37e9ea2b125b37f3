"""Why a mail merge stopped early, and the error it raises for it.

The ledger records the reason when the run stops; the error text is composed only after every session has
finished, so the figures in it ("the run stopped: 100 accepted") are final.
"""

from __future__ import annotations

from dataclasses import dataclass

_RETRY_HINT = (
    "Rows not sent are listed in the report (not_sent); a retry of the task sends them and skips the delivered ones."
)


@dataclass(frozen=True)
class SessionWideRefusal:
    """A permanent refusal that applies to every message (submission quota used up, sender not allowed)."""

    code: int
    reply: str
    message_id: str


@dataclass(frozen=True)
class DeferralsOutlastBudget:
    """HVE kept deferring whole messages (throttling) after the retry budget was spent."""

    code: int
    reply: str
    budget: int


@dataclass(frozen=True)
class ReconnectsExhausted:
    """Too many broken sessions in a row without a message getting through."""

    cause: str
    failures: int
    max_reconnects: int


@dataclass(frozen=True)
class ReconnectBudgetSpent:
    """A session broke and the retry budget had nothing left for a reconnect."""

    cause: str
    budget: int


@dataclass(frozen=True)
class Raised:
    """An error raised in a session or in the task (auth refused, sender refused, timeout, SIGTERM)."""

    error: BaseException


@dataclass(frozen=True)
class Killed:
    """The task was told to stop (``on_kill``: Airflow's SIGTERM, or the task marked failed or success)."""


StopReason = SessionWideRefusal | DeferralsOutlastBudget | ReconnectsExhausted | ReconnectBudgetSpent | Raised | Killed


def stop_error(reason: StopReason, accepted: int) -> BaseException:
    """Return the error to raise for ``reason``, given the final number of accepted rows."""
    from airflow_provider_hve.diagnostics import smtp_reply_hint
    from airflow_provider_hve.exceptions import HveConnectionError, HveError, HveSendError

    if isinstance(reason, Raised):
        return reason.error
    if isinstance(reason, Killed):
        return HveError(
            f"The mail merge was told to stop (on_kill: Airflow sent SIGTERM, or the task was marked failed or "
            f"success): {accepted} accepted, nothing more handed over. {_RETRY_HINT}"
        )
    if isinstance(reason, SessionWideRefusal):
        return HveSendError(
            f"HVE refused message {reason.message_id} with {reason.code} {reason.reply}."
            f"{smtp_reply_hint(reason.code, reason.reply)} This applies to every message, so the run stopped: "
            f"{accepted} accepted. {_RETRY_HINT}",
            smtp_code=reason.code,
        )
    if isinstance(reason, DeferralsOutlastBudget):
        return HveConnectionError(
            f"HVE keeps deferring messages ({reason.code} {reason.reply}) and the run's retry budget "
            f"({reason.budget}) is spent, so the run stopped: {accepted} accepted. Rows not sent are listed "
            f"in the report (not_sent); a retry of the task later sends them and skips the delivered ones."
            f"{smtp_reply_hint(reason.code, reason.reply)}"
        )
    if isinstance(reason, ReconnectsExhausted):
        return HveConnectionError(
            f"{reason.cause} Giving up: {reason.failures} broken session(s) in a row "
            f"(max_reconnects={reason.max_reconnects}). {_RETRY_HINT}"
        )
    return HveConnectionError(
        f"The run's retry budget ({reason.budget}) is spent; the last failure: {reason.cause}. HVE keeps failing: "
        f"check its status and the reply codes in the log. {_RETRY_HINT}"
    )
