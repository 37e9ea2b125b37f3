"""
Helpers both SMTP layers use (:mod:`~airflow_provider_hve.smtp` and :mod:`~airflow_provider_hve.pipeline`).

The layers import in one direction only: ``smtp`` (the session) uses ``pipeline`` (transactions), and both use
this module, which imports neither.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from typing import TYPE_CHECKING

from airflow_provider_hve.exceptions import HveConfigError

if TYPE_CHECKING:
    import smtplib

_ENVELOPE_ADDRESS = re.compile(r"[!-;=?-~]+")
# With SMTPUTF8 (RFC 6531) any non-ASCII character may appear too, except controls and white space.
_INTERNATIONAL_CHAR = re.compile(r"[^\x00-\x7f\s\x80-\x9f\u2028\u2029\ufeff]")


def check_envelope_address(address: object, argument: str, *, smtputf8: bool = False) -> None:
    """
    Refuse an envelope address that is not printable ASCII without spaces, ``<`` or ``>``.

    Such an address would end its ``MAIL FROM:<...>``/``RCPT TO:<...>`` line early (CR, LF) or add commands the
    reply count does not expect. Non-ASCII characters (an internationalised address) are allowed only when the
    server offers SMTPUTF8 (RFC 6531): the caller then sends ``SMTPUTF8`` on ``MAIL FROM``.

    :param address: the address as it would be written in the envelope.
    :param argument: the argument it came from, for the error message.
    :param smtputf8: the server offers SMTPUTF8.
    :raises HveConfigError: naming the argument and the offending character.
    """
    if not isinstance(address, str):
        raise HveConfigError(f"Argument {argument!r}: an envelope address is a {type(address).__name__}, not a string.")
    # Invisible and bidirectional format characters (Unicode category Cf: U+200B, U+202E, U+2066..U+2069,
    # U+FEFF...) make an address read as another one; no mailbox needs them, SMTPUTF8 or not.
    hidden = next((char for char in address if unicodedata.category(char) == "Cf"), None)
    if hidden is not None:
        name = unicodedata.name(hidden, "a format character")
        raise HveConfigError(
            f"Argument {argument!r}: the envelope address {address!r} contains the invisible format character "
            f"U+{ord(hidden):04X} ({name}), which can make an address display as another one. Remove it (it often "
            f"comes with text copied from a web page or a document). Nothing was sent."
        )

    def allowed(char: str) -> bool:
        return bool(_ENVELOPE_ADDRESS.fullmatch(char) or (smtputf8 and _INTERNATIONAL_CHAR.fullmatch(char)))

    bad = next((char for char in address if not allowed(char)), None)
    if bad is None and "@" in address:
        return
    if bad is not None and not smtputf8 and all(allowed(char) or not char.isascii() for char in address):
        raise HveConfigError(
            f"Argument {argument!r}: the envelope address {address!r} has non-ASCII characters, and the server does "
            f"not offer SMTPUTF8 (RFC 6531), so it cannot carry internationalised addresses. Use the address's ASCII "
            f"form (an IDN domain as its xn-- A-label) or a server that offers SMTPUTF8. Nothing was sent."
        )
    what = f"contains {bad!r}" if bad is not None else "has no '@'"
    raise HveConfigError(
        f"Argument {argument!r}: the envelope address {address!r} {what}; envelope addresses must be addresses "
        f"(user@domain) without spaces, '<', '>', control characters or line breaks. Nothing was sent."
    )


_HEADER_END = re.compile(rb"\r?\n\r?\n")
# The argument of HveHook.send_email / build_message each header comes from, to name it in a refusal.
_HEADER_ARGUMENT = {b"from": "from_email", b"to": "to", b"cc": "cc", b"reply-to": "reply_to", b"subject": "subject"}
_ADDRESS_ARGUMENTS = frozenset({"from_email", "to", "cc", "reply_to"})


def utf8_header(payload: bytes) -> tuple[str, str] | None:
    """
    Return ``(argument, header line)`` for the first header of ``payload`` holding raw UTF-8 (RFC 6532), or ``None``.

    Such a message (an address with non-ASCII before the ``@`` in From, To, Cc or Reply-To) needs ``SMTPUTF8`` on
    ``MAIL FROM`` (RFC 6531 3.4), like an internationalised envelope address.
    """
    end = _HEADER_END.search(payload)
    headers = payload[: end.start() if end else len(payload)]
    if headers.isascii():
        return None
    name = b""
    for line in headers.splitlines():
        if line and not line[:1].isspace():
            name = line.split(b":", 1)[0].strip().lower()
        if not line.isascii():
            text = line.decode("utf-8", "replace").strip()
            shown = text if len(text) <= 80 else text[:77] + "..."
            return _HEADER_ARGUMENT.get(name, f"headers[{name.decode('ascii', 'replace')!r}]"), shown
    return None  # pragma: no cover - a non-ASCII block has a non-ASCII line


def refuse_utf8_header(argument: str, line: str, conn_id: str) -> HveConfigError:
    """The refusal of a message with UTF-8 headers on a session whose server does not offer SMTPUTF8."""
    if argument in _ADDRESS_ARGUMENTS:
        what = "holds an address with non-ASCII characters before the '@', which only UTF-8 headers can carry"
        fix = "Use an address whose part before the '@' is ASCII"
    else:  # a message built by the caller (send_message) with raw UTF-8 in another header
        what = "holds raw UTF-8, which only a server offering SMTPUTF8 may receive"
        fix = "Encode the header (email.policy.SMTP writes RFC 2047 encoded words)"
    return HveConfigError(
        f"Argument {argument!r}: the message's header {line!r} {what} (RFC 6532), and the server of connection "
        f"{conn_id!r} does not offer SMTPUTF8 (RFC 6531) in its EHLO reply. Nothing was sent. {fix}, or use a "
        f"server that offers SMTPUTF8 (HVE's Exchange Online frontends do)."
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
