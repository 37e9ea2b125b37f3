"""Reports from data: rows validated into a table, rendered by the packaged template, attached as CSV."""

from __future__ import annotations

import csv
import decimal
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from airflow_provider_hve.exceptions import HveConfigError

REPORT_TEMPLATE = "report.html.j2"
NOTIFICATION_HTML_TEMPLATE = "notification.html.j2"
NOTIFICATION_SUBJECT_TEMPLATE = "notification_subject.j2"


@dataclass(frozen=True)
class Table:
    """Rows with the union of their keys as columns, in first-seen order."""

    columns: tuple[str, ...]
    rows: tuple[Mapping[str, Any], ...]

    def __len__(self) -> int:
        return len(self.rows)

    def to_csv(self) -> bytes:
        """
        Return the table as UTF-8 CSV with a BOM, so Excel opens accents correctly.

        A text cell (column names included) that a spreadsheet would read as a formula (it starts with ``=``,
        ``+``, ``-``, ``@``, a tab or a carriage return) is written with a leading ``'``, OWASP's rule against CSV
        injection: ``=HYPERLINK(...)`` in report data stays text. Numbers stay numbers (``-3`` as a number is not
        touched; ``"-3"`` as a string is text and gets the ``'``).
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow([_csv_text(column) for column in self.columns])
        for row in self.rows:
            writer.writerow([_csv_value(row.get(key)) for key in self.columns])
        try:
            return ("\ufeff" + buffer.getvalue()).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise HveConfigError(
                f"Argument 'data' holds a lone surrogate ({exc.object[exc.start : exc.end]!a}), which is no "
                "character and cannot be written as UTF-8: decode the source with errors='replace' or drop it."
            ) from None


def table_from_data(data: Any, *, argument: str = "data") -> Table:
    """
    Validate report rows: a list of dicts (an upstream task's XCom, usually).

    A JSON string of such a list is accepted too: that is what a templated ``"{{ ti.xcom_pull(...) }}"``
    becomes when the DAG does not render native objects.

    :param data: the rows.
    :param argument: the argument name to cite in errors.
    :raises HveConfigError: if ``data`` is not a list of mappings.
    """
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            raise HveConfigError(
                f"Argument {argument!r} is a string, not a list of rows. Pass the upstream task's output "
                f"(data=extract.output, or the TaskFlow call's return value) rather than a Jinja string, or "
                f"set render_template_as_native_obj=True on the DAG."
            ) from None
    if isinstance(data, Mapping) or not isinstance(data, Sequence) or isinstance(data, (bytes, str)):
        raise HveConfigError(f"Argument {argument!r} must be a list of rows (dicts), got {type(data).__name__}.")
    columns: dict[str, None] = {}
    for index, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise HveConfigError(
                f"Argument {argument!r}: row {index} is a {type(row).__name__}; every row must be a dict of "
                f"column -> value."
            )
        for key in row:
            columns.setdefault(str(key), None)
    rows = tuple({str(k): v for k, v in row.items()} for row in data)
    return Table(columns=tuple(columns), rows=rows)


def packaged_template(name: str) -> str:
    """Return the source of a template shipped in ``airflow_provider_hve/templates``."""
    return resources.files("airflow_provider_hve").joinpath("templates").joinpath(name).read_text(encoding="utf-8")


# The elements of HTML (the living standard, and the obsolete ones still found in mail). Anything else after a
# "<" in a body is text that was not escaped, not markup (see escape_unknown_tags).
_ELEMENT_NAMES = """
    a abbr acronym address applet area article aside audio b base basefont bdi bdo bgsound big blink blockquote body
    br button canvas caption center cite code col colgroup data datalist dd del details dfn dialog dir div dl dt em
    embed fieldset figcaption figure font footer form frame frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html i
    iframe image img input ins isindex kbd keygen label legend li link listing main map mark marquee math menu
    menuitem meta meter multicol nav nextid nobr noembed noframes noscript object ol optgroup option output p param
    picture plaintext pre progress q rb rp rt rtc ruby s samp script search section select slot small source spacer
    span strike strong style sub summary sup svg table tbody td template textarea tfoot th thead time title tr track
    tt u ul var video wbr xml xmp
"""
_ELEMENTS = frozenset(_ELEMENT_NAMES.split())
# Left as written: comments (Outlook's conditional ones hold <xml> and <o:...> markup), and the content of these
# elements (their own vocabularies, or not HTML at all).
_SKIPPED = ("script", "style", "svg", "math", "xml")
_TAG_START = re.compile(r"<!--|<(/?)([A-Za-z][^\s/>]*)")
_CLOSING = {name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in _SKIPPED}


def escape_unknown_tags(html: str) -> str:
    """
    Escape what only looks like a tag: a ``<`` before a name that is no HTML element.

    Airflow 2.11's and 3.1's own failure e-mail put the exception text into the HTML unescaped: ``disk <full> &
    broken`` would lose ``<full>`` in every mail client and in the plain-text alternative. Left as written:
    comments, the content of ``script``, ``style``, ``svg``, ``math`` and ``xml``, custom elements (a ``-`` in the
    name) and namespaced ones (Outlook's ``<o:p>``). So ``<built-in function len>`` (a valid custom element name),
    ``<object object at 0x...>`` and ``a<b and c>`` (real elements) still read as markup, as a browser reads them.
    One pass over the text: an element of the list above without its end tag is looked for once.
    """
    pieces: list[str] = []
    position = 0
    unclosed: set[str] = set()
    while (match := _TAG_START.search(html, position)) is not None:
        if match[0] == "<!--":
            end = html.find("-->", match.end())
            end = len(html) if end < 0 else end + 3  # an unclosed comment runs to the end, as in a browser
            pieces.append(html[position:end])
            position = end
            continue
        slash, name = match[1], match[2]
        lowered = name.lower()
        if not slash and lowered in _CLOSING and lowered not in unclosed:
            closing = _CLOSING[lowered].search(html, match.end())
            if closing is not None:
                pieces.append(html[position : closing.end()])
                position = closing.end()
                continue
            unclosed.add(lowered)
        if lowered in _ELEMENTS or "-" in name or ":" in name:
            pieces.append(html[position : match.end()])
        else:
            pieces.append(f"{html[position : match.start()]}&lt;{slash}{name}")
        position = match.end()
    pieces.append(html[position:])
    return "".join(pieces)


def html_to_text(html: str) -> str:
    """
    Derive the plain-text alternative of an HTML body (tables stay readable as aligned columns).

    Uses ``inscriptis``, a maintained HTML-to-text renderer, rather than a regular expression. What only looks
    like a tag (:func:`escape_unknown_tags`) stays in the text.
    """
    from inscriptis import get_text
    from inscriptis.model.config import ParserConfig

    text = get_text(escape_unknown_tags(html), ParserConfig(display_links=True))
    return "\n".join(line.rstrip() for line in text.strip().splitlines()) + "\n"


# What makes a spreadsheet (Excel, LibreOffice, Google Sheets) read a cell as a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A separator inside a cell, then a formula: a spreadsheet whose list separator is ";" (most of Europe) or ","
# splits the cell there and reads the second part as a formula.
_FORMULA_AFTER_SEPARATOR = re.compile(r"[;,\t]\s*[=+\-@]")


def _csv_text(text: str) -> str:
    risky = text.lstrip(" ").startswith(_FORMULA_START) or _FORMULA_AFTER_SEPARATOR.search(text)
    return "'" + text if risky else text


def _csv_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return _csv_text(json.dumps(value, default=str, ensure_ascii=False))
    if value is None or isinstance(value, (bool, int, float, decimal.Decimal)):
        return value  # numbers stay numbers
    return _csv_text(str(value))
