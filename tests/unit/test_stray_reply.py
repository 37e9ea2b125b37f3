"""A reply to no command must break the session, never be matched to the next command (review of issue 18)."""

import pytest

from airflow_provider_hve.exceptions import HveConnectionError
from airflow_provider_hve.transport import Capabilities
from airflow_provider_hve.transport.queue import ReplyQueue


def test_a_reply_before_any_command_is_not_taken_for_the_next_ones_reply() -> None:
    queue = ReplyQueue("s@contoso.example", conn_id="t", server=Capabilities(pipelining=True, chunking=True),
                       chunking=True, pipelining=True)  # fmt: skip
    with pytest.raises(HveConnectionError, match="a reply to no command") as caught:
        queue.receive(b"250 2.0.0 stray\r\n")  # e.g. left over by the set-up's reader, or unsolicited
        prepared = queue.prepare(1, b"Subject: x\r\n\r\nhi\r\n", ["a@contoso.example"])
        assert prepared is not None
        queue.enqueue(prepared)
        queue.bytes_to_write()
        # The server's own replies: MAIL and RCPT accepted, the content refused (quota), RSET.
        queue.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n554 5.2.0 quota exceeded\r\n250 2.0.0 reset\r\n")
    assert caught.value.unsent == [] and caught.value.in_flight == []  # nothing was handed over


def test_more_replies_than_commands_break_the_session() -> None:
    queue = ReplyQueue("s@contoso.example", conn_id="t", server=Capabilities(pipelining=True, chunking=True),
                       chunking=True, pipelining=True)  # fmt: skip
    prepared = queue.prepare(1, b"Subject: x\r\n\r\nhi\r\n", ["a@contoso.example"])
    assert prepared is not None
    queue.enqueue(prepared)
    queue.bytes_to_write()
    with pytest.raises(HveConnectionError, match="a reply to no command") as caught:
        queue.receive(
            b"250 2.0.0 extra\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n554 5.2.0 quota\r\n250 2.0.0 reset\r\n250 x\r\n"
        )
    # One reply too many in a read: none of them is trusted; the message handed over is unknown, never accepted.
    assert caught.value.completed == [] and caught.value.in_flight == [1]


def test_a_reply_waiting_on_an_idle_connection_breaks_it_before_anything_is_handed_over() -> None:
    import smtplib
    import socket

    from airflow_provider_hve.transport import BdatPipeline

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        smtp = smtplib.SMTP()
        smtp.sock = client
        smtp.esmtp_features = {"pipelining": "", "chunking": "", "8bitmime": ""}
        smtp.does_esmtp = True
        pipeline = BdatPipeline(smtp, "s@contoso.example", conn_id="t", window=1, timeout=2)
        server.sendall(b"250 2.0.0 unasked\r\n")  # arrives while nothing is due: read only after the next write
        with pytest.raises(HveConnectionError, match="a reply to no command") as caught:
            pipeline.submit(1, b"Subject: x\r\n\r\nhi\r\n", ["a@contoso.example"])
        assert caught.value.unsent == [1] and caught.value.in_flight == []
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.recv(100)  # nothing was written
