"""Secret redaction for what an alert carries: Airflow's secret masker, or nothing (fail closed)."""

from __future__ import annotations

import importlib
import logging
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
