"""Run the sandbox from a shell: ``python -m airflow_provider_hve.sandbox``.

Prints the ``export AIRFLOW_CONN_HVE_DEFAULT=...`` line to paste into another shell, then
one line per delivered message, until SIGINT or SIGTERM.
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
    return parser


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
    sandbox = HveSandbox(
        mailbox_dir=args.mailbox,
        state_dir=args.state_dir,
        smtp_port=args.smtp_port,
        token_port=args.token_port,
    )
    with sandbox:
        print(f"export AIRFLOW_CONN_HVE_DEFAULT={shlex.quote(sandbox.connection_json(args.auth_mode))}")
        print(f"# mailbox: {sandbox.mailbox_dir}")
        print(f"# SMTP: {sandbox.smtp_host}:{sandbox.smtp_port}  authority: {sandbox.authority}")
        print(f"# CA bundle: {sandbox.ca_bundle}")
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
