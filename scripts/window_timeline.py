"""The picture of docs/reliability.md and docs/mail-merge.md: a timeline of writes and replies, a stop-and-wait
BDAT window against a sliding one.

A small, deterministic model (not a measurement): the client writes one transaction (``MAIL FROM``, ``RCPT TO``,
``BDAT ... LAST``, pipelined) every ``WRITE_MS``; each reaches the server ``RTT_MS / 2`` later; the server takes
``SERVICE_MS`` per message, one at a time, and its replies reach the client ``RTT_MS / 2`` after it sent them.

* stop-and-wait: a window of ``WINDOW`` transactions is written, then every reply of it is read before the next
  window goes out: the server idles about one RTT per window;
* sliding: at most ``SLIDING_WINDOW`` transactions in flight (rate x RTT, plus a margin of two), and every reply that
  arrives lets the next transaction go: the server never waits once the window is full.

Writes the SVG by hand (no plotting dependency), byte for byte the same on every run::

    .venv/bin/python scripts/window_timeline.py            # writes docs/images/window-timeline.svg
    .venv/bin/python scripts/window_timeline.py --check    # exit 1 if the file is not what this script draws
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "window-timeline.svg"

RTT_MS = 20.0
WRITE_MS = 1.0  # the client's time to write one transaction
SERVICE_MS = 4.0  # the server's time per message: its rate is 1 / SERVICE_MS = 250 msg/s
WINDOW = 4  # stop-and-wait
SLIDING_WINDOW = 7  # rate x RTT = 5 in flight, plus a margin of 2 (transport/window.py)
SPAN_MS = 120.0

WIDTH = 940
LEFT = 120  # lane labels
RIGHT = 30
PANEL = 215  # height of one panel
CLIENT_Y = 58  # lane positions inside a panel
SERVER_Y = 158
SCALE = (WIDTH - LEFT - RIGHT) / SPAN_MS

BLUE = "#1f5fa8"  # transactions
GREEN = "#2e8b3e"  # replies
GREY = "#9aa3ad"
IDLE = "#f4c7c3"
TEXT = "#222"


@dataclass
class Message:
    written: float  # the client writes the transaction
    arrives: float  # it reaches the server
    started: float  # the server begins on it
    answered: float  # the server writes its replies
    back: float  # the replies reach the client


def _deliver(written: float, server_free: float) -> Message:
    arrives = written + RTT_MS / 2
    started = max(arrives, server_free)
    answered = started + SERVICE_MS
    return Message(written, arrives, started, answered, answered + RTT_MS / 2)


def stop_and_wait(window: int) -> list[Message]:
    """Windows of ``window`` transactions; the next window is written once every reply of the last is read."""
    messages: list[Message] = []
    start = server_free = 0.0
    while True:
        batch = []
        for k in range(window):
            message = _deliver(start + k * WRITE_MS, server_free)
            server_free = message.answered
            batch.append(message)
        if batch[-1].back > SPAN_MS:
            return messages
        messages += batch
        start = batch[-1].back


def sliding(window: int) -> list[Message]:
    """At most ``window`` in flight: transaction i goes out when the reply of i - window is back."""
    messages: list[Message] = []
    server_free = 0.0
    while True:
        n = len(messages)
        written = n * WRITE_MS if n < window else max(messages[n - window].back, messages[-1].written + WRITE_MS)
        message = _deliver(written, server_free)
        if message.back > SPAN_MS:
            return messages
        server_free = message.answered
        messages.append(message)


def x(t: float) -> str:
    return f"{LEFT + t * SCALE:.1f}"


def idle_spans(messages: list[Message]) -> list[tuple[float, float]]:
    """Where the server waits for work (after it started), longer than one message's service."""
    spans = []
    for before, after in itertools.pairwise(messages):
        if after.started - before.answered > SERVICE_MS:
            spans.append((before.answered, after.started))
    return spans


def panel(top: float, title: str, note: str, messages: list[Message]) -> list[str]:
    client, server = top + CLIENT_Y, top + SERVER_Y
    out = [
        f'<text x="20" y="{top + 24:.0f}" class="title">{title}</text>',
        f'<text x="{WIDTH - RIGHT}" y="{top + 24:.0f}" class="note" text-anchor="end">{note}</text>',
        f'<text x="20" y="{client + 4:.0f}" class="lane">client</text>',
        f'<text x="20" y="{server + 4:.0f}" class="lane">server</text>',
        f'<line x1="{LEFT}" y1="{client}" x2="{WIDTH - RIGHT}" y2="{client}" class="lane-line"/>',
        f'<line x1="{LEFT}" y1="{server}" x2="{WIDTH - RIGHT}" y2="{server}" class="lane-line"/>',
    ]
    for start, end in idle_spans(messages):
        out.append(
            f'<rect x="{x(start)}" y="{server - 11}" width="{(end - start) * SCALE:.1f}" height="22" class="idle"/>'
        )
        out.append(
            f'<text x="{x((start + end) / 2)}" y="{server + 27}" class="idle-label">server idle (&#8776; 1 RTT)</text>'
        )
    for m in messages:
        out.append(
            f'<rect x="{x(m.started)}" y="{server - 5}" width="{SERVICE_MS * SCALE:.1f}" height="10" class="work"/>'
        )
        out.append(f'<line x1="{x(m.written)}" y1="{client}" x2="{x(m.arrives)}" y2="{server - 6}" class="tx"/>')
        out.append(f'<line x1="{x(m.answered)}" y1="{server}" x2="{x(m.back)}" y2="{client + 6}" class="reply"/>')
    for first, last in bursts(messages):
        label = str(first) if first == last else f"{first}&#8211;{last}"
        middle = (messages[first - 1].written + messages[last - 1].written) / 2
        out.append(f'<text x="{x(middle)}" y="{client - 8}" class="num">{label}</text>')
    return out


def bursts(messages: list[Message]) -> list[tuple[int, int]]:
    """Runs of transactions written back to back (numbered from 1), labelled once: "1-4"."""
    runs: list[tuple[int, int]] = []
    for number, m in enumerate(messages, 1):
        if runs and m.written - messages[number - 2].written <= WRITE_MS:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs


def axis(top: float) -> list[str]:
    out = [f'<line x1="{LEFT}" y1="{top}" x2="{WIDTH - RIGHT}" y2="{top}" class="axis"/>']
    for ms in range(0, int(SPAN_MS) + 1, 10):
        out.append(f'<line x1="{x(ms)}" y1="{top}" x2="{x(ms)}" y2="{top + 5}" class="axis"/>')
        out.append(f'<text x="{x(ms)}" y="{top + 18}" class="tick">{ms}</text>')
    out.append(f'<text x="{x(SPAN_MS / 2)}" y="{top + 36}" class="tick">time (ms)</text>')
    return out


def legend(top: float) -> list[str]:
    left = LEFT
    return [
        f'<line x1="{left}" y1="{top}" x2="{left + 30}" y2="{top}" class="tx"/>',
        f'<text x="{left + 38}" y="{top + 4}" class="legend">transaction written (MAIL, RCPT, BDAT LAST)</text>',
        f'<line x1="{left + 330}" y1="{top}" x2="{left + 360}" y2="{top}" class="reply"/>',
        f'<text x="{left + 368}" y="{top + 4}" class="legend">its replies</text>',
        f'<rect x="{left + 470}" y="{top - 5}" width="16" height="10" class="work"/>',
        f'<text x="{left + 494}" y="{top + 4}" class="legend">server at work</text>',
        f'<rect x="{left + 610}" y="{top - 8}" width="22" height="16" class="idle"/>',
        f'<text x="{left + 640}" y="{top + 4}" class="legend">server idle</text>',
    ]


STYLE = f"""
text {{ font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; fill: {TEXT}; }}
.title {{ font-size: 15px; font-weight: 600; }}
.note {{ font-size: 12px; }}
.lane {{ font-size: 13px; font-weight: 600; }}
.legend, .tick {{ font-size: 12px; }}
.tick {{ text-anchor: middle; }}
.num {{ font-size: 10px; text-anchor: middle; fill: {BLUE}; }}
.idle-label {{ font-size: 11px; text-anchor: middle; fill: #a33; }}
.lane-line {{ stroke: {GREY}; stroke-width: 1.5; }}
.axis {{ stroke: {TEXT}; stroke-width: 1; }}
.tx {{ stroke: {BLUE}; stroke-width: 1.4; marker-end: url(#tx-head); }}
.reply {{ stroke: {GREEN}; stroke-width: 1.4; stroke-dasharray: 4 2; marker-end: url(#reply-head); }}
.work {{ fill: {GREY}; stroke: #fff; stroke-width: 0.6; }}
.idle {{ fill: {IDLE}; }}
"""


def draw() -> str:
    waited, slid = stop_and_wait(WINDOW), sliding(SLIDING_WINDOW)
    rate = 1000 / SERVICE_MS
    height = 2 * PANEL + 100
    body = legend(22)
    body += panel(
        40,
        f"Stop-and-wait, window of {WINDOW}",
        f"{len(waited)} messages answered in {SPAN_MS:g} ms: the link idles one RTT per window",
        waited,
    )
    body += panel(
        40 + PANEL,
        f"Sliding window, at most {SLIDING_WINDOW} in flight",
        f"{len(slid)} messages answered: window = rate &#215; RTT + 2 = {rate:g}/s &#215; {RTT_MS:g} ms + 2 = "
        f"{rate * RTT_MS / 1000 + 2:g}",
        slid,
    )
    body += axis(40 + 2 * PANEL)
    head = (
        '<marker id="{id}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
    )
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-labelledby="title">',
            f'<title id="title">BDAT windows: stop-and-wait against sliding, RTT {RTT_MS:g} ms, '
            f"server {rate:g} msg/s (a model)</title>",
            f"<style>{STYLE}</style>",
            "<defs>",
            head.format(id="tx-head", color=BLUE),
            head.format(id="reply-head", color=GREEN),
            "</defs>",
            f'<rect width="{WIDTH}" height="{height}" fill="#fff"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from what this draws")
    args = parser.parse_args()
    svg = draw()
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == svg
        print(f"{args.out}: {'up to date' if same else 'differs: run scripts/window_timeline.py'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
