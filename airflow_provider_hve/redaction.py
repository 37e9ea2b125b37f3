"""Secret redaction for what an alert carries: Airflow's secret masker, or nothing (fail closed)."""

from __future__ import annotations

import html
import importlib
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Where Airflow keeps its masker's redact(): the Task SDK (3.x, newest first), then Airflow 2.
_MASKERS = (
    "airflow.sdk.log",
    "airflow.sdk._shared.secrets_masker",
    "airflow.sdk.execution_time.secrets_masker",
    "airflow.utils.log.secrets_masker",
)


def airflow_redact() -> Callable[[Any], Any] | None:
    """Return Airflow's ``redact`` function, or None if no known masker can be imported."""
    for module in _MASKERS:
        try:
            redact = getattr(importlib.import_module(module), "redact", None)
        except ImportError:
            continue
        if callable(redact):
            return redact  # type: ignore[no-any-return]
    return None


def redact_text(text: str, *, what: str) -> str | None:
    """
    Return ``text`` with every secret Airflow knows replaced by ``***``; None if that cannot be done.

    Fails closed: without Airflow's masker the text is withheld (and a warning logged), never sent as is.

    :param what: what the text is, for the warning (``"the exception text"``).
    """
    redact = airflow_redact()
    if redact is None:
        log.warning(
            "Airflow's secret masker could not be imported: %s is left out of the e-mail, because it may hold "
            "a secret.",
            what,
        )
        return None
    return str(redact(text))


# A tag, a comment or a declaration: what is not text in an HTML document (good enough to split, not to parse).
_MARKUP = re.compile(r"(<!--.*?-->|<[^>]*>)", re.DOTALL)
_ATTRIBUTE_VALUE = re.compile(r"""(=\s*)(["'])(.*?)\2""", re.DOTALL)


def redact_html(text: str, *, what: str) -> str | None:
    """
    Return HTML ``text`` with every secret Airflow knows replaced by ``***``, also where it is HTML-escaped.

    Airflow escapes the exception it puts into a failure e-mail (``html.escape``): ``pa'ss&w<rd`` arrives as
    ``pa&#x27;ss&amp;w&lt;rd``, which the masker alone does not recognise. Each text node and quoted attribute
    value is unescaped, masked and escaped again (only when something was masked, so the rest stays as
    written). None if Airflow's masker is unavailable (fail closed, as :func:`redact_text`).

    :param what: what the text is, for the warning (``"the body"``).
    """
    masked = redact_text(text, what=what)
    redact = airflow_redact()
    if masked is None or redact is None:
        return None

    def node(value: str, *, quote: bool) -> str:
        plain = html.unescape(value)
        redacted = str(redact(plain))
        return value if redacted == plain else html.escape(redacted, quote=quote)

    def tag(markup: str) -> str:
        return _ATTRIBUTE_VALUE.sub(lambda m: f"{m[1]}{m[2]}{node(m[3], quote=True)}{m[2]}", markup)

    return "".join(
        tag(part) if index % 2 else node(part, quote=False) for index, part in enumerate(_MARKUP.split(masked))
    )
