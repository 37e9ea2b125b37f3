"""Transient faults on the single-message path (HveHook.send_email / send_message, HveSmtpSession.send).

Each fault is injected by the sandbox and the assertions read what its SMTP server received: retried where
that cannot duplicate the message, never resent when its outcome is unknown, bounded in count and time.
Only the clock is replaced: ``smtp._sleep`` records the backoff instead of waiting it out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_hve import smtp
from airflow_provider_hve.exceptions import HveAuthError, HveConfigError, HveConnectionError, HveSendError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.message import build_message
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.smtp_server import (
    IDLE_TIMEOUT,
    INSUFFICIENT_RESOURCES,
    NOT_AUTHENTICATED,
    SERVICE_CLOSING,
    SUBMISSION_QUOTA_EXCEEDED,
    TEMPORARY_FAILURE,
    TOO_BIG,
)

ConnFactory = Callable[..., str]
ALICE, BOB, CAROL = "alice@contoso.example", "bob@contoso.example", "carol@contoso.example"


class FakeClock:
    """Stands in for time.sleep and time.monotonic in smtp.py: records each backoff and advances by it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(smtp, "_sleep", fake.sleep)
    monkeypatch.setattr(smtp, "_clock", fake.monotonic)
    return fake


@pytest.fixture
def hook(hve_connection: ConnFactory) -> HveHook:
    return HveHook(hve_conn_id=hve_connection())


def transactions(sandbox: HveSandbox) -> list[Any]:
    return [t for session in sandbox.smtp_sessions for t in session.transactions]


def test_451_after_the_content_is_sent_again(sandbox: HveSandbox, hook: HveHook, clock: FakeClock) -> None:
    sandbox.smtp.fail_next_data(TEMPORARY_FAILURE, count=1)
    result = hook.send_email(to=ALICE, subject="Alert", text_content="task failed")

    assert result.accepted == (ALICE,) and result.refused == {}
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.message["Message-ID"] == result.message_id
    first, second = transactions(sandbox)
    assert first.data_reply.startswith("451") and second.data_reply.startswith("250")
    assert len(sandbox.smtp_sessions) == 1  # the session survived the 451: no reconnect needed
    (delay,) = clock.delays
    assert smtp.RETRY_DELAY / 2 <= delay <= smtp.RETRY_DELAY


def test_421_in_place_of_the_final_reply_reconnects_and_authenticates_again(
    sandbox: HveSandbox, hook: HveHook, clock: FakeClock
) -> None:
    # A 421 instead of the 250 is a definite "not taken": safe to send again, on a new connection.
    sandbox.smtp.throttle(SERVICE_CLOSING, command="content", count=1)
    result = hook.send_email(to=[ALICE, BOB], subject="Alert", text_content="task failed")

    assert sorted(result.accepted) == [ALICE, BOB]
    (delivered,) = sandbox.wait_for_messages(1)
    assert sorted(delivered.rcpt_tos) == [ALICE, BOB]
    first, second = sandbox.smtp_sessions
    assert [a.success for a in first.auth_attempts] == [True] and [a.success for a in second.auth_attempts] == [True]
    (delay,) = clock.delays
    # HVE said it is busy (421 4.3.2): the longer backoff.
    assert smtp.THROTTLED_RETRY_DELAY / 2 <= delay <= smtp.THROTTLED_RETRY_DELAY


@pytest.mark.parametrize(
    ("reply", "command"),
    [(SERVICE_CLOSING, "MAIL"), (NOT_AUTHENTICATED, "MAIL"), (SERVICE_CLOSING, "EHLO"), ("454 4.7.0 busy", "AUTH")],
    ids=["421-to-mail", "530-session-lost-its-auth", "421-to-ehlo", "454-to-auth"],
)
def test_a_session_broken_before_the_hand_over_is_opened_again(
    sandbox: HveSandbox, hook: HveHook, clock: FakeClock, reply: str, command: str
) -> None:
    sandbox.smtp.throttle(reply, command=command, count=1)
    result = hook.send_email(to=ALICE, subject="Alert", text_content="task failed")

    assert result.accepted == (ALICE,)
    assert len(sandbox.wait_for_messages(1)) == 1
    assert len(clock.delays) == 1
    # The sandbox lists a connection once a command reaches its handler: the one hung up at EHLO is not listed.
    assert len(sandbox.smtp_sessions) == (1 if command == "EHLO" else 2)
    assert sandbox.smtp_sessions[-1].auth_attempts[-1].success


def test_an_unknown_outcome_is_never_sent_again_and_the_error_names_the_message(
    sandbox: HveSandbox, hve_connection: ConnFactory, clock: FakeClock
) -> None:
    # HVE takes the message but its 250 comes after the client's 1 s timeout: it may or may not have it.
    hook = HveHook(hve_conn_id=hve_connection(timeout=1))
    sandbox.smtp.stall_after(0, 2.5, command="content")
    outgoing = hook.build_message(to=ALICE, subject="Alert", text_content="task failed")
    message_id = str(outgoing.message["Message-ID"])
    with pytest.raises(HveConnectionError) as caught:
        hook.send_message(outgoing)

    assert message_id in str(caught.value) and "not sent again" in str(caught.value)
    assert caught.value.in_flight == [message_id]
    assert clock.delays == []
    (delivered,) = sandbox.wait_for_messages(1, timeout=10)  # it did arrive, once
    assert delivered.message["Message-ID"] == message_id
    assert len(transactions(sandbox)) == 1 and len(sandbox.smtp_sessions) == 1


def test_a_permanent_refusal_of_one_recipient_delivers_to_the_others(
    sandbox: HveSandbox, hook: HveHook, clock: FakeClock
) -> None:
    # Alice: 452 once (temporary, sent again); Bob: 550 (for good, reported); Carol: accepted at once.
    sandbox.smtp.throttle(INSUFFICIENT_RESOURCES, command="RCPT", count=1)
    sandbox.smtp.refuse_recipient(BOB)
    result = hook.send_email(to=[ALICE, BOB, CAROL], subject="Alert", text_content="task failed")

    assert sorted(result.accepted) == [ALICE, CAROL]
    assert list(result.refused) == [BOB] and result.refused[BOB][0] == 550
    delivered = sandbox.wait_for_messages(2)
    assert sorted(m.rcpt_tos[0] for m in delivered) == [ALICE, CAROL]
    assert [t.rcpt_tos for t in transactions(sandbox)] == [[CAROL], [ALICE]]  # the retry went to Alice only
    assert len(clock.delays) == 1


def test_retries_are_bounded_by_the_connection_extra(
    sandbox: HveSandbox, hve_connection: ConnFactory, clock: FakeClock
) -> None:
    hook = HveHook(hve_conn_id=hve_connection(send_retries=2))
    sandbox.smtp.throttle(TEMPORARY_FAILURE, command="content", count=100)
    with pytest.raises(HveSendError, match=r"451 4\.3\.0.*Gave up after 3 attempt\(s\)") as caught:
        hook.send_email(to=ALICE, subject="Alert", text_content="task failed")

    assert caught.value.refused[ALICE][0] == 451
    assert len(transactions(sandbox)) == 3 and len(clock.delays) == 2
    assert not sandbox.messages


def test_retries_per_call_override_the_connection(sandbox: HveSandbox, hook: HveHook, clock: FakeClock) -> None:
    sandbox.smtp.throttle(TEMPORARY_FAILURE, command="content", count=100)
    with pytest.raises(HveSendError, match=r"451 4\.3\.0"):
        hook.send_email(to=ALICE, subject="Alert", text_content="task failed", retries=0)
    assert len(transactions(sandbox)) == 1 and clock.delays == []


def test_retries_stay_within_about_a_minute(sandbox: HveSandbox, hook: HveHook, clock: FakeClock) -> None:
    # HVE keeps hanging up as busy: the backoff doubles from 4 s, and no retry starts after the window.
    sandbox.smtp.throttle(SERVICE_CLOSING, command="MAIL", count=100)
    with pytest.raises(HveConnectionError, match="Gave up after"):
        hook.send_email(to=ALICE, subject="Alert", text_content="task failed", retries=10)
    assert sum(clock.delays) <= smtp.SEND_RETRY_WINDOW
    assert 2 <= len(clock.delays) < 10
    assert len(sandbox.smtp_sessions) == len(clock.delays) + 1
    assert not sandbox.messages


def test_configuration_problems_are_not_retried(
    sandbox: HveSandbox, hve_connection: ConnFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SMTP server's CA is trusted nowhere: a second attempt would meet the same certificate.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", sandbox.ca_bundle)
    hook = HveHook(hve_conn_id=hve_connection(ca_bundle=None))
    with pytest.raises(HveConnectionError, match="failed verification"):
        hook.send_email(to=ALICE, subject="x", text_content="x")
    assert clock.delays == [] and len(sandbox.smtp_sessions) == 1


@pytest.mark.parametrize("value", ["many", -1, 11, 2.5, True], ids=["word", "negative", "too-many", "fraction", "bool"])
def test_send_retries_extra_is_validated(hve_connection: ConnFactory, value: object) -> None:
    hook = HveHook(hve_conn_id=hve_connection(conn_id="hve_retries", send_retries=value))
    with pytest.raises(HveConfigError, match=r"'hve_retries'.*'send_retries'.*0 to 10"):
        hook.config  # noqa: B018 - validation happens when the connection is read


def test_send_retries_extra_is_read(hve_connection: ConnFactory) -> None:
    assert HveHook(hve_conn_id=hve_connection(send_retries="0")).config.send_retries == 0
    assert HveHook(hve_conn_id=hve_connection(conn_id="hve_other")).config.send_retries == 3


def test_a_negative_retries_argument_is_refused(sandbox: HveSandbox, hook: HveHook) -> None:
    with pytest.raises(HveConfigError, match="'retries'"):
        hook.send_email(to=ALICE, subject="x", text_content="x", retries=-1)
    assert not sandbox.messages


# -- a 5xx to MAIL FROM about the message, and the server's advertised SIZE ------------------------------------------


def test_552_to_mail_from_fails_that_message_only(sandbox: HveSandbox, hook: HveHook, clock: FakeClock) -> None:
    sandbox.smtp.throttle(TOO_BIG, command="MAIL", count=1)
    first = build_message(sender=sandbox.account, to=ALICE, subject="big", text_content="x")
    second = build_message(sender=sandbox.account, to=BOB, subject="small", text_content="y")
    with hook.smtp_session() as session:
        with pytest.raises(HveSendError, match=r"every recipient.*552 5\.3\.4") as caught:
            session.send(first.message, first.recipients)
        assert caught.value.refused == {ALICE: (552, TOO_BIG[4:])}
        result = session.send(second.message, second.recipients)  # same session: the sender was not refused
    assert result.accepted == (BOB,)
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == [BOB]
    assert len(sandbox.smtp_sessions) == 1 and clock.delays == []


def test_a_message_over_the_advertised_size_is_not_sent(sandbox: HveSandbox, hook: HveHook, clock: FakeClock) -> None:
    # A relay that advertises SIZE 20000 (smaller than HVE's 10 MB): the 30 kB message is not even offered.
    sandbox.smtp.max_message_size = 20_000
    with pytest.raises(HveSendError, match=r"552 5\.3\.4 Not sent: the message is [\d,]+ bytes .* 20,000") as caught:
        hook.send_email(to=ALICE, subject="export", text_content="x", attachments=[_attachment(30_000)], retries=3)
    assert caught.value.refused[ALICE][0] == 552
    (session,) = sandbox.smtp_sessions
    assert session.auth_attempts[0].success and session.transactions == []
    assert clock.delays == [] and not sandbox.messages


def _attachment(size: int) -> Any:
    from airflow_provider_hve.message import Attachment

    return Attachment("export.bin", b"\x01" * size)


def test_giving_up_names_the_recipients_an_earlier_attempt_delivered_to(
    sandbox: HveSandbox, hook: HveHook, clock: FakeClock
) -> None:
    # Carol gets it at once, Alice's 452 calls for a retry, and then HVE hangs up at every MAIL FROM.
    sandbox.smtp.throttle(INSUFFICIENT_RESOURCES, command="RCPT", count=1)
    sandbox.smtp.throttle(SERVICE_CLOSING, command="MAIL", count=100, after_messages=1)
    expected = f"Already accepted by HVE: {CAROL}.*Gave up after 3 attempt"
    with pytest.raises(HveConnectionError, match=expected) as caught:
        hook.send_email(to=[ALICE, CAROL], subject="Alert", text_content="task failed", retries=2)
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == [CAROL]
    # Carried on the error, for whoever sends again (the operator's retry): Carol has it, so it is not "unsent".
    assert caught.value.accepted == (CAROL,)
    assert caught.value.unsent == [] and caught.value.in_flight == []


def test_an_auth_refusal_on_the_reconnect_keeps_the_recipients_already_accepted(
    sandbox: HveSandbox, hook: HveHook, clock: FakeClock
) -> None:
    # Carol gets it, Alice's 452 calls for a retry, HVE hangs up at its MAIL FROM, and refuses the new AUTH.
    sandbox.smtp.throttle(INSUFFICIENT_RESOURCES, command="RCPT", count=1)
    sandbox.smtp.throttle(SERVICE_CLOSING, command="MAIL", count=1, after_messages=1)
    sandbox.smtp.throttle("535 5.7.3 Authentication unsuccessful", command="AUTH", count=1, after_messages=1)
    with pytest.raises(HveAuthError, match=f"Already accepted by HVE: {CAROL}") as caught:
        hook.send_email(to=[ALICE, CAROL], subject="Alert", text_content="task failed", retries=3)
    assert caught.value.accepted == (CAROL,)
    assert caught.value.smtp_reply is not None and "5.7.3" in caught.value.smtp_reply  # still the auth diagnosis
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == [CAROL]
    assert len(sandbox.smtp_sessions) == 2  # the reconnect reached AUTH


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_a_quota_at_a_later_batch_keeps_the_first_batches_accepted(
    sandbox: HveSandbox, hook: HveHook, clock: FakeClock, chunking: bool
) -> None:
    # 120 recipients go as batches of 50, 50 and 20. HVE delivers the first batch, then its quota refuses every
    # MAIL FROM: the error must carry the 50 delivered (else a retry mails them twice) and the others refused with
    # HVE's own reply, or, for a batch never written (DATA stops at the refusal), as not sent.
    sandbox.smtp.chunking = chunking
    everyone = [f"user{n:03d}@contoso.example" for n in range(120)]
    sandbox.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="MAIL", count=2, after_messages=1)
    with pytest.raises(HveSendError, match="SubmissionQuotaExceeded.*Already accepted by HVE: user000") as caught:
        hook.send_email(to=everyone, subject="Report", text_content="numbers")
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == everyone[:50]
    assert caught.value.accepted == tuple(everyone[:50])
    refused = caught.value.refused
    assert set(refused) == set(everyone[50:])
    quota = (554, SUBMISSION_QUOTA_EXCEEDED[4:])
    assert all(refused[address] == quota for address in everyone[50:100]), refused
    if chunking:  # the third batch went in the same BDAT window and met the quota too
        assert all(refused[address] == quota for address in everyone[100:]), refused
    else:  # written after the refusal: never
        assert all(refused[address][0] == 451 and "Not sent" in refused[address][1] for address in everyone[100:])


@pytest.mark.parametrize("silent", [False, True], ids=["451-then-close", "silent-close"])
@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_a_session_the_server_closed_while_idle_is_found_dead_before_the_hand_over(
    sandbox: HveSandbox, hook: HveHook, clock: FakeClock, chunking: bool, silent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session kept open (hook.smtp_session()) sits idle; HVE says "451 4.7.0 Timeout" and closes it, or a load
    # balancer drops it without a word. The next message must not be written into the dead connection and called
    # unknown: a NOOP finds it dead with nothing handed over, and the message goes on a new connection, once.
    if silent:
        from airflow_provider_hve.sandbox.smtp_server import HveSmtp

        def close_silently(server: HveSmtp) -> None:
            assert server.record is not None and server.transport is not None
            server.record.timed_out = True
            server.transport.close()

        monkeypatch.setattr(HveSmtp, "_timeout_cb", close_silently)
    from airflow_provider_hve.transport import loop

    monkeypatch.setattr(loop, "IDLE_PROBE_SECONDS", 0.5)  # below the sandbox's idle timeout, as 5 s is below HVE's
    sandbox.smtp.chunking = chunking
    hook.get_access_token()  # no token request inside the session: its commands come without a pause
    # Long enough that opening a session on a loaded machine is not itself "idle" (it applies between any commands).
    # 2 s was passed by the gap between two commands of the opening under a load of 8 on 2 cores (a 451 to AUTH).
    sandbox.smtp.idle_timeout = 4.0
    # Both messages built before the session opens: building inside it, on a loaded machine, could itself last
    # past the idle timeout.
    first = hook.build_message([ALICE], "First", text_content="one")
    second = hook.build_message([BOB], "Second", text_content="two")
    with hook.smtp_session() as session:
        session.send(first.message, first.recipients, payload=first.payload)
        sandbox.wait_for_messages(1)
        give_up = time.monotonic() + 15
        while not sandbox.smtp_sessions[0].timed_out:  # the server's idle timeout, bounded
            assert time.monotonic() < give_up, "the sandbox did not close the idle session"
            time.sleep(0.05)
        result = session.send(second.message, second.recipients, payload=second.payload)
    assert result.accepted == (BOB,)
    assert [m.message["Subject"] for m in sandbox.wait_for_messages(2)] == ["First", "Second"]
    assert len(sandbox.smtp_sessions) == 2


def test_a_bdat_transaction_refused_at_mail_from_before_the_end_is_sent_again(
    sandbox: HveSandbox, hook: HveHook, clock: FakeClock
) -> None:
    # The server answers a BDAT window's MAIL FROM with 451 and closes: that transaction took no content, so it was
    # certainly not delivered (before: "outcome unknown", and the single send refused to send it again).
    assert sandbox.smtp.chunking
    with hook.smtp_session() as session:
        first = hook.build_message([ALICE], "First", text_content="one")
        session.send(first.message, first.recipients, payload=first.payload)
        sandbox.smtp.disconnect_after(0, IDLE_TIMEOUT)  # the next command: the second message's MAIL FROM
        second = hook.build_message([BOB], "Second", text_content="two")
        result = session.send(second.message, second.recipients, payload=second.payload)
    assert result.accepted == (BOB,)
    assert [m.message["Subject"] for m in sandbox.wait_for_messages(2)] == ["First", "Second"]
    assert len(sandbox.smtp_sessions) == 2
