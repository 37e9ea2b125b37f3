"""BDAT windows (RFC 3030 over RFC 2920) from the client against the sandbox: exactly once, few round trips,
unknowns bounded by the window, the DATA path when CHUNKING is off. Assertions read the sandbox's records."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_hve.bulk import MailMerge
from airflow_provider_hve.connection import DEFAULT_BDAT_WINDOW
from airflow_provider_hve.exceptions import HveConfigError, HveConnectionError, HveSendError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.sandbox.smtp_server import SUBMISSION_QUOTA_EXCEEDED
from airflow_provider_hve.transport import BdatPipeline, Pipeline

ConnFactory = Callable[..., str]


def rows(count: int) -> list[dict[str, Any]]:
    return [{"email": f"bd{n:05d}@contoso.example", "name": f"N{n}"} for n in range(count)]


def addresses(count: int) -> list[str]:
    return [row["email"] for row in rows(count)]


def transactions(sandbox: HveSandbox) -> list[Any]:
    return [t for session in sandbox.smtp_sessions for t in session.transactions]


def wait_until_sessions_closed(sandbox: HveSandbox, timeout: float = 10) -> None:
    """
    Wait until the server let go of every SMTP connection of the test. Then nothing more is delivered from them:
    the sandbox stops handling a connection at its end (aiosmtpd cancels the handler), and marks it closed there.
    """
    deadline = time.monotonic() + timeout
    while not all(s.closed for s in sandbox.smtp_sessions) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(s.closed for s in sandbox.smtp_sessions), f"an SMTP session still open after {timeout} s"


def test_a_thousand_messages_exactly_once_by_bdat(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    hook = HveHook(hve_conn_id=hve_connection())
    report = MailMerge(
        hook, subject="Hi {{ recipient.name }}", text_content="Grüße, {{ recipient.name }}", sessions=2
    ).run(rows(1000))
    assert (report.accepted, report.refused, report.unknown, report.not_sent) == (1000, {}, [], [])
    delivered = sandbox.wait_for_messages(1000, timeout=30)
    assert sorted(r for m in delivered for r in m.rcpt_tos) == addresses(1000)  # each exactly once
    # Every message came by BDAT, in one chunk, with 8-bit content declared.
    assert {t.bdat_chunks for t in transactions(sandbox)} == {1}
    assert all("BODY=8BITMIME" in t.mail_options for t in transactions(sandbox))
    assert "Grüße, N7" in next(m for m in delivered if m.rcpt_tos == ["bd00007@contoso.example"]).data.decode()


@pytest.mark.parametrize("window", [8, 16, 32], ids=["w8", "w16", "w32"])
def test_round_trips_per_message_with_a_window(sandbox: HveSandbox, hve_connection: ConnFactory, window: int) -> None:
    hook = HveHook(hve_conn_id=hve_connection(bdat_window=window))
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        assert isinstance(pipeline, BdatPipeline) and pipeline.window == window
        before = sandbox.smtp_round_trips()
        done = []
        for n in range(400):
            out = hook.build_message(to=f"u{n}@contoso.example", subject="x", text_content="y")
            done += pipeline.submit(n, out.payload, out.recipients)
        done += pipeline.flush()
        trips = sandbox.smtp_round_trips() - before
    assert sorted(d.key for d in done) == list(range(400))
    assert all(d.accepted and not d.refused for d in done)
    assert len(sandbox.wait_for_messages(400)) == 400
    # The window starts at 1 and doubles: a few round trips to reach it, then one per window.
    assert trips / 400 <= 0.15, trips


def test_one_at_a_time_with_window_1(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    hook = HveHook(hve_conn_id=hve_connection(bdat_window=1))
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        before = sandbox.smtp_round_trips()
        for n in range(20):
            out = hook.build_message(to=f"u{n}@contoso.example", subject="x", text_content="y")
            pipeline.submit(n, out.payload, out.recipients)
        pipeline.flush()
        trips = sandbox.smtp_round_trips() - before
    assert len(sandbox.wait_for_messages(20)) == 20
    assert trips == 20  # one write and one wait per message


def test_without_chunking_the_data_pipeline_is_used(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    sandbox.smtp.chunking = False
    hook = HveHook(hve_conn_id=hve_connection())
    report = MailMerge(hook, subject="x", text_content="y", sessions=1).run(rows(50))
    assert report.accepted == 50
    assert len(sandbox.wait_for_messages(50)) == 50
    assert {t.bdat_chunks for t in transactions(sandbox)} == {0}
    with hook.smtp_session() as session:
        assert type(session.pipeline()) is Pipeline


def test_chunking_false_keeps_to_data(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    hook = HveHook(hve_conn_id=hve_connection())
    with hook.smtp_session() as session:
        pipeline = session.pipeline(chunking=False)
        assert type(pipeline) is Pipeline
        out = hook.build_message(to="a@contoso.example", subject="x", text_content="y")
        pipeline.submit(1, out.payload, out.recipients)
        (delivery,) = pipeline.flush()
    assert delivery.accepted == ["a@contoso.example"]
    assert [t.bdat_chunks for t in transactions(sandbox)] == [0]


def test_a_120_recipient_message_is_three_bdat_transactions(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    hook = HveHook(hve_conn_id=hve_connection())
    recipients = [f"r{n:03d}@contoso.example" for n in range(120)]
    sandbox.smtp.refuse_recipient("r077@contoso.example")
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        out = hook.build_message(to=recipients, subject="x", text_content="y")
        pipeline.submit("big", out.payload, out.recipients)
        (delivery,) = pipeline.flush()
    assert sorted(delivery.accepted) == [r for r in recipients if r != "r077@contoso.example"]
    assert list(delivery.refused) == ["r077@contoso.example"]
    assert [len(t.rcpt_tos) for t in transactions(sandbox)] == [50, 49, 20]
    assert [t.bdat_chunks for t in transactions(sandbox)] == [1, 1, 1]


def test_a_failed_transaction_in_a_window_does_not_spoil_the_next(
    sandbox: HveSandbox, hve_connection: ConnFactory
) -> None:
    # Message 3's only recipient is refused: its BDAT gets 503, the RSET behind it clears the transaction, and
    # message 4's MAIL FROM (already on the wire) is accepted.
    sandbox.smtp.refuse_recipient("u3@contoso.example")
    hook = HveHook(hve_conn_id=hve_connection(bdat_window=8))
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        done = []
        for n in range(12):
            out = hook.build_message(to=f"u{n}@contoso.example", subject="x", text_content="y")
            done += pipeline.submit(n, out.payload, out.recipients)
        done += pipeline.flush()
    by_key = {d.key: d for d in done}
    assert sorted(by_key) == list(range(12))
    assert list(by_key[3].refused) == ["u3@contoso.example"] and by_key[3].accepted == []
    assert all(by_key[n].accepted == [f"u{n}@contoso.example"] for n in range(12) if n != 3)
    assert sorted(m.rcpt_tos[0] for m in sandbox.wait_for_messages(11)) == sorted(
        f"u{n}@contoso.example" for n in range(12) if n != 3
    )


def test_a_421_mid_window_resends_what_was_behind_it_exactly_once(
    sandbox: HveSandbox, hve_connection: ConnFactory
) -> None:
    # The 421 answers one command and the server closes: nothing behind it was carried out, so nothing is unknown.
    sandbox.smtp.disconnect_after(100, times=2)
    hook = HveHook(hve_conn_id=hve_connection())
    report = MailMerge(hook, subject="x", text_content="y", sessions=1).run(rows(300))
    assert (report.accepted, report.unknown, report.not_sent, report.reconnects) == (300, [], [], 2)
    received = Counter(r for m in sandbox.wait_for_messages(300) for r in m.rcpt_tos)
    assert sorted(received) == addresses(300) and set(received.values()) == {1}


def test_a_break_without_a_reply_leaves_only_the_window_unknown(
    sandbox: HveSandbox, hve_connection: ConnFactory
) -> None:
    # The reply after message 150's content never comes in time (the client times out): every transaction of the
    # window on the wire is unknown, never sent again; the others are delivered exactly once.
    window = 8
    sandbox.smtp.stall_after(150, 3.0, command="content")
    hook = HveHook(hve_conn_id=hve_connection(timeout=1, bdat_window=window))
    report = MailMerge(hook, subject="x", text_content="y", sessions=1).run(rows(300))
    unknown = set(report.unknown)
    accepted = [a for a in addresses(300) if a not in unknown]
    assert 1 <= len(unknown) <= window, report.unknown
    assert addresses(300)[150] in unknown
    assert (report.accepted, report.refused, report.invalid, report.not_sent) == (len(accepted), {}, {}, [])
    # Every session over, the stalled one included: what the server received is final (the transactions written
    # behind 150 in the sliding window may or may not have been read before the client gave up).
    wait_until_sessions_closed(sandbox)
    received = Counter(r for m in sandbox.messages for r in m.rcpt_tos)
    assert [a for a, times in received.items() if times > 1] == [], "a message was delivered twice"
    assert set(accepted) <= set(received), "a message reported accepted was not delivered"
    assert set(received) - set(accepted) <= unknown, "a message delivered was reported neither accepted nor unknown"
    assert addresses(300)[150] in received  # delivered before its reply stalled


def test_a_quota_stops_the_run_within_one_window(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    window = 8
    sandbox.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="content", count=10_000, after_messages=40)
    hook = HveHook(hve_conn_id=hve_connection(bdat_window=window))
    merge = MailMerge(hook, subject="x", text_content="y", sessions=1)
    with pytest.raises(HveSendError, match=r"quota is used up.*the run stopped: 40 accepted"):
        merge.run(rows(200))
    report: Any = merge.last_report
    assert report.accepted == 40
    # The messages written with the first refused one are refused too; nothing is written after the stop.
    assert 1 <= len(report.refused) <= window
    with_content = [t for t in transactions(sandbox) if t.data_reply is not None]
    assert len(with_content) == 40 + len(report.refused)
    assert len(report.not_sent) == 200 - 40 - len(report.refused)


@pytest.mark.parametrize(
    "value",
    [0, -1, "many", True, 257, "1.5", "9" * 5000],
    ids=["zero", "negative", "word", "bool", "big", "float", "5000-digits"],
)
def test_bdat_window_extra_is_validated(hve_connection: ConnFactory, value: object) -> None:
    hook = HveHook(hve_conn_id=hve_connection(conn_id="hve_window", bdat_window=value))
    with pytest.raises(HveConfigError, match=r"'hve_window'.*'bdat_window'.*from 1 to 256"):
        hook.send_email(to="a@contoso.example", subject="x", text_content="y")


def test_bdat_window_default_and_value(hve_connection: ConnFactory) -> None:
    from airflow_provider_hve.connection import HveConnectionConfig

    def config(**extra: Any) -> HveConnectionConfig:
        return HveConnectionConfig.from_fields(
            "c",
            login="a@contoso.example",
            password="s",
            extra={
                "tenant_id": "contoso.onmicrosoft.com",
                "client_id": "00000000-0000-0000-0000-000000000001",
                **extra,
            },
        )

    assert config().bdat_window == DEFAULT_BDAT_WINDOW
    assert config(bdat_window=" 4 ").bdat_window == 4
    assert config(bdat_window=1).bdat_window == 1


def test_a_connection_lost_before_the_replies_leaves_the_window_unknown(
    sandbox: HveSandbox, hve_connection: ConnFactory
) -> None:
    # The window is written, then the connection goes before any reply: its transaction is unknown; the message
    # gathered for the next window was not written, safe to send again.
    import socket

    hook = HveHook(hve_conn_id=hve_connection(bdat_window=4))
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        assert isinstance(pipeline, BdatPipeline)
        out = hook.build_message(to="a@contoso.example", subject="x", text_content="y")
        sandbox.smtp.stall_after(0, 2.0, command="MAIL")  # no reply can be on its way when the network goes
        assert pipeline.submit(0, out.payload, out.recipients) == []  # window of 1: written
        assert session._smtp is not None and session._smtp.sock is not None
        session._smtp.sock.shutdown(socket.SHUT_RDWR)  # the network goes away under it
        with pytest.raises(HveConnectionError) as caught:
            pipeline.submit(1, out.payload, out.recipients)
    assert caught.value.in_flight == [0] and caught.value.unsent == [1]
    # The server still holds the whole transaction: if it reads the end of the connection only after its 2 s stall,
    # it delivers message 0 (why it is unknown, never resent). Wait for the server to let go of the connection, or
    # that delivery lands in the next test's records and shifts its throttle's after_messages.
    wait_until_sessions_closed(sandbox)


def test_a_sender_refused_twice_in_one_window_loses_no_delivered_row(
    sandbox: HveSandbox, hve_connection: ConnFactory
) -> None:
    # From the 38th message on, HVE refuses the sender (550 5.7.60) for every transaction of the window: the run
    # stops, and every delivered row is reported accepted, never not_sent (a rerun would mail it twice).
    from airflow_provider_hve.sandbox.smtp_server import SEND_AS_DENIED

    sandbox.smtp.throttle(SEND_AS_DENIED, command="MAIL", count=1000, after_messages=37)
    hook = HveHook(hve_conn_id=hve_connection(bdat_window=8))
    merge = MailMerge(hook, subject="x", text_content="y", sessions=1)
    with pytest.raises(HveSendError, match="5.7.60"):
        merge.run(rows(200))
    report = merge.last_report
    assert report is not None
    delivered = sorted(r for m in sandbox.wait_for_messages(37) for r in m.rcpt_tos)
    assert len(delivered) == 37
    assert report.accepted == 37 and not set(delivered) & set(report.not_sent)
    assert report.accepted + len(report.refused) + len(report.not_sent) + len(report.unknown) == 200


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_a_partly_delivered_message_is_reported_when_the_sender_is_refused(
    sandbox: HveSandbox, hve_connection: ConnFactory, chunking: bool
) -> None:
    # 60 recipients: the first 50 get it, then HVE refuses the sender for the second batch. The error carries the
    # partial result: 50 accepted (never mailed again), 10 refused with HVE's own reply (not "451 Not sent").
    from airflow_provider_hve.sandbox.smtp_server import SEND_AS_DENIED

    sandbox.smtp.chunking = chunking
    sandbox.smtp.throttle(SEND_AS_DENIED, command="MAIL", count=1, after_messages=1)
    hook = HveHook(hve_conn_id=hve_connection())
    many = addresses(60)
    out = hook.build_message(to=many[0], subject="x", text_content="y")
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        with pytest.raises(HveSendError, match="5.7.60") as caught:
            pipeline.submit("many", out.payload, many)
            pipeline.flush()
    (delivery,) = caught.value.completed
    delivered = sorted(r for m in sandbox.wait_for_messages(1) for r in m.rcpt_tos)
    assert sorted(delivery.accepted) == delivered == many[:50]
    assert sorted(delivery.refused) == many[50:] and set(delivery.refused.values()) == {(550, SEND_AS_DENIED[4:])}


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_submit_writes_nothing_after_a_stop_reply_even_for_a_split_message(
    sandbox: HveSandbox, hve_connection: ConnFactory, chunking: bool
) -> None:
    # As a mail merge does: collect(transactions) before each submit(); a quota reply (554 5.2.0) stops. submit()
    # must never be the call that reads it, or it would already have written the next window (a message over 50
    # recipients adds several transactions at once).
    sandbox.smtp.chunking = chunking
    # Messages 0, 1 and 2 (120 recipients: 3 transactions) and 3 are accepted; with DATA the quota answers
    # message 4, right before the split message 5; with BDAT it answers message 3 in the window of 4.
    sandbox.smtp.throttle(SUBMISSION_QUOTA_EXCEEDED, command="content", count=1000, after_messages=5 + (not chunking))
    hook = HveHook(hve_conn_id=hve_connection(bdat_window=4))
    one = hook.build_message(to="a@contoso.example", subject="x", text_content="y")
    with hook.smtp_session() as session:
        pipeline = session.pipeline()
        assert isinstance(pipeline, BdatPipeline) is chunking
        stopped = False
        for n in range(40):
            recipients = addresses(120) if n % 3 == 2 else one.recipients
            if any(d.whole and d.whole[0] == 554 for d in pipeline.collect(-(-len(recipients) // 50))):
                stopped = True
                break
            done = pipeline.submit(n, one.payload, recipients)
            assert not any(d.whole and d.whole[0] == 554 for d in done), f"submit({n}) read the stop reply"
        assert stopped
        written = sum(len(s.transactions) for s in sandbox.smtp_sessions)
        pipeline.drain()
    assert sum(len(s.transactions) for s in sandbox.smtp_sessions) == written  # drain() wrote nothing more


def test_the_sliding_window_waits_less_than_stop_and_wait(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    # 20 ms round trip. Stop-and-wait (each window written, then all its replies read before the next) leaves the
    # link idle for a round trip per window: 200 messages in windows of 16 wait at least 13 x 20 ms. The sliding
    # window (collect() before each submit(), as the merge does) writes as soon as replies make room, and builds
    # the next message while replies are on their way. Pipeline.waited counts the seconds blocked on replies.
    sandbox.latency_ms = 20
    hook = HveHook(hve_conn_id=hve_connection(bdat_window=16))

    def send(sliding: bool) -> tuple[float, int]:
        with hook.smtp_session() as session:
            pipeline = session.pipeline()
            before = sandbox.smtp_round_trips()
            done = []
            for first in range(0, 200, 16):
                window = range(first, min(first + 16, 200))
                if sliding:  # as the merge does: replies read while the next message is built
                    for n in window:
                        out = hook.build_message(to=f"u{n}@contoso.example", subject="x", text_content="y")
                        done += pipeline.collect(1)
                        done += pipeline.submit(n, out.payload, out.recipients)
                    continue
                # Stop-and-wait: a window built, written, and all its replies read before the next.
                built = [hook.build_message(to=f"u{n}@contoso.example", subject="x", text_content="y") for n in window]
                for n, out in zip(window, built, strict=True):
                    done += pipeline.submit(n, out.payload, out.recipients)
                done += pipeline.flush()
            done += pipeline.flush()
            waited, trips = pipeline.waited, sandbox.smtp_round_trips() - before
        assert sorted(d.key for d in done) == list(range(200)) and all(d.accepted for d in done)
        return waited, trips

    # Two rounds each, alternated, the least wait of each compared: a loaded machine slows the server in one
    # round (its waits grow for either way of writing), not in every round.
    rounds = [(send(sliding=False), send(sliding=True)) for _ in range(2)]
    assert len(sandbox.wait_for_messages(800)) == 800
    stop_and_wait = min(saw for (saw, _), _ in rounds)
    sliding = min(slide for _, (slide, _) in rounds)
    # Both wait for the server to deliver (the same work); stop-and-wait also idles a round trip per window:
    # the sliding window saves at least half of those.
    assert stop_and_wait >= 13 * 0.020
    assert sliding <= stop_and_wait - 13 * 0.020 / 2, rounds
