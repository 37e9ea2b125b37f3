"""Fast tests of the pieces under the mail merge: the pipeline's reply handling (real smtplib over loopback
TCP, the server's replies written by the test), addresses and template files."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from airflow_provider_hve.addresses import AddressError, parse_mailbox
from airflow_provider_hve.exceptions import HveConfigError, HveConnectionError
from airflow_provider_hve.templating import template_or_file
from airflow_provider_hve.transport import Pipeline

SENDER = "hve@contoso.example"


class Wire:
    """A real smtplib client on one end of a loopback TCP connection; the test plays the server on the other."""

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

    def replies(self, *lines: str) -> None:
        self.server.sendall("".join(f"{line}\r\n" for line in lines).encode())

    def received(self) -> str:
        self.server.setblocking(False)
        chunks = []
        try:
            while chunk := self.server.recv(65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        return b"".join(chunks).decode()

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
    wire.replies("250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "354 Start mail input")
    pipeline.submit(3, b"Subject: a\r\n\r\nx\r\n", ["a@contoso.example"], "<a>")
    wire.server.shutdown(socket.SHUT_WR)  # the server goes away before its final reply
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
