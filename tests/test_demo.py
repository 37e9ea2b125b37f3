"""``make demo`` shows what HVE received: the summary and the HTML preview of scripts/demo.py.

The message is sent through the hook to the sandbox and read back from its mailbox, as the demo does.
"""

from __future__ import annotations

import html
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import DeliveredMessage, HveSandbox

ROOT = Path(__file__).resolve().parent.parent
FILES = Path(__file__).resolve().parent / "dags" / "files"


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hve_demo", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def delivered(sandbox: HveSandbox, hve_connection: Callable[..., str]) -> DeliveredMessage:
    hve_connection()
    HveHook().send_email(
        to="team@contoso.example",
        cc="Lead <lead@contoso.example>",
        bcc="audit@contoso.example",
        subject="Scores <b>today</b>",
        html_content='<h1>Scores</h1><img src="cid:logo"><table><tr><td>Ana</td><td>12</td></tr></table>',
        text_content="Scores\nAna  12",
        files=[str(FILES / "notes.txt")],
        images={"logo": str(FILES / "logo.png")},
        headers={"X-Report": "scores"},
    )
    (message,) = sandbox.wait_for_messages(1)
    return message


def test_summary_shows_headers_envelope_parts_and_text(demo: ModuleType, delivered: DeliveredMessage) -> None:
    text = demo.summary(delivered.message, delivered.rcpt_tos)

    assert "Subject:    Scores <b>today</b>" in text
    assert "Cc:         Lead <lead@contoso.example>" in text
    assert "X-Report: scores" in text
    assert "  audit@contoso.example   <- Bcc: in the envelope only" in text
    assert "  team@contoso.example\n" in text and "  lead@contoso.example\n" in text
    assert "text/plain (utf-8," in text
    assert "image/png (" in text and "Content-ID <logo>," in text
    assert "text/plain (attachment notes.txt," in text
    assert "Text body (text/plain part)\n  | Scores\n  | Ana  12" in text


def test_summary_cuts_a_long_text_body(demo: ModuleType, sandbox: HveSandbox, hve_connection: Callable) -> None:
    hve_connection()
    rows = "\n".join(f"row {n}" for n in range(demo.TEXT_LINES + 5))
    HveHook().send_email(to="team@contoso.example", subject="Long", html_content="<p>long</p>", text_content=rows)
    (delivered,) = sandbox.wait_for_messages(1)

    text = demo.summary(delivered.message, delivered.rcpt_tos)

    assert f"  | row {demo.TEXT_LINES - 1}" in text
    assert f"  | row {demo.TEXT_LINES}\n" not in text
    assert "  ... 5 more lines in the .eml" in text


def test_preview_escapes_headers_and_inlines_images(demo: ModuleType, delivered: DeliveredMessage) -> None:
    page = demo.preview_html(delivered.message, delivered.rcpt_tos)

    assert "Scores &lt;b&gt;today&lt;/b&gt;" in page and "<b>today</b>" not in page
    assert "audit@contoso.example (Bcc)" in page
    assert "notes.txt (" in page
    assert "<iframe sandbox srcdoc=" in page
    frame = html.unescape(page.split('srcdoc="', 1)[1].split('"', 1)[0])
    assert "<h1>Scores</h1>" in frame and "<td>Ana</td>" in frame
    assert 'src="data:image/png;base64,' in frame and "cid:logo" not in frame
    assert "Ana  12" in page  # the text body, below the frame
