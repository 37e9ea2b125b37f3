"""
The alert outbox on the command line: ``python -m airflow_provider_hve.alerts flush`` (or ``hve-alerts flush``).

Run it where Airflow is configured (the ``hve`` connection, ``[hve] alert_dir``), e.g. from cron or by hand after an
outage. ``flush`` prints a line per alert and a summary and exits 1 while alerts are left (HVE still unreachable), 2
when the alert listener's digests could not be sent (a bad ``[hve] alert_*`` option, a broken journal: logged; the
outbox is flushed all the same); ``list`` prints what the outbox holds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_hve.alerts",
        description="The HVE alert outbox: alerts HVE could not take yet, kept under [hve] alert_dir/outbox.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    flush = commands.add_parser("flush", help="deliver the kept alerts now, each once; print what was done")
    flush.add_argument("--conn-id", help="only the alerts of this hve connection (default: all)")
    flush.add_argument(
        "--for",
        dest="seconds",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="while alerts are left, try again every --poll seconds for up to this long (default: once)",
    )
    flush.add_argument("--poll", type=float, default=20.0, metavar="SECONDS", help="see --for (default: 20)")
    flush.add_argument(
        "--digests-now",
        action="store_true",
        help="also send the alert digest being collected (default: only digests whose window has ended)",
    )
    listing = commands.add_parser("list", help="print the kept alerts, oldest first")
    listing.add_argument("--conn-id", help="only the alerts of this hve connection (default: all)")
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list(args.conn_id)
    return _flush(args.conn_id, args.seconds, args.poll, digests_now=args.digests_now)


def _flush(conn_id: str | None, seconds: float, poll: float, *, digests_now: bool = False) -> int:
    from airflow_provider_hve.alerts.digest import flush_digests
    from airflow_provider_hve.alerts.flush import flush, flush_until_empty
    from airflow_provider_hve.alerts.outbox import Outbox

    # The listener's digests first: one that HVE cannot take now is kept in the outbox, and goes out below. A bad
    # listener option or a broken journal must not keep the outbox from being flushed: said, and the exit status 2.
    digest_failed = False
    try:
        digests = flush_digests(force=digests_now)
        print(f"Alert digests sent: {digests}")
    except Exception as exc:
        digest_failed = True
        logging.getLogger(__name__).exception("HVE alert digests could not be sent; flushing the outbox anyway")
        print(f"Alert digests: failed ({type(exc).__name__}: {exc}); the outbox is flushed anyway")
    outbox = Outbox.configured()
    print(f"HVE alert outbox {outbox.directory}")
    if seconds > 0:
        report = flush_until_empty(conn_id, seconds=seconds, poll=poll, outbox=outbox)
    else:
        report = flush(conn_id, outbox=outbox)
    for line in report.lines:
        print(f"  {line}")
    print(report.summary().capitalize())
    if digest_failed:
        return 2
    return 1 if report.left else 0


def _list(conn_id: str | None) -> int:
    from airflow_provider_hve.alerts.outbox import Outbox

    outbox = Outbox.configured()
    entries = outbox.entries(conn_id)
    print(f"HVE alert outbox {outbox.directory}: {len(entries)} alert(s)")
    for entry in entries:
        try:
            alert = outbox.read(entry)
        except (OSError, ValueError, TypeError) as exc:  # delivered meanwhile, or unreadable
            print(f"  {entry.name}: {exc}")
            continue
        raised = dt.datetime.fromtimestamp(alert.raised_at, tz=dt.timezone.utc)
        state = "queued" if entry.claimed_ms is None else "being delivered"
        print(
            f"  {raised:%Y-%m-%d %H:%M:%S} UTC {state} {alert.message_id} {alert.subject!r} to "
            f"{', '.join(alert.recipients)} (connection {alert.conn_id!r}, {alert.origin}, {alert.attempts} "
            f"attempt(s)): {alert.reason.splitlines()[0] if alert.reason else ''}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
