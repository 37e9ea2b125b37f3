"""The sandbox's command line and the Airflow connection it hands out."""

from __future__ import annotations

import json
import os
import shlex
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from airflow_provider_hve.sandbox import HveSandbox

from .clients import xoauth2

REPO = Path(__file__).resolve().parents[2]

# Exchange checks the From header against the authenticated account too (550 5.7.60 at DATA).
FROM_ACCOUNT = b"From: hve-sender@contoso.example\r\n"


@pytest.mark.parametrize(
    ("auth_mode", "password", "extra_key"),
    [
        pytest.param("client_secret", "client_secret", None, id="client-secret"),
        pytest.param("password", "account_password", None, id="password"),
        pytest.param("certificate", None, "certificate_path", id="certificate"),
        pytest.param("workload_identity", None, "federated_token_file", id="workload-identity"),
    ],
)
def test_connection_shape(sb: HveSandbox, auth_mode: str, password: str | None, extra_key: str | None) -> None:
    conn = sb.connection(auth_mode)
    assert conn["conn_type"] == "hve"
    assert (conn["host"], conn["port"], conn["login"]) == ("localhost", sb.smtp_port, sb.account)
    assert conn["password"] == (getattr(sb, password) if password else "")
    extra = conn["extra"]
    assert extra["tenant_id"] == sb.tenant_id and extra["client_id"] == sb.client_id
    assert extra["auth_mode"] == auth_mode
    assert extra["authority_host"] == f"https://localhost:{sb.token_port}"
    assert Path(extra["ca_bundle"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert extra["scope"] == "https://outlook.office365.com/.default"
    if extra_key:
        assert Path(extra[extra_key]).is_file()
    assert json.loads(sb.connection_json(auth_mode)) == conn


def test_connection_overrides(sb: HveSandbox) -> None:
    extra = sb.connection(scope="https://outlook.office.com/.default", ca_bundle=None)["extra"]
    assert extra["scope"] == "https://outlook.office.com/.default"
    assert "ca_bundle" not in extra
    with pytest.raises(ValueError, match="auth_mode"):
        sb.connection("basic")


def test_cli_prints_export_line_delivers_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_hve.sandbox",
            "--mailbox",
            str(tmp_path / "mail"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        export = process.stdout.readline()
        assert export.startswith("export AIRFLOW_CONN_HVE_DEFAULT=")
        conn = json.loads(shlex.split(export.partition("=")[2])[0])
        lines = [process.stdout.readline() for _ in range(4)]
        assert lines[0] == f"# mailbox: {tmp_path / 'mail'}\n"
        extra = conn["extra"]
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
            verify=extra["ca_bundle"],
        ).json()["access_token"]
        with smtplib.SMTP(conn["host"], conn["port"], timeout=5) as client:
            client.starttls(context=ssl.create_default_context(cafile=extra["ca_bundle"]))
            client.ehlo()
            assert client.docmd("AUTH", "XOAUTH2 " + xoauth2(conn["login"], token))[0] == 235
            client.sendmail(conn["login"], ["ops@contoso.example"], FROM_ACCOUNT + b"Subject: cli\r\n\r\nx\r\n")
        delivered = process.stdout.readline()
        assert delivered.startswith(f"delivered {tmp_path / 'mail'}")
        assert delivered.rstrip().endswith(f"from {conn['login']} to ops@contoso.example")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "# sandbox stopped" in out
    assert (tmp_path / "mail").is_dir()


def test_cli_switches_reach_the_sandbox(tmp_path: Path) -> None:
    from airflow_provider_hve.sandbox.__main__ import _parser, apply_fault_switches, build_sandbox

    args = _parser().parse_args(
        [
            "--state-dir",
            str(tmp_path / "state"),
            "--latency-ms",
            "7.5",
            "--no-pipelining",
            "--refuse-recipient",
            "gone@contoso.example",
            "--refuse-recipient",
            "left@contoso.example",
            "--fail-next-data",
            "2",
            "--fail-data-reply",
            "451 4.3.0 Temporary failure",
            "--disconnect-after",
            "3",
            "--disconnect-times",
            "2",
            "--smtp-throttle-seconds",
            "30",
            "--smtp-throttle-reply",
            "451 4.3.0 Busy",
            "--smtp-throttle-command",
            "content",
            "--stall-after",
            "5",
            "--stall-seconds",
            "9",
            "--limit-sessions",
            "2",
            "--throttle-token",
            "2",
            "--throttle-status",
            "503",
            "--throttle-retry-after",
            "4",
        ]
    )
    with build_sandbox(args) as sandbox:
        described = apply_fault_switches(sandbox, args)
        assert sandbox.latency_ms == sandbox.smtp.latency_ms == sandbox.entra.latency_ms == 7.5
        assert not sandbox.smtp.pipelining
        handler = sandbox.smtp.handler
        assert set(handler._refused_recipients) == {"gone@contoso.example", "left@contoso.example"}
        # --fail-next-data and --smtp-throttle-* both become throttles of the reply after the content.
        assert [(t.reply, t.command, t.remaining, t.seconds) for t in handler._throttles] == [
            ("451 4.3.0 Temporary failure", "content", 2, None),
            ("451 4.3.0 Busy", "content", None, 30.0),
        ]
        assert handler._disconnect is not None
        assert (handler._disconnect.every, handler._disconnect.remaining) == (3, 2)
        assert handler._disconnect.reply.startswith("421 4.3.2")
        assert [sandbox.entra.next_throttle() for _ in range(3)] == [(503, 4), (503, 4), None]
        assert handler.take_throttle("MAIL") is None
        assert [handler.take_throttle("content") for _ in range(3)] == [
            "451 4.3.0 Temporary failure",
            "451 4.3.0 Temporary failure",
            "451 4.3.0 Busy",
        ]
        assert handler._stall is not None
        assert (handler._stall.every, handler._stall.seconds, handler._stall.command) == (5, 9.0, "content")
        assert handler.max_sessions_per_account == 2
    assert described == [
        "refuse gone@contoso.example",
        "refuse left@contoso.example",
        "fail DATA x2 (451)",
        "disconnect after 3 messages x2",
        "451 at content for 30 s",
        "stall content 9 s after 5 messages",
        "at most 2 sessions per account",
        "token endpoint 503 x2",
    ]
    defaults = _parser().parse_args([])
    assert (defaults.latency_ms, defaults.no_pipelining, defaults.disconnect_after) == (0, False, None)


def test_every_server_switch_is_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-chunking, --no-smtputf8, --no-8bitmime, --token-lifetime, --fail-next-auth, --refuse-connections."""
    from airflow_provider_hve.exceptions import HveAuthError
    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.sandbox.__main__ import _parser, apply_fault_switches, build_sandbox

    args = _parser().parse_args(
        [
            "--state-dir",
            str(tmp_path / "state"),
            "--no-chunking",
            "--no-smtputf8",
            "--no-8bitmime",
            "--token-lifetime",
            "1200",
            "--fail-next-auth",
            "1",
            "--fail-auth-reply",
            "550 5.7.30 Basic authentication is not supported for Client Submission",
        ]
    )
    with build_sandbox(args) as sandbox:
        described = apply_fault_switches(sandbox, args)
        assert described == [
            "no CHUNKING",
            "no SMTPUTF8",
            "no 8BITMIME",
            "tokens live 1200 s",
            "fail AUTH x1 (550)",
        ]
        assert not (sandbox.smtp.chunking or sandbox.smtp.smtputf8 or sandbox.smtp.eight_bit_mime)
        assert sandbox.token_lifetime == 1200
        monkeypatch.setenv("AIRFLOW_CONN_HVE_CLI", sandbox.connection_json())
        hook = HveHook(hve_conn_id="hve_cli")
        with pytest.raises(HveAuthError, match="550 5.7.30"):  # what a DAG author would see
            hook.send_email(to="team@contoso.example", subject="s", text_content="x")
        hook.send_email(to="team@contoso.example", subject="s", text_content="x")  # the fault was used up
        (transaction,) = sandbox.smtp_sessions[-1].transactions
        assert transaction.bdat_chunks == 0  # sent with DATA: the server offered no CHUNKING
        (delivered,) = sandbox.wait_for_messages(1)
        assert delivered.rcpt_tos == ["team@contoso.example"]
    outage = _parser().parse_args(["--state-dir", str(tmp_path / "state2"), "--refuse-connections", "30"])
    with build_sandbox(outage) as sandbox:
        assert apply_fault_switches(sandbox, outage) == ["refuse connections for 30 s"]
        assert sandbox.smtp.refusing_connections
        with pytest.raises(OSError):
            smtplib.SMTP("127.0.0.1", sandbox.smtp_port, timeout=5)
