"""Session set-up against hostile servers on real sockets: replies are bounded in lines, bytes and time.

Each hostile server is a listening socket and a thread that speaks just enough SMTP to reach the attack; the
client is the real HveHook, its token from the sandbox's Entra endpoint. The normal path runs against the sandbox.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest

from airflow_provider_hve.exceptions import HveConnectionError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.transport.setup import BoundedSMTP

ConnFactory = Callable[..., str]
TIMEOUT = 2.0
MARGIN = 1.5  # thread start, a loaded 2-core machine; the old client was held for as long as the server liked


class Hostile:
    """One accepted connection's script, run on a thread; what the client wrote is recorded."""

    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self.conn = conn
        self.stop = stop
        self.sent = 0
        self.received: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)
        self.sent += len(data)

    def line(self) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.conn.recv(1)
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        self.received.append(data)
        return data


@contextmanager
def hostile_server(script: Callable[[Hostile], None]) -> Iterator[tuple[int, list[Hostile]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    sessions: list[Hostile] = []

    def serve() -> None:
        listener.settimeout(10)
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        session = Hostile(conn, stop)
        sessions.append(session)
        try:
            script(session)
        except OSError:
            pass  # the client gave up and closed: what the tests expect
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], sessions
    finally:
        stop.set()
        for session in sessions:
            with suppress(OSError):
                session.conn.shutdown(socket.SHUT_RDWR)  # unblocks a sendall the client no longer reads
        listener.close()
        thread.join(10)
        assert not thread.is_alive()


def greet_then_ehlo(hostile: Hostile) -> None:
    hostile.send(b"220 hostile.example ESMTP\r\n")
    hostile.line()  # EHLO


# Built once, before any memory trace starts: the trace covers the client (and this thread's small change).
LINES_MIB = (b"250-" + b"x" * 60 + b"\r\n") * ((1 << 20) // 66)
BYTES_MIB = b"x" * (1 << 20)


def endless_continuation_lines(hostile: Hostile) -> None:
    """``250-`` lines that never end, as fast as the socket takes them, up to 512 MiB."""
    greet_then_ehlo(hostile)
    while not hostile.stop.is_set() and hostile.sent < 512 << 20:
        hostile.send(LINES_MIB)


def one_endless_line(hostile: Hostile) -> None:
    greet_then_ehlo(hostile)
    hostile.send(b"250-")
    while not hostile.stop.is_set() and hostile.sent < 512 << 20:
        hostile.send(BYTES_MIB)


def a_line_every_quarter_second(hostile: Hostile) -> None:
    greet_then_ehlo(hostile)
    while not hostile.stop.wait(0.25):
        hostile.send(b"250-still here\r\n")


def a_greeting_byte_every_quarter_second(hostile: Hostile) -> None:
    for byte in b"220 hostile.example ESMTP and it goes on and on\r\n":
        if hostile.stop.wait(0.25):
            return
        hostile.send(bytes([byte]))


@pytest.fixture
def hostile_hook(hve_connection: ConnFactory) -> Callable[[int], HveHook]:
    def make(port: int) -> HveHook:
        hook = HveHook(hve_conn_id=hve_connection("hve_hostile", host="127.0.0.1", port=port, timeout=TIMEOUT))
        hook.get_access_token()  # from the sandbox's Entra, before the clock and the memory trace start
        import airflow_provider_hve.smtp  # noqa: F401  (imported before the trace: imports are not memory a reply made)

        return hook

    return make


def open_session(hook: HveHook) -> tuple[HveConnectionError, float, int]:
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(HveConnectionError) as info:
            hook.get_conn()
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return info.value, elapsed, peak


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        (endless_continuation_lines, "at its reply to EHLO: it sent a reply of more than 100 lines"),
        (one_endless_line, "at its reply to EHLO: it sent a reply line of more than 2048 bytes"),
    ],
    ids=["endless-250-lines", "one-endless-line"],
)
def test_a_flood_ends_at_the_reply_limit_with_flat_memory(
    script: Callable[[Hostile], None], problem: str, hostile_hook: Callable[[int], HveHook]
) -> None:
    with hostile_server(script) as (port, sessions):
        error, elapsed, peak = open_session(hostile_hook(port))
        time.sleep(0.2)  # the server keeps writing into what the client closed; then stopped
    print(f"flood: gave up after {elapsed:.3f} s, traced peak {peak} bytes, server wrote {sessions[0].sent} bytes")
    message = str(error)
    assert f"127.0.0.1:{port} (connection 'hve_hostile')" in message
    assert problem in message and "no token was sent" in message
    assert isinstance(error.__cause__, Exception)
    assert elapsed < TIMEOUT + MARGIN
    assert peak < 1 << 20, f"{peak} bytes traced while the server sent {sessions[0].sent}"
    (session,) = sessions
    assert [line.split()[0].upper() for line in session.received] == [b"EHLO"]  # no STARTTLS, no AUTH followed


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        (a_line_every_quarter_second, r"at its reply to EHLO: it sent \d+ lines \(\d+ bytes\) without ending"),
        (a_greeting_byte_every_quarter_second, r"at its greeting: it sent 0 lines \(\d+ bytes\) without ending"),
    ],
    ids=["a-line-every-250ms", "a-byte-every-250ms"],
)
def test_a_trickle_is_cut_off_at_the_deadline_of_the_reply(
    script: Callable[[Hostile], None], problem: str, hostile_hook: Callable[[int], HveHook]
) -> None:
    """Each read returns within the socket timeout, so smtplib waited for ever; the reply has a deadline."""
    with hostile_server(script) as (port, _):
        error, elapsed, peak = open_session(hostile_hook(port))
    print(f"trickle: gave up after {elapsed:.3f} s, traced peak {peak} bytes: {error}")
    message = str(error)
    assert f"127.0.0.1:{port} (connection 'hve_hostile')" in message
    assert f"the reply within {TIMEOUT:g} s" in message
    assert "raise the extra 'timeout' (2 s)" in message
    import re

    assert re.search(problem, message), message
    assert TIMEOUT - 0.1 <= elapsed < TIMEOUT + MARGIN


def test_replies_injected_before_the_tls_handshake_are_dropped(
    sandbox: HveSandbox, hostile_hook: Callable[[int], HveHook]
) -> None:
    """RFC 3207: what came in clear text with the 220 to STARTTLS is never read as the EHLO answer after it."""
    server_context = sandbox.pki.server_ssl_context()

    def inject(hostile: Hostile) -> None:
        greet_then_ehlo(hostile)
        hostile.send(b"250-hostile.example\r\n250-STARTTLS\r\n250 SIZE 1000\r\n")
        hostile.line()  # STARTTLS
        # One packet: the 220, then an EHLO answer offering XOAUTH2, which would draw the token out.
        hostile.send(b"220 ready\r\n250-injected\r\n250 AUTH XOAUTH2\r\n")
        tls = server_context.wrap_socket(hostile.conn, server_side=True)
        hostile.conn = tls
        hostile.line()  # EHLO, in TLS
        hostile.send(b"250-hostile.example\r\n250 SIZE 1000\r\n")  # the true answer: no AUTH
        with suppress(OSError):
            hostile.line()

    with hostile_server(inject) as (port, sessions):
        hook = hostile_hook(port)
        with pytest.raises(HveConnectionError, match="does not offer AUTH XOAUTH2 \\(it offers: no AUTH\\)"):
            hook.get_conn()
    (session,) = sessions
    assert [line.split()[0].upper() for line in session.received] == [b"EHLO", b"STARTTLS", b"EHLO"]
    assert isinstance(session.conn, ssl.SSLSocket)


def test_take_buffered_hands_over_what_getreply_has_not_returned() -> None:
    def greet_with_more(hostile: Hostile) -> None:
        hostile.send(b"220 hi\r\n250 early\r\n250-part")
        hostile.stop.wait(5)

    with hostile_server(greet_with_more) as (port, _):
        smtp = BoundedSMTP("127.0.0.1", port, timeout=TIMEOUT, local_hostname="client.example")
        try:
            deadline = time.monotonic() + 2
            held = b""
            while not held.endswith(b"part") and time.monotonic() < deadline:
                held += smtp.take_buffered()
                if not held.endswith(b"part"):
                    time.sleep(0.05)  # the rest may come in a second segment; the greeting came first
                    smtp.sock.settimeout(0.2)
                    with suppress(TimeoutError):
                        held += smtp.sock.recv(100)
        finally:
            smtp.close()
    assert held == b"250 early\r\n250-part"


def test_the_sandbox_session_still_sets_up_and_sends(sandbox: HveSandbox, hve_connection: ConnFactory) -> None:
    hook = HveHook(hve_conn_id=hve_connection())
    session = hook.get_conn()
    try:
        smtp: Any = session._smtp
        assert isinstance(smtp, BoundedSMTP)
        for extension in ("pipelining", "chunking", "size"):
            assert smtp.has_extn(extension), extension
        assert "XOAUTH2" in smtp.esmtp_features["auth"].upper().split()
        from airflow_provider_hve.message import build_message

        outgoing = build_message(sender=sandbox.account, to="alice@contoso.example", subject="Hi", text_content="x")
        result = session.send(outgoing.message, outgoing.recipients)
    finally:
        session.close()
    assert result.accepted == ("alice@contoso.example",)
    (record,) = sandbox.smtp_sessions
    assert record.starttls and record.quit
