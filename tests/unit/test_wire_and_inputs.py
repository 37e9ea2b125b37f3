"""Fast tests of the pieces under the mail merge: the pipeline's reply handling (real smtplib over loopback
TCP, the server's replies written by the test), addresses and template files."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from airflow_provider_hve.addresses import AddressError, parse_mailbox
from airflow_provider_hve.exceptions import HveConfigError, HveConnectionError
from airflow_provider_hve.templating import template_or_file
from airflow_provider_hve.transport import Pipeline

SENDER = "hve@contoso.example"
HANG_UP = "(the server closes the connection instead of answering)"


class Wire:
    """
    A real smtplib client on one end of a loopback TCP connection; the test scripts the server's replies.

    The server answers each command line (and each message's content, after a ``354``) with the next scripted
    reply, as a server does: never before the command, so the client never sees a reply to no command.
    """

    def __init__(self, *, pipelining: bool = True) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            self.server, _ = listener.accept()
        self.smtp = smtplib.SMTP()
        self.smtp.sock = client
        self.smtp.does_esmtp = True
        self.smtp.esmtp_features = {"pipelining": ""} if pipelining else {}
        self.server.settimeout(5)
        client.settimeout(5)
        self._script: list[str] = []
        self._changed = threading.Condition()
        self._received = bytearray()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def replies(self, *lines: str) -> None:
        """Add replies to the script, each sent when the command it answers arrives."""
        with self._changed:
            self._script.extend(lines)
            self._changed.notify_all()

    def received(self) -> str:
        with self._changed:
            return self._received.decode()

    def _next_reply(self) -> str:
        with self._changed:
            assert self._changed.wait_for(lambda: bool(self._script), timeout=5), "no reply scripted"
            return self._script[0]

    def _serve(self) -> None:
        lines, content = self.server.makefile("rb"), False
        with contextlib.suppress(OSError, AssertionError, ValueError):
            while line := lines.readline():
                with self._changed:
                    self._received += line
                if content and line != b".\r\n":
                    continue
                reply = self._next_reply()
                if reply == HANG_UP:
                    self.server.shutdown(socket.SHUT_WR)
                    return
                content = reply.startswith("354")
                self.server.sendall(f"{reply}\r\n".encode())
                with self._changed:
                    self._script.pop(0)
                    self._changed.notify_all()

    def close(self) -> None:
        self.server.close()
        self.smtp.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    pair = Wire()
    yield pair
    pair.close()


def test_pipelined_messages_are_matched_to_their_replies_in_order(wire: Wire) -> None:
    pipeline = Pipeline(wire.smtp, SENDER, conn_id="hve_default")
    wire.replies("250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "354 Start mail input")
    wire.replies("250 2.6.0 Queued mail for delivery")
    wire.replies("250 2.1.0 Sender OK", "550 5.1.10 RESOLVER.ADR.RecipientNotFound", "554 5.5.1 No valid recipients")
    wire.replies("250 2.0.0 Resetting")
    assert pipeline.submit(0, b"Subject: a\r\n\r\n.hi\r\n", ["a@contoso.example"], "<a>") == []
    # Message 0's final reply is read while message 1 goes: replies come a message late, in order.
    assert pipeline.submit(1, b"Subject: b\r\n\r\nb\r\n", ["b@contoso.example"], "<b>") == []
    first, second = pipeline.flush()
    assert (first.key, first.accepted, first.refused) == (0, ["a@contoso.example"], {})
    assert second.key == 1 and second.refused == {"b@contoso.example": (550, "5.1.10 RESOLVER.ADR.RecipientNotFound")}
    sent = wire.received()
    assert "\r\n..hi\r\n.\r\n" in sent  # dot-stuffed content, ended by a lone dot
    assert sent.endswith("RSET\r\n")  # the failed transaction is cleared before the next MAIL FROM


def test_a_421_in_place_of_the_final_reply_means_not_accepted_and_safe_to_resend(wire: Wire) -> None:
    pipeline = Pipeline(wire.smtp, SENDER, conn_id="hve_default")
    wire.replies("250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "354 Start mail input")
    wire.replies("421 4.3.2 Service not available, closing transmission channel")
    pipeline.submit(7, b"Subject: a\r\n\r\nx\r\n", ["a@contoso.example"], "<a>")
    with pytest.raises(HveConnectionError) as caught:
        pipeline.flush()
    assert (caught.value.in_flight, caught.value.unsent) == ([], [7])


def test_a_lost_connection_after_the_content_leaves_the_message_in_flight(wire: Wire) -> None:
    pipeline = Pipeline(wire.smtp, SENDER, conn_id="hve_default")
    # The server goes away after the content, before its final reply.
    wire.replies("250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "354 Start mail input", HANG_UP)
    pipeline.submit(3, b"Subject: a\r\n\r\nx\r\n", ["a@contoso.example"], "<a>")
    with pytest.raises(HveConnectionError, match="outcome is unknown.*<a>") as caught:
        pipeline.flush()
    assert (caught.value.in_flight, caught.value.unsent) == ([3], [])


@pytest.mark.parametrize(
    ("text", "addr_spec"),
    [("a@contoso.example", "a@contoso.example"), ("Ann <ann@contoso.example>", "ann@contoso.example")],
    ids=["bare", "display-name"],
)
def test_a_mailbox_is_parsed(text: str, addr_spec: str) -> None:
    assert parse_mailbox(text).addr_spec == addr_spec


@pytest.mark.parametrize("text", ["not an address", "a@x.example, b@x.example", "a@x.example>\r\nRCPT TO:<b@y"])
def test_a_bad_mailbox_is_refused(text: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(text)


def test_a_template_file_is_read_and_a_missing_one_named(tmp_path: Path) -> None:
    (tmp_path / "body.html").write_text("<p>{{ recipient.name }}</p>", encoding="utf-8")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(tmp_path))
    assert template_or_file(env, "body.html", "html_content") == "<p>{{ recipient.name }}</p>"
    assert template_or_file(env, "Hello {{ x }}", "html_content") == "Hello {{ x }}"
    with pytest.raises(HveConfigError, match="'html_content'.*'missing.html' was not found"):
        template_or_file(env, "missing.html", "html_content")


@pytest.mark.parametrize(
    ("cause", "throttled"),
    [
        ("The connection to HVE broke (connection 'hve_default'): 421 4.3.2 Service not available.", True),
        ("alice@contoso.example: 432 4.3.2 STOREDRV; mailbox server is too busy", True),
        ("alice@contoso.example: 451 4.7.0 Temporary server error", False),
        # A reply code is where a reply starts, not any number: a Message-ID or a host name may hold one.
        ("HVE did not take <1733.421.99@vm.contoso.example> (connection 'hve_421'): 451 4.4.2 timeout", False),
    ],
)
def test_a_throttling_reply_is_told_by_its_code_not_by_any_number_in_the_text(cause: str, throttled: bool) -> None:
    from airflow_provider_hve.smtp import _THROTTLED

    assert bool(_THROTTLED.search(cause)) is throttled
