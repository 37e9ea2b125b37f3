"""The sandbox in a child process, as benchmarks run it."""

from __future__ import annotations

import json
import smtplib
import ssl
from pathlib import Path

import pytest
import requests

from airflow_provider_hve.sandbox import SandboxStats
from airflow_provider_hve.sandbox.process import SandboxProcess, SandboxProcessError

from .clients import xoauth2

BODY = b"From: hve-sender@contoso.example\r\nSubject: child\r\n\r\nx\r\n"


def test_child_sandbox_serves_reports_stats_and_stops(tmp_path: Path) -> None:
    with SandboxProcess(mailbox_dir=tmp_path / "mail", latency_ms=0, pipelining=False) as child:
        assert child.pid is not None
        conn = json.loads(child.connection_json("client_secret"))
        extra = conn["extra"]
        assert (conn["port"], extra["ca_bundle"]) == (child.smtp_port, child.ca_bundle)
        assert extra["authority_host"] == child.authority_host
        http = requests.Session()
        http.trust_env = False
        token = http.post(
            f"{extra['authority_host']}/{extra['tenant_id']}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": extra["client_id"],
                "client_secret": conn["password"],
                "scope": extra["scope"],
            },
            verify=child.ca_bundle,
        ).json()["access_token"]
        with smtplib.SMTP(child.smtp_host, child.smtp_port, timeout=5) as client:
            client.starttls(context=ssl.create_default_context(cafile=child.ca_bundle))
            client.ehlo()
            assert not client.has_extn("pipelining")
            assert client.docmd("AUTH", "XOAUTH2 " + xoauth2(conn["login"], token))[0] == 235
            client.sendmail(conn["login"], ["ops@contoso.example"], BODY)
        assert child.wait_for_messages(1) == 1
        stats = child.stats()
        # Commands: EHLO, STARTTLS, EHLO, AUTH, MAIL, RCPT, DATA, QUIT; round trips: those, the greeting
        # and the message content, since smtplib waits for every reply.
        assert stats == SandboxStats(messages=1, token_posts=1, smtp_sessions=1, smtp_round_trips=10, smtp_commands=8)
        assert len(list(child.mailbox_dir.glob("*.eml"))) == 1
        child.set_latency(5)
        child.set_pipelining(True)
        child.smtp_switch("fail_next_data", count=2)
        child.smtp_switch("reset_faults")
        # The throttling switches reach the child too: a real client sees the 432.
        child.smtp_switch("throttle", "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", count=1)
        with smtplib.SMTP(child.smtp_host, child.smtp_port, timeout=5) as client:
            client.starttls(context=ssl.create_default_context(cafile=child.ca_bundle))
            client.ehlo()
            assert client.docmd("AUTH", "XOAUTH2 " + xoauth2(conn["login"], token))[0] == 235
            assert client.mail(conn["login"])[0] == 432
        child.smtp_switch("stall_after", 5, 1.0)
        child.smtp_switch("limit_sessions", 2)
        with pytest.raises(SandboxProcessError, match="not an SMTP fault switch"):
            child.smtp_switch("stop")
        child.reset()
        assert child.stats() == SandboxStats(0, 0, 0, 0, 0)
    assert child.exitcode == 0 and child.pid is None
    child.stop()  # stopping twice is harmless
