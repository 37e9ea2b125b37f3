"""
The envelope, checked and prepared before a byte is written: pure functions, no I/O.

Addresses that could break out of ``MAIL FROM:<...>`` or ``RCPT TO:<...>`` are refused; a message with 8-bit
content declares ``BODY=8BITMIME`` when the server offers it and is re-encoded to 7 bits when it does not
(RFC 6152); line ends become CRLF before anything is counted (``SIZE=``, the BDAT octet count); a message larger
than the server's advertised ``SIZE`` is refused without being sent; envelopes over
:data:`MAX_RECIPIENTS_PER_TRANSACTION` recipients become several transactions of the same bytes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_hve.diagnostics import is_session_wide
from airflow_provider_hve.exceptions import HveConfigError, HveSendError

if TYPE_CHECKING:
    import smtplib

_ENVELOPE_ADDRESS = re.compile(r"[!-;=?-~]+")
# With SMTPUTF8 (RFC 6531) any non-ASCII character may appear too, except controls and white space.
_INTERNATIONAL_CHAR = re.compile(r"[^\x00-\x7f\s\x80-\x9f\u2028\u2029\ufeff]")
_ENHANCED_CODE = re.compile(r"\b5\.(\d{1,3})\.(\d{1,3})\b")
_BARE_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")

MAX_RECIPIENTS_PER_TRANSACTION = 50
"""HVE accepts at most 50 recipients per message; larger envelopes are split into several transactions."""


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


@dataclass
class Delivery:
    """The outcome of one message: each recipient accepted or refused with the server's reply."""

    key: Hashable
    message_id: str
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    whole: tuple[int, str] | None = None
    """The reply that refused the whole transaction (to MAIL FROM, or after the content), if one did: a
    condition of the server or the session (throttling, quota), not of a recipient."""


@dataclass(frozen=True)
class Capabilities:
    """What the server's EHLO reply offers that changes what is written (read once per session)."""

    smtputf8: bool = False
    eight_bit: bool = False
    size: bool = False
    max_size: int = 0
    pipelining: bool = False
    chunking: bool = False

    @classmethod
    def of(cls, smtp: smtplib.SMTP) -> Capabilities:
        """Read the capabilities from an ``smtplib.SMTP`` after its EHLO."""
        value = (smtp.esmtp_features.get("size") or "").strip()
        return cls(
            smtputf8=smtp.has_extn("smtputf8"),
            eight_bit=smtp.has_extn("8bitmime"),
            size=smtp.has_extn("size"),
            max_size=int(value) if value.isascii() and value.isdecimal() else 0,
            pipelining=smtp.has_extn("pipelining"),
            chunking=smtp.has_extn("chunking"),
        )


@dataclass(frozen=True)
class Prepared:
    """A message checked and ready for the wire: its batches of recipients and the bytes they share."""

    delivery: Delivery
    batches: list[Sequence[str]]
    payload: bytes
    """CRLF line ends, ending in CRLF: the BDAT content as it is (DATA dot-stuffs it: :func:`dot_stuffed`)."""
    parameters: str
    """What follows ``MAIL FROM:<sender>``: `` SIZE=``, `` BODY=8BITMIME``, `` SMTPUTF8``."""


def prepare(
    key: Hashable,
    payload: bytes,
    recipients: Sequence[str],
    message_id: str,
    *,
    sender: str,
    server: Capabilities,
    conn_id: str,
) -> Prepared | Delivery:
    """
    Check a message and prepare it for the wire; return a completed :class:`Delivery` when it cannot go (too big).

    :raises HveConfigError: an envelope address or a header the server cannot take (nothing was written).
    :raises HveSendError: no recipients.
    """
    if isinstance(recipients, (str, bytes)):
        raise HveConfigError(
            f"Message {message_id or key!r}: 'recipients' is a single string; give a list of addresses."
        )
    if not recipients:
        raise HveSendError(f"Message {message_id or key!r} has no recipients.")
    # UTF-8 headers first: the refusal then names the header's argument ('to'), not the envelope's.
    utf8_headers = utf8_header(payload)
    if utf8_headers is not None and not server.smtputf8:
        raise refuse_utf8_header(*utf8_headers, conn_id)
    for address in recipients:
        check_envelope_address(address, "recipients", smtputf8=server.smtputf8)
    delivery = Delivery(key=key, message_id=message_id)
    payload, eight_bit = _wire_form(payload, server, utf8=utf8_headers is not None)
    if server.max_size and len(payload) > server.max_size:
        reply = (
            f"5.3.4 Not sent: the message is {len(payload):,} bytes and the server accepts at most "
            f"{server.max_size:,} (the SIZE it advertises)"
        )
        delivery.whole = (552, reply)
        delivery.refused.update({address: (552, reply) for address in recipients})
        return delivery
    parameters = (f" SIZE={len(payload)}" if server.size else "") + (
        " BODY=8BITMIME" if eight_bit and server.eight_bit else ""
    )
    if utf8_headers is not None or not (sender.isascii() and all(a.isascii() for a in recipients)):
        parameters += " SMTPUTF8"  # an internationalised address or UTF-8 headers (checked: the server offers it)
    return Prepared(delivery, batches(recipients), payload, parameters)


def _wire_form(payload: bytes, server: Capabilities, *, utf8: bool) -> tuple[bytes, bool]:
    """The payload as it goes on the wire (CRLF line ends, 7-bit where the server takes no 8-bit content) and
    whether it is 8-bit. ``utf8``: it has UTF-8 headers (checked: the server offers SMTPUTF8)."""
    eight_bit = not payload.isascii()
    if eight_bit and not server.eight_bit and not utf8:
        # (UTF-8 headers go as they are: a server that offers SMTPUTF8 takes 8-bit content, RFC 6531 3.1.)
        payload, eight_bit = seven_bit(payload), False
    # CRLF line ends before anything is counted: SIZE= and the BDAT octet count are of what is sent.
    payload = _BARE_LINE_ENDS.sub(b"\r\n", payload)
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return payload, eight_bit


def batches(recipients: Sequence[str]) -> list[Sequence[str]]:
    """Split an envelope into transactions of at most :data:`MAX_RECIPIENTS_PER_TRANSACTION` recipients."""
    size = MAX_RECIPIENTS_PER_TRANSACTION
    return [recipients[i : i + size] for i in range(0, len(recipients), size)]


def refuses_the_message(code: int, reply: str) -> bool:
    """
    Tell whether a ``5xx`` reply to ``MAIL FROM`` refuses this message rather than the sender or the session.

    ``552`` (RFC 1870: too big for the advertised ``SIZE``), and the enhanced codes ``5.3.4`` (too big for the
    system), ``5.2.3`` (too long for an administrative limit) and ``5.6.x`` (the content) concern the message:
    the next message may go.

    :param code: the reply code.
    :param reply: the reply text after the code.
    """
    if not 500 <= code < 600 or is_session_wide(code, reply):
        return False
    match = _ENHANCED_CODE.search(reply)
    if match is None:
        return code == 552
    return (match.group(1), match.group(2)) in {("3", "4"), ("2", "3")} or match.group(1) == "6"


def seven_bit(payload: bytes) -> bytes:
    """
    Re-encode a message with 8-bit content for a server without 8BITMIME (RFC 6152).

    The stdlib generator re-encodes each 8-bit text part with its charset's transfer encoding (base64 for
    UTF-8); headers are already 7-bit.
    """
    import io
    from email.generator import BytesGenerator
    from email.parser import BytesParser

    from airflow_provider_hve.message import WIRE_POLICY

    message = BytesParser(policy=WIRE_POLICY).parsebytes(payload)
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=WIRE_POLICY.clone(cte_type="7bit")).flatten(message)
    return buffer.getvalue()


def dot_stuffed(payload: bytes) -> bytes:
    """Return the DATA content of a prepared payload (CRLF line ends, ending in CRLF), ending in ``.``."""
    return _LEADING_DOT.sub(b"..", payload) + b".\r\n"
