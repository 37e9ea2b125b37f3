"""The transport's socket loop against a server that does not read while it writes (a threaded MTA)."""

from __future__ import annotations

import smtplib
import socket
import threading

from airflow_provider_hve.transport import BdatPipeline

BUFFER = 8192  # small socket buffers: what a long window over a slow link looks like to both ends


def _blocking_server(listener: socket.socket, delivered: list[int]) -> None:
    """Answer each command with a blocking sendall, reading nothing meanwhile."""
    conn, _ = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    lines = conn.makefile("rb")
    conn.sendall(b"220 ready\r\n")
    try:
        while line := lines.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                reply = b"250-mx.contoso.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
            elif verb == b"BDAT":
                lines.read(int(line.split()[1]))
                delivered.append(1)
                reply = b"250 2.0.0 OK <%d@contoso.example> queued as ABCDEFGHIJ\r\n" % len(delivered)
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                break
            else:
                reply = b"250 2.1.5 Recipient OK\r\n"
            conn.sendall(reply)
    except OSError:
        pass
    conn.close()


def test_a_long_window_reads_replies_while_it_writes() -> None:
    # 64 transactions of 50 recipients: about 100 KB of replies per window, far more than both sockets' buffers.
    # Writing the window with a plain sendall, the client read nothing until the server, blocked writing replies
    # nobody read, stopped reading too: the session broke on its timeout with messages left unknown.
    listener = socket.create_server(("127.0.0.1", 0))
    delivered: list[int] = []
    threading.Thread(target=_blocking_server, args=(listener, delivered), daemon=True).start()
    smtp = smtplib.SMTP(timeout=5)
    smtp.sock = socket.socket()
    smtp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    smtp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    smtp.sock.settimeout(5)
    smtp.sock.connect(listener.getsockname())
    smtp.getreply()
    smtp.ehlo("client.contoso.example")
    pipeline = BdatPipeline(smtp, "reports@contoso.example", conn_id="hve_io", window=64, timeout=5)
    recipients = [f"recipient{n:04d}@contoso.example" for n in range(50)]
    payload = b"Subject: x\r\n\r\n" + b"y" * 100 + b"\r\n"
    done = []
    for n in range(300):
        done += pipeline.collect()
        done += pipeline.submit(n, payload, recipients)
    done += pipeline.flush()
    smtp.quit()
    assert sorted(d.key for d in done) == list(range(300))
    assert all(len(d.accepted) == 50 for d in done) and len(delivered) == 300
