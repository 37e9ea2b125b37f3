"""benchmarks/delay_proxy.py, the benchmark's independent latency: bytes pass both ways, in order, late by RTT/2.

A real smtplib client talks to the sandbox through the proxy (STARTTLS and XOAUTH2 included) and the sandbox's
record says what arrived. The only timing asserted is a lower bound the proxy guarantees by construction (it
sleeps before it forwards), never an upper one. The reset control is checked by what the client's socket reads
(ECONNRESET, not an orderly end).
"""

from __future__ import annotations

import contextlib
import importlib.util
import smtplib
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox
from airflow_provider_hve.smtp import tls_context, xoauth2_string


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "delay_proxy.py"
    spec = importlib.util.spec_from_file_location("hve_bench_delay_proxy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


DelayProxy = _load().DelayProxy


def test_smtp_session_through_the_proxy_is_delivered_and_delayed(
    sandbox: HveSandbox, hve_connection: Callable[..., str]
) -> None:
    token = HveHook(hve_conn_id=hve_connection()).get_access_token()
    rtt_ms = 60
    with DelayProxy("127.0.0.1", sandbox.smtp_port, rtt_ms) as proxy:
        # 127.0.0.1 is in the sandbox certificate: STARTTLS through the proxy checks the name the client dialled.
        client = smtplib.SMTP(proxy.host, proxy.port, timeout=30, local_hostname="bench.example")
        try:
            client.ehlo()
            client.starttls(context=tls_context(sandbox.ca_bundle))
            client.ehlo()
            client.auth("XOAUTH2", lambda _=None: xoauth2_string(sandbox.account, token), initial_response_ok=False)
            started = time.monotonic()
            assert client.noop()[0] == 250
            noop_seconds = time.monotonic() - started
            for n in range(3):  # several messages in one session: order and content intact
                client.sendmail(sandbox.account, [f"user{n}@contoso.example"], _message(sandbox.account, n))
        finally:
            client.quit()
    received = sandbox.messages.wait_for(3, timeout=10)
    assert [m.rcpt_tos for m in received[-3:]] == [[f"user{n}@contoso.example"] for n in range(3)]
    assert [m.message["Subject"] for m in received[-3:]] == ["proxied 0", "proxied 1", "proxied 2"]
    assert noop_seconds >= rtt_ms / 1000, f"a NOOP through a {rtt_ms} ms proxy took {noop_seconds * 1000:.0f} ms"


def _message(sender: str, n: int) -> bytes:
    body = "line of text\r\n" * 2000  # larger than one read: arrives in several chunks
    return f"From: {sender}\r\nTo: user{n}@contoso.example\r\nSubject: proxied {n}\r\n\r\n{body}".encode()


def test_reset_sends_rst_to_the_first_connections_only(sandbox: HveSandbox) -> None:
    reset_after = 0.3
    with DelayProxy("127.0.0.1", sandbox.smtp_port, 10, reset_after=reset_after, resets=1) as proxy:
        first = socket.create_connection((proxy.host, proxy.port), timeout=30)
        try:
            assert first.recv(1024).startswith(b"220")
            first.settimeout(30)
            # Nothing more is asked: the next read ends only when the proxy resets the connection, with an RST
            # (ECONNRESET), not an orderly close (b"").
            with pytest.raises(ConnectionResetError):
                while first.recv(1024):
                    pass
        finally:
            first.close()
        second = smtplib.SMTP(proxy.host, proxy.port, timeout=30, local_hostname="bench.example")
        try:
            time.sleep(reset_after * 2)  # past the time the first connection was reset at
            assert second.noop()[0] == 250
        finally:
            second.quit()
        deadline = time.monotonic() + 10
        while proxy.resets_done < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.resets_done == 1


def test_a_client_that_does_not_read_stops_the_proxy_reading_the_server() -> None:
    # Backpressure: without it the proxy would hold whatever a fast side sends for a slow one (its memory grows
    # with the stream); with it, the fast side's writes block once the buffers on the way are full.
    sent = 0
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def flood() -> None:
        nonlocal sent
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            block = b"x" * (1 << 20)
            while not stop.is_set() and sent < (512 << 20):
                conn.sendall(block)
                sent += len(block)

    server = threading.Thread(target=flood, daemon=True)
    server.start()
    try:
        with DelayProxy("127.0.0.1", listener.getsockname()[1], 10) as proxy:
            client = socket.create_connection((proxy.host, proxy.port), timeout=30)
            try:
                time.sleep(2)  # the client reads nothing
                held = sent
                time.sleep(1)
                assert sent == held, f"the server could still send {sent - held:,} bytes into the proxy"
                assert held < (64 << 20), f"{held:,} bytes sent to a client that read none"
                rss_kib = _rss_kib(proxy)
                assert rss_kib < 200 * 1024, f"the proxy holds {rss_kib:,} KiB"
            finally:
                client.close()
    finally:
        stop.set()
        listener.close()
        server.join(10)


def _rss_kib(proxy: Any) -> int:
    status = Path(f"/proc/{proxy._process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
