"""Demo: run the example DAG ``hve_daily_report`` in real Airflow against the local HVE sandbox.

``make demo`` runs this. No Microsoft tenant is needed: the sandbox plays Entra ID (HTTPS token endpoint)
and HVE (STARTTLS + XOAUTH2 SMTP) on localhost and writes each delivered message to ./mailbox. Airflow
gets a throw-away AIRFLOW_HOME with a migrated SQLite database, and ``airflow dags test`` runs the DAG.

Then it shows what HVE received: the headers, the envelope, the MIME parts and the text body in the
terminal, and an ``.html`` preview next to the ``.eml`` that a browser can open.
"""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from email.message import EmailMessage, Message
from email.utils import getaddresses
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "hve_daily_report"
TEXT_LINES = 40
# Headers the summary shows by name; any other header the DAG added (X-...) is listed after them.
_SHOWN = ("Subject", "From", "To", "Cc", "Reply-To", "Date", "Message-ID")
_STRUCTURAL = frozenset(h.lower() for h in (*_SHOWN, "MIME-Version", "Content-Type", "Content-Transfer-Encoding"))
_CID = re.compile(r"""cid:([^"'\s>)]+)""", re.IGNORECASE)


def airflow(*args: str, env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        done = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, stdout=out, stderr=out)
    if done.returncode:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        sys.exit(
            f"'airflow {' '.join(args)}' failed (exit {done.returncode}); last lines of {log}:\n" + "\n".join(tail)
        )


def bcc_only(message: EmailMessage, envelope: Sequence[str]) -> list[str]:
    """Return the envelope recipients that no To or Cc header names: the Bcc recipients."""
    in_headers = {addr.lower() for _, addr in getaddresses(message.get_all("To", []) + message.get_all("Cc", []))}
    return [rcpt for rcpt in envelope if rcpt.lower() not in in_headers]


def _payload(part: Message) -> bytes:
    """Return a leaf part's content, transfer-decoded."""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _size(part: Message) -> int:
    return len(_payload(part))


def mime_parts(message: EmailMessage, depth: int = 0) -> Iterator[str]:
    """Yield one indented line per MIME part: type, charset or file name, and decoded size."""
    line = "  " * depth + message.get_content_type()
    if message.is_multipart():
        yield line
        for part in message.iter_parts():
            yield from mime_parts(part, depth + 1)  # type: ignore[arg-type]
        return
    details = []
    disposition = message.get_content_disposition()
    if disposition:
        details.append(f"{disposition} {message.get_filename() or ''}".rstrip())
    if message.get("Content-ID"):
        details.append(f"Content-ID {message['Content-ID']}")
    if message.get_content_maintype() == "text":
        details.append(message.get_content_charset() or "us-ascii")
    details.append(f"{_size(message):,} bytes")
    yield f"{line} ({', '.join(details)})"


def text_body(message: EmailMessage) -> tuple[str, str]:
    """Return (where it came from, text): the text/plain part, else the HTML part rendered as text."""
    part = message.get_body(preferencelist=("plain",))
    if part is not None:
        return "text/plain part", part.get_content()
    part = message.get_body(preferencelist=("html",))
    if part is not None:
        from airflow_provider_hve.reports import html_to_text

        return "text/html part, rendered as text", html_to_text(part.get_content())
    return "no text part", ""


def summary(message: EmailMessage, envelope: Sequence[str]) -> str:
    """What HVE received, for the terminal: headers, envelope, MIME parts and the start of the text body."""
    lines = ["Headers"]
    lines += [f"  {name + ':':<12}{message[name]}" for name in _SHOWN if message[name] is not None]
    lines += [f"  {name}: {value}" for name, value in message.items() if name.lower() not in _STRUCTURAL]
    hidden = bcc_only(message, envelope)
    lines += ["", "Envelope (RCPT TO)"]
    lines += [
        f"  {rcpt}" + ("   <- Bcc: in the envelope only, not in the headers" if rcpt in hidden else "")
        for rcpt in envelope
    ]
    lines += ["", "MIME parts"]
    lines += [f"  {line}" for line in mime_parts(message)]
    source, text = text_body(message)
    body = text.rstrip().splitlines()
    lines += ["", f"Text body ({source})"]
    lines += [f"  | {line}".rstrip() for line in body[:TEXT_LINES]]
    if len(body) > TEXT_LINES:
        lines.append(f"  ... {len(body) - TEXT_LINES} more lines in the .eml")
    return "\n".join(lines)


def _data_uris(message: EmailMessage) -> dict[str, str]:
    """Map each inline part's Content-ID to a data: URI, so the preview shows images without the .eml."""
    uris = {}
    for part in message.walk():
        cid = part.get("Content-ID")
        if cid and not part.is_multipart():
            data = base64.b64encode(_payload(part)).decode("ascii")
            uris[cid.strip("<>")] = f"data:{part.get_content_type()};base64,{data}"
    return uris


def preview_html(message: EmailMessage, envelope: Sequence[str]) -> str:
    """A page a browser can open: the headers, then the HTML part in a sandboxed frame (no scripts run)."""
    hidden = bcc_only(message, envelope)
    rows = [(name, str(message[name])) for name in _SHOWN if message[name] is not None]
    rows.append(("Envelope", ", ".join(f"{r} (Bcc)" if r in hidden else r for r in envelope)))
    attachments = [f"{p.get_filename()} ({_size(p):,} bytes)" for p in message.iter_attachments()]
    if attachments:
        rows.append(("Attachments", ", ".join(attachments)))
    header_rows = "\n".join(
        f'<tr><th style="text-align:left;padding:2px 12px 2px 0;color:#6b7280;font-weight:600">{html.escape(name)}'
        f'</th><td style="padding:2px 0">{html.escape(value)}</td></tr>'
        for name, value in rows
    )
    html_part = message.get_body(preferencelist=("html",))
    source, text = text_body(message)
    if html_part is not None:
        uris = _data_uris(message)
        body = _CID.sub(lambda m: uris.get(m.group(1), m.group(0)), html_part.get_content())
        shown = (
            f'<iframe sandbox srcdoc="{html.escape(body, quote=True)}" title="HTML part" '
            'style="width:100%;height:75vh;border:1px solid #e5e7eb;background:#fff"></iframe>'
        )
    else:
        shown = "<p>This message has no HTML part.</p>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{html.escape(str(message["Subject"] or "(no subject)"))}</title></head>
<body style="margin:0;padding:16px;font-family:Segoe UI,Arial,sans-serif;font-size:14px;background:#f3f4f6">
<p style="margin:0 0 8px 0;color:#6b7280">Preview of a message the HVE sandbox received (made by make demo).</p>
<table style="margin:0 0 12px 0;border-collapse:collapse">
{header_rows}
</table>
{shown}
<details style="margin-top:12px"><summary>Text body ({html.escape(source)})</summary>
<pre style="background:#fff;border:1px solid #e5e7eb;padding:12px;overflow:auto">{html.escape(text)}</pre>
</details>
</body>
</html>
"""


def main() -> int:
    from airflow_provider_hve.sandbox import HveSandbox

    # A terminal that cannot show a character of the message must not end the demo.
    sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    home = Path(tempfile.mkdtemp(prefix="hve-demo-airflow-"))
    log = home / "demo.log"
    with HveSandbox(mailbox_dir=ROOT / "mailbox") as sandbox:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_HVE_DEFAULT": sandbox.connection_json(),
        }
        print(f"Sandbox: Entra at {sandbox.authority_host}, HVE SMTP at localhost:{sandbox.smtp_port} (STARTTLS)")
        print(f"Airflow home: {home} (log: {log}; removed when the demo succeeds)")
        print("Migrating the Airflow metadata database (SQLite)...")
        airflow("db", "migrate", env=env, log=log)
        print(f"Running 'airflow dags test {DAG_ID}'...")
        airflow("dags", "test", DAG_ID, env=env, log=log)
        delivered = sandbox.wait_for_messages(1, timeout=10)
        if len(delivered) != 1:
            sys.exit(f"Expected one delivered message, the sandbox has {len(delivered)}; see {log}")

    (message_record,) = delivered
    message = message_record.message
    preview = message_record.path.with_suffix(".html")
    preview.write_text(preview_html(message, message_record.rcpt_tos), encoding="utf-8")
    shutil.rmtree(home, ignore_errors=True)

    print()
    print(f"HVE accepted 1 message from {message_record.mail_from}. What it received:")
    print()
    print(summary(message, message_record.rcpt_tos))
    print()
    print(f"Message (.eml): {message_record.path}")
    print(f"HTML preview:   {preview.as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
