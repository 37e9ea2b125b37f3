"""docs/troubleshooting.md's SMTP reply tables are the diagnostics code's own text: a test keeps them in step.

To refresh the tables after changing ``diagnostics.py``: ``python tests/unit/test_troubleshooting_doc.py`` prints
them.
"""

from __future__ import annotations

from pathlib import Path

from airflow_provider_hve.diagnostics import ENTRA_CAUSES, SMTP_AUTH_CAUSES, SMTP_SEND_CAUSES

DOC = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"
SECTIONS = {
    "## HVE SMTP replies at AUTH": SMTP_AUTH_CAUSES,
    "## HVE SMTP replies when sending": SMTP_SEND_CAUSES,
}


def table(causes: dict[str, str]) -> str:
    """The markdown table for one dict of enhanced status code -> likely cause and fix."""
    rows = ["| Enhanced code | Likely cause and fix (the text the error carries) |", "|---|---|"]
    rows += [f"| `{code}` | {_cell(cause)} |" for code, cause in causes.items()]
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_table(text: str, heading: str) -> str:
    start = text.index(heading)
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| Enhanced code"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[first:end])


def test_the_smtp_tables_are_the_diagnostics_text() -> None:
    text = DOC.read_text(encoding="utf-8")
    for heading, causes in SECTIONS.items():
        assert section_table(text, heading) == table(causes), f"{heading}: run this file to print the table"


def test_every_entra_code_with_a_diagnosis_is_in_the_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = {int(line.split("`AADSTS")[1].split("`")[0]) for line in text.splitlines() if "| `AADSTS" in line}
    assert documented == set(ENTRA_CAUSES)


if __name__ == "__main__":
    for heading, causes in SECTIONS.items():
        print(f"{heading}\n\n{table(causes)}\n")
