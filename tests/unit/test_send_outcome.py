"""The accounting of one message's send (transport.outcome.SendAccount), fed each attempt's outcome directly.

What HveSmtpSession.send does with these decisions on a real connection is tested against the sandbox
(tests/test_single_send_retry.py, tests/test_fault_matrix.py); here every branch of the accounting is reached
without a socket, and the error texts users and tests read are pinned word for word.
"""

from __future__ import annotations

import pytest

from airflow_provider_hve.diagnostics import SMTP_SEND_CAUSES
from airflow_provider_hve.exceptions import (
    HveAuthError,
    HveCancelledError,
    HveConnectionError,
    HveError,
    HveSendError,
)
from airflow_provider_hve.transport import STOPPED_BEFORE_THIS_BATCH, Delivery, SendAccount, SendAgain, SendResult

MID = "<1@contoso.example>"
A, B, C = "alice@contoso.example", "bob@contoso.example", "carol@contoso.example"
GAVE_UP = " Gave up after 2 attempt(s) in 3 s (the test's budget)."
BUSY = (451, "4.3.0 Temporary server error")
UNKNOWN_USER = (550, "5.1.1 User unknown")
ALREADY = " Already accepted by HVE: {} (not sent to them again)."


def account(envelope: list[str], accepted: list[str] | None = None) -> SendAccount:
    return SendAccount("hve_default", MID, envelope, accepted=accepted, gave_up=lambda: GAVE_UP)


def delivery(accepted: list[str], refused: dict[str, tuple[int, str]] | None = None) -> Delivery:
    return Delivery(MID, MID, accepted=accepted, refused=dict(refused or {}))


def broken(
    *,
    in_flight: bool = False,
    completed: list[Delivery] | None = None,
    accepted: list[str] | None = None,
    cause: BaseException | None = None,
) -> HveConnectionError:
    """An attempt's HveConnectionError as HveSmtpSession._send_once raises it (accepted: batches HVE took)."""
    exc = HveConnectionError(
        "The connection to the SMTP server broke (connection 'hve_default').",
        in_flight=[MID] if in_flight else [],
        unsent=[] if in_flight else [MID],
        completed=completed or [],
        accepted=accepted or [],
    )
    exc.__cause__ = cause
    return exc


def batches(count: int) -> list[list[str]]:
    return [[f"r{batch}-{n:02d}@contoso.example" for n in range(50)] for batch in range(count)]


def test_a_break_after_batch_1_of_3_with_the_last_in_flight_is_an_unknown_outcome_naming_the_accepted() -> None:
    first, second, third = batches(3)
    progress: list[str] = []
    send = account(first + second + third, accepted=progress)
    attempt = broken(in_flight=True, accepted=first, cause=ConnectionResetError(104, "Connection reset by peer"))

    step = send.feed(attempt)

    assert isinstance(step, HveConnectionError) and not isinstance(step, SendAgain)
    assert str(step) == (
        f"The connection to HVE broke after message {MID} was handed over and before HVE confirmed it (connection "
        f"'hve_default': ConnectionResetError: [Errno 104] Connection reset by peer): its outcome is unknown. HVE may "
        f"have delivered it, so it was not sent again: a second copy could reach the recipients twice. Check whether "
        f"it arrived (message trace by Message-ID {MID}) before sending it again." + ALREADY.format(", ".join(first))
    )
    assert (step.in_flight, step.unsent, step.accepted) == ([MID], [], tuple(first))
    assert step.__cause__ is attempt
    assert progress == first  # the caller's list: read after an interruption


def test_an_unknown_outcome_without_a_low_level_cause_says_the_server_closed_the_connection() -> None:
    step = account([A]).feed(broken(in_flight=True))

    assert isinstance(step, HveConnectionError)
    assert "(connection 'hve_default': the server closed the connection): its outcome is unknown." in str(step)
    assert "Already accepted" not in str(step) and step.accepted == ()


def test_temporary_refusals_only_are_sent_again_and_the_result_adds_them_up() -> None:
    send = account([A, B, C])

    step = send.feed(delivery([A], {B: BUSY, C: UNKNOWN_USER}))

    assert step == SendAgain((B,), f"{B}: 451 4.3.0 Temporary server error")
    assert send.pending == [B]
    assert send.feed(delivery([B])) == SendResult(MID, (A, B), {C: UNKNOWN_USER})
    assert send.attempts == 2


def test_temporary_refusals_with_no_retry_left_are_reported_as_refused() -> None:
    send = account([A, B, C])
    assert isinstance(send.feed(delivery([A], {B: BUSY, C: UNKNOWN_USER})), SendAgain)

    assert send.give_up() == SendResult(MID, (A,), {C: UNKNOWN_USER, B: BUSY})


def test_a_permanent_refusal_is_not_sent_again() -> None:
    send = account([A, B])

    assert send.feed(delivery([A], {B: UNKNOWN_USER})) == SendResult(MID, (A,), {B: UNKNOWN_USER})


def test_a_break_before_anything_was_handed_over_sends_again_to_every_pending_recipient() -> None:
    send = account([A, B, C])
    attempt = broken()

    assert send.feed(attempt) == SendAgain((A, B, C), str(attempt))
    assert send.pending == [A, B, C]
    # No retry left after the first attempt, nothing accepted: the attempt's own error, untouched.
    assert send.give_up() is attempt


def test_a_break_after_a_retry_gives_up_with_the_budget_and_the_message_unsent() -> None:
    send = account([A])
    assert isinstance(send.feed(delivery([], {A: BUSY})), SendAgain)
    attempt = broken()
    assert send.feed(attempt) == SendAgain((A,), str(attempt))

    error = send.give_up()

    assert type(error) is HveConnectionError
    assert str(error) == f"{attempt}{GAVE_UP}"
    assert (error.unsent, error.accepted, error.in_flight) == ([MID], (), [])
    assert error.__cause__ is attempt


def test_a_break_after_some_batches_completed_sends_again_only_the_batches_not_written() -> None:
    first, second, third = batches(3)
    not_written = dict.fromkeys(second + third, STOPPED_BEFORE_THIS_BATCH)
    refused_in_first = {first[0]: UNKNOWN_USER}
    partly = delivery(first[1:], {**refused_in_first, **not_written})
    send = account(first + second + third)

    step = send.feed(broken(completed=[partly], accepted=first[1:]))

    assert isinstance(step, SendAgain) and step.recipients == (*second, *third)
    assert send.refused == refused_in_first
    error = send.give_up()
    assert isinstance(error, HveConnectionError)
    assert str(error).endswith(ALREADY.format(", ".join(first[1:])) + GAVE_UP)
    assert (error.unsent, error.accepted) == ([], tuple(first[1:]))
    # Or the retry delivers them: every recipient once, the refused one reported.
    send = account(first + second + third)
    send.feed(broken(completed=[partly], accepted=first[1:]))
    assert send.feed(delivery(second + third)) == SendResult(MID, (*first[1:], *second, *third), refused_in_first)


def test_a_break_after_every_batch_completed_ends_the_send() -> None:
    send = account([A, B])

    step = send.feed(broken(completed=[delivery([A], {B: UNKNOWN_USER})], accepted=[A]))

    assert step == SendResult(MID, (A,), {B: UNKNOWN_USER})


def test_a_permanent_connection_failure_is_not_sent_again() -> None:
    attempt = broken()
    attempt.permanent = True

    assert account([A]).feed(attempt) is attempt


def test_a_permanent_connection_failure_after_a_partial_delivery_names_the_accepted() -> None:
    send = account([A, B])
    assert send.feed(delivery([A], {B: BUSY})) == SendAgain((B,), f"{B}: 451 4.3.0 Temporary server error")
    attempt = broken()
    attempt.permanent = True

    error = send.feed(attempt)

    assert isinstance(error, HveConnectionError)
    assert str(error) == f"{attempt}{ALREADY.format(A)}{GAVE_UP}"
    assert (error.unsent, error.accepted) == ([], (A,))


def test_every_recipient_refused_is_a_send_error_with_the_hints() -> None:
    quota = (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException")
    external = (550, "5.7.54 Unable to relay recipient in non-accepted domain")

    error = account([A, B]).feed(delivery([], {A: external, B: quota}))

    assert type(error) is HveSendError
    assert str(error) == (
        f"HVE refused the message for every recipient (connection 'hve_default'): {A}: 550 {external[1]}; "
        f"{B}: 554 {quota[1]}. Likely cause and fix: {SMTP_SEND_CAUSES['5.7.54']} Likely cause and fix: "
        f"{SMTP_SEND_CAUSES['5.2.0']}"
    )
    assert error.refused == {A: external, B: quota} and error.accepted == ()


@pytest.mark.parametrize(
    "attempts, gave_up", [pytest.param(1, "", id="no-retry"), pytest.param(2, GAVE_UP, id="retried")]
)
def test_every_recipient_refused_with_no_retry_left_says_how_it_gave_up_once_it_retried(
    attempts: int, gave_up: str
) -> None:
    send = account([A])
    for _ in range(attempts):
        assert send.feed(delivery([], {A: BUSY})) == SendAgain((A,), f"{A}: 451 {BUSY[1]}")

    error = send.give_up()

    assert isinstance(error, HveSendError)
    assert str(error) == (
        f"HVE refused the message for every recipient (connection 'hve_default'): {A}: 451 {BUSY[1]}. Likely "
        f"cause and fix: {SMTP_SEND_CAUSES['4.3.0']}{gave_up}"
    )
    assert error.refused == {A: BUSY}


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(HveSendError("HVE refused MAIL FROM.", refused={A: (550, "5.7.60")}, smtp_code=550), id="send"),
        pytest.param(HveAuthError("HVE refused AUTH XOAUTH2.", code="535", smtp_reply="535 5.7.3"), id="auth"),
    ],
)
def test_a_refusal_after_an_earlier_attempt_delivered_keeps_its_type_and_names_the_accepted(refusal: HveError) -> None:
    send = account([A, B])
    send.feed(delivery([A], {B: BUSY}))

    error = send.feed(refusal)

    assert type(error) is type(refusal) and error is not refusal
    assert str(error) == f"{refusal}{ALREADY.format(A)}"
    assert error.accepted == (A,) and error.__cause__ is refusal
    assert vars(error) | {"accepted": ()} == vars(refusal) | {"accepted": ()}  # code, refused, smtp_reply... kept


def test_a_refusal_before_anything_was_accepted_is_the_attempt_s_own_error() -> None:
    refusal = HveSendError("HVE refused MAIL FROM.", smtp_code=550)

    assert account([A]).feed(refusal) is refusal


def test_a_refusal_of_an_attempt_that_delivered_some_batches_names_them() -> None:
    first, second = batches(2)
    refusal = HveSendError("HVE refused the second batch.", smtp_code=554, accepted=first)

    error = account(first + second).feed(refusal)

    assert isinstance(error, HveSendError) and error.accepted == tuple(first)
    assert str(error) == f"{refusal}{ALREADY.format(', '.join(first))}"


def test_cancelled_before_the_first_attempt() -> None:
    error = account([A, B]).cancelled("the trigger was cancelled")

    assert type(error) is HveCancelledError
    assert str(error) == (
        f"Sending message {MID} was cancelled (the trigger was cancelled) before its first attempt (connection "
        f"'hve_default'); no further attempt: HVE has not accepted it."
    )
    assert (error.unsent, error.accepted) == ([MID], ())


def test_cancelled_after_a_partial_delivery_names_who_has_it_and_who_does_not() -> None:
    send = account([A, B, C])
    send.feed(delivery([A], {B: BUSY, C: BUSY}))

    error = send.cancelled("")

    assert str(error) == (
        f"Sending message {MID} was cancelled (cancelled) after 1 attempt(s) (connection 'hve_default'); no further "
        f"attempt: not sent to {B}, {C}.{ALREADY.format(A)}"
    )
    assert (error.unsent, error.accepted) == ([], (A,))


def test_a_break_that_names_accepted_recipients_never_sends_to_them_again() -> None:
    # Whatever shape the error has (accepted named, no completed batch, nothing in flight), a recipient HVE took
    # the message for is not in the next attempt.
    send = account([A, B, C])
    step = send.feed(broken(accepted=[A]))
    assert isinstance(step, SendAgain) and step.recipients == (B, C)


def test_temporary_refusals_of_every_completed_batch_are_sent_again() -> None:
    send = account([A, B, C])
    step = send.feed(broken(completed=[delivery([], {A: BUSY}), delivery([], {B: BUSY, C: UNKNOWN_USER})]))
    assert isinstance(step, SendAgain) and step.recipients == (A, B)
