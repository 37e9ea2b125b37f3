"""
Helpers both SMTP layers use (:mod:`~airflow_provider_hve.smtp` and :mod:`~airflow_provider_hve.pipeline`).

The layers import in one direction only: ``smtp`` (the session) uses ``pipeline`` (transactions), and both use
this module, which imports neither.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING

from airflow_provider_hve.exceptions import HveConfigError

if TYPE_CHECKING:
    import smtplib

_ENVELOPE_ADDRESS = re.compile(r"[!-;=?-~]+")


def check_envelope_address(address: object, argument: str) -> None:
    """
    Refuse an envelope address that is not printable ASCII without spaces, ``<`` or ``>``.

    Such an address would end its ``MAIL FROM:<...>``/``RCPT TO:<...>`` line early (CR, LF), add commands the
    reply count does not expect, or need SMTPUTF8, which HVE does not offer.

    :param address: the address as it would be written in the envelope.
    :param argument: the argument it came from, for the error message.
    :raises HveConfigError: naming the argument and the offending character.
    """
    if not isinstance(address, str):
        raise HveConfigError(f"Argument {argument!r}: an envelope address is a {type(address).__name__}, not a string.")
    if _ENVELOPE_ADDRESS.fullmatch(address) and "@" in address:
        return
    bad = next((char for char in address if not _ENVELOPE_ADDRESS.fullmatch(char)), None)
    what = f"contains {bad!r}" if bad is not None else "has no '@'"
    raise HveConfigError(
        f"Argument {argument!r}: the envelope address {address!r} {what}; envelope addresses must be plain ASCII "
        f"addresses (user@domain) without spaces, '<', '>' or line breaks. Nothing was sent."
    )


def close_quietly(smtp: smtplib.SMTP) -> None:
    """Close the socket without QUIT, ignoring errors (best effort on a broken or abandoned connection)."""
    with contextlib.suppress(Exception):
        smtp.close()


def quit_quietly(smtp: smtplib.SMTP) -> None:
    """Say QUIT and close, or just close if that fails (never raises)."""
    try:
        smtp.quit()
    except Exception:
        close_quietly(smtp)
