"""Run the sandbox from a shell: ``python -m airflow_provider_hve.sandbox``.

Prints the ``export AIRFLOW_CONN_HVE_DEFAULT=...`` line to paste into another shell, then
one line per delivered message, until SIGINT or SIGTERM. Switches emulate a WAN
(``--latency-ms``), a server without an extension (``--no-pipelining``, ``--no-chunking``, ``--no-smtputf8``,
``--no-8bitmime``), short-lived tokens (``--token-lifetime``) and HVE's failures (``--refuse-recipient``,
``--fail-next-data``, ``--fail-next-auth``, ``--disconnect-after``, ``--smtp-throttle-seconds``,
``--stall-after``, ``--limit-sessions``, ``--refuse-connections``, ``--throttle-token``): every switch of the
Python API, so a DAG can be tried against each.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from airflow_provider_hve.sandbox.core import AUTH_MODES, HveSandbox
from airflow_provider_hve.sandbox.smtp_server import (
    AUTH_FAILED,
    FAULTABLE_COMMANDS,
    SERVICE_CLOSING,
    SUBMISSION_QUOTA_EXCEEDED,
    TOO_MANY_CONNECTIONS,
)

FEDERATED_REFRESH_SECONDS = 30 * 60


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_hve.sandbox",
        description="Run a local Entra ID + Microsoft 365 HVE stand-in on 127.0.0.1.",
    )
    parser.add_argument("--mailbox", help="folder for delivered .eml files (default: a temporary one)")
    parser.add_argument("--state-dir", help="folder for certificates and tokens (default: a temporary one)")
    parser.add_argument("--smtp-port", type=int, help="SMTP port (default: a free one)")
    parser.add_argument("--token-port", type=int, help="HTTPS token endpoint port (default: a free one)")
    parser.add_argument(
        "--auth-mode",
        choices=AUTH_MODES,
        default="client_secret",
        help="credential kind of the printed connection (default: client_secret)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0,
        metavar="N",
        help="emulated network round-trip time added to SMTP replies and token responses (default: 0)",
    )
    parser.add_argument("--no-pipelining", action="store_true", help="do not advertise SMTP PIPELINING")
    parser.add_argument(
        "--no-chunking", action="store_true", help="do not advertise CHUNKING (BDAT): clients send with DATA"
    )
    parser.add_argument(
        "--no-smtputf8", action="store_true", help="do not advertise SMTPUTF8: internationalised addresses refused"
    )
    parser.add_argument("--no-8bitmime", action="store_true", help="do not advertise 8BITMIME")
    parser.add_argument(
        "--token-lifetime",
        type=int,
        metavar="S",
        help="access token lifetime in seconds (under 600: HVE's 501 5.5.127 'token will expire soon')",
    )
    parser.add_argument(
        "--fail-next-auth",
        type=int,
        default=0,
        metavar="N",
        help="refuse the next N AUTH attempts with --fail-auth-reply",
    )
    parser.add_argument(
        "--fail-auth-reply",
        default=AUTH_FAILED,
        metavar="REPLY",
        help="the reply for --fail-next-auth (default: 535 5.7.3 Authentication unsuccessful)",
    )
    parser.add_argument(
        "--refuse-connections",
        type=float,
        metavar="S",
        help="an outage: for S seconds from start, drop connections and refuse new ones",
    )
    parser.add_argument(
        "--refuse-recipient",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="refuse RCPT TO for this address with 550 5.1.10 RecipientNotFound (repeatable)",
    )
    parser.add_argument(
        "--fail-next-data", type=int, default=0, metavar="N", help="refuse the end of DATA of the next N messages"
    )
    parser.add_argument(
        "--fail-data-reply",
        default=SUBMISSION_QUOTA_EXCEEDED,
        metavar="REPLY",
        help="the reply for --fail-next-data (default: 554 5.2.0 ...SubmissionQuotaExceededException)",
    )
    parser.add_argument(
        "--disconnect-after",
        type=int,
        metavar="N",
        help="after N accepted messages, answer the next command with 421 and close the connection",
    )
    parser.add_argument(
        "--disconnect-times", type=int, default=1, metavar="K", help="repeat --disconnect-after K times (default: 1)"
    )
    parser.add_argument(
        "--disconnect-reply",
        default=SERVICE_CLOSING,
        metavar="REPLY",
        help="the reply for --disconnect-after (default: 421 4.3.2 Service not available...)",
    )
    parser.add_argument(
        "--smtp-throttle-seconds",
        type=float,
        metavar="S",
        help="for S seconds from start, answer --smtp-throttle-command with --smtp-throttle-reply",
    )
    parser.add_argument(
        "--smtp-throttle-reply",
        default=TOO_MANY_CONNECTIONS,
        metavar="REPLY",
        help="the throttling reply (default: 432 4.3.2 ...sender thread limit exceeded)",
    )
    parser.add_argument(
        "--smtp-throttle-command",
        default="MAIL",
        choices=FAULTABLE_COMMANDS,
        help="the command throttled; 'content' is the reply after a message (default: MAIL)",
    )
    parser.add_argument(
        "--stall-after",
        type=int,
        metavar="N",
        help="after N accepted messages, hold the next reply to --stall-command for --stall-seconds",
    )
    parser.add_argument("--stall-seconds", type=float, default=60.0, metavar="S", help="default: 60")
    parser.add_argument(
        "--stall-command",
        default="content",
        choices=FAULTABLE_COMMANDS,
        help="the reply held; 'content' delivers the message and holds its 250 (default: content)",
    )
    parser.add_argument("--stall-times", type=int, default=1, metavar="K", help="repeat --stall-after K times")
    parser.add_argument(
        "--limit-sessions",
        type=int,
        metavar="N",
        help="at most N concurrent sessions per HVE account; others get 432 4.3.2 at MAIL FROM",
    )
    parser.add_argument(
        "--throttle-token",
        type=int,
        default=0,
        metavar="N",
        help="answer the next N token requests with --throttle-status (default 429) and Retry-After",
    )
    parser.add_argument("--throttle-status", type=int, default=429, help="429 (throttled) or 5xx (unavailable)")
    parser.add_argument("--throttle-retry-after", type=int, default=1, help="Retry-After seconds (default 1)")
    return parser


def build_sandbox(args: argparse.Namespace) -> HveSandbox:
    """Create (not start) the sandbox the parsed command line asks for.

    :param args: the result of parsing the command line
    """
    lifetime = {"token_lifetime": args.token_lifetime} if args.token_lifetime is not None else {}
    return HveSandbox(
        **lifetime,
        mailbox_dir=args.mailbox,
        state_dir=args.state_dir,
        smtp_port=args.smtp_port,
        token_port=args.token_port,
        pipelining=not args.no_pipelining,
        latency_ms=args.latency_ms,
    )


def apply_fault_switches(sandbox: HveSandbox, args: argparse.Namespace) -> list[str]:
    """Set the fault switches the command line asks for on a running sandbox.

    :param sandbox: the started sandbox
    :param args: the result of parsing the command line
    :return: one short description per switch set, for the banner
    """
    described = []
    for flag, extension in (
        ("no_chunking", "chunking"),
        ("no_smtputf8", "smtputf8"),
        ("no_8bitmime", "eight_bit_mime"),
    ):
        if getattr(args, flag, False):
            setattr(sandbox.smtp, extension, False)
            described.append(f"no {extension.replace('eight_bit_mime', '8BITMIME').upper()}")
    if getattr(args, "token_lifetime", None) is not None:
        described.append(f"tokens live {args.token_lifetime} s")
    if getattr(args, "fail_next_auth", 0):
        sandbox.smtp.fail_next_auth(args.fail_auth_reply, count=args.fail_next_auth)
        described.append(f"fail AUTH x{args.fail_next_auth} ({args.fail_auth_reply.split()[0]})")
    if getattr(args, "refuse_connections", None):
        sandbox.smtp.refuse_connections(args.refuse_connections)
        described.append(f"refuse connections for {args.refuse_connections:g} s")
    for address in args.refuse_recipient:
        sandbox.smtp.refuse_recipient(address)
        described.append(f"refuse {address}")
    if args.fail_next_data:
        sandbox.smtp.fail_next_data(args.fail_data_reply, count=args.fail_next_data)
        described.append(f"fail DATA x{args.fail_next_data} ({args.fail_data_reply.split()[0]})")
    if args.disconnect_after is not None:
        sandbox.smtp.disconnect_after(args.disconnect_after, args.disconnect_reply, times=args.disconnect_times)
        described.append(f"disconnect after {args.disconnect_after} messages x{args.disconnect_times}")
    if args.smtp_throttle_seconds:
        sandbox.smtp.throttle(
            args.smtp_throttle_reply, command=args.smtp_throttle_command, seconds=args.smtp_throttle_seconds
        )
        code, command = args.smtp_throttle_reply.split()[0], args.smtp_throttle_command
        described.append(f"{code} at {command} for {args.smtp_throttle_seconds:g} s")
    if args.stall_after is not None:
        sandbox.smtp.stall_after(
            args.stall_after, args.stall_seconds, command=args.stall_command, times=args.stall_times
        )
        described.append(f"stall {args.stall_command} {args.stall_seconds:g} s after {args.stall_after} messages")
    if args.limit_sessions is not None:
        sandbox.smtp.limit_sessions(args.limit_sessions)
        described.append(f"at most {args.limit_sessions} sessions per account")
    if args.throttle_token:
        sandbox.entra.throttle(args.throttle_token, status=args.throttle_status, retry_after=args.throttle_retry_after)
        described.append(f"token endpoint {args.throttle_status} x{args.throttle_token}")
    return described


def main(argv: Sequence[str] | None = None) -> int:
    """Start the sandbox, print how to use it, and serve until a signal arrives.

    :param argv: command-line arguments without the program name
    :return: the exit status
    """
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sandbox = build_sandbox(args)
    with sandbox:
        switches = apply_fault_switches(sandbox, args)
        if args.latency_ms:
            switches.insert(0, f"latency {args.latency_ms:g} ms")
        if args.no_pipelining:
            switches.insert(0, "no PIPELINING")
        print(f"export AIRFLOW_CONN_HVE_DEFAULT={shlex.quote(sandbox.connection_json(args.auth_mode))}")
        print(f"# mailbox: {sandbox.mailbox_dir}")
        print(f"# SMTP: {sandbox.smtp_host}:{sandbox.smtp_port}  authority: {sandbox.authority}")
        print(f"# CA bundle: {sandbox.ca_bundle}")
        # Only when asked for, so the banner of a plain run keeps its shape for scripts that read it.
        if switches:
            print(f"# switches: {', '.join(switches)}")
        print("# Ctrl-C to stop.", flush=True)
        shown = 0
        refreshed = time.monotonic()
        # Polling keeps the main thread free to take the signal; the servers run in threads.
        while not stop.wait(0.2):
            if time.monotonic() - refreshed > FEDERATED_REFRESH_SECONDS:
                # Like the kubelet, rotate the projected token well before its one-hour expiry.
                sandbox.write_federated_token()
                refreshed = time.monotonic()
            messages = sandbox.messages.snapshot()
            for message in messages[shown:]:
                print(
                    f"delivered {message.path} from {message.mail_from} to {', '.join(message.rcpt_tos)}",
                    flush=True,
                )
            shown = len(messages)
    print("# sandbox stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
