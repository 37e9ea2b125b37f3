"""Build the ``EmailMessage`` and its envelope, validating everything before a connection is opened."""

from __future__ import annotations

import mimetypes
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from airflow_provider_hve.addresses import AddressError, Mailbox, parse_addresses, parse_mailbox
from airflow_provider_hve.exceptions import HveConfigError

MAX_MESSAGE_BYTES = 10 * 1024 * 1024
"""HVE's per-message size limit (the whole MIME message, attachments base64-encoded)."""

# Headers the builder owns: letting a caller set them would bypass validation (or leak Bcc).
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "sender",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "resent-bcc",
    }
)
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_LINE_BREAKS = ("\r", "\n", "\0")

AddressInput = str | Iterable[str] | None


@dataclass(frozen=True)
class OutgoingMessage:
    """A built message and its envelope recipients (To + Cc + Bcc, each once; Bcc only here)."""

    message: EmailMessage
    recipients: tuple[str, ...]


def build_message(
    *,
    sender: str,
    to: AddressInput,
    subject: str,
    html_content: str | None = None,
    text_content: str | None = None,
    cc: AddressInput = None,
    bcc: AddressInput = None,
    reply_to: AddressInput = None,
    files: Iterable[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> OutgoingMessage:
    """
    Validate the arguments and build a message ready for :meth:`HveSmtpSession.send`.

    With both ``html_content`` and ``text_content`` the body is ``multipart/alternative``; ``files`` become
    attachments. ``Bcc`` never appears in the headers, only in the returned envelope.

    :param sender: the From address, optionally with a display name.
    :raises HveConfigError: naming the argument at fault.
    """
    from_box = _one("from_email", sender)
    to_boxes = _many("to", to)
    cc_boxes = _many("cc", cc)
    bcc_boxes = _many("bcc", bcc)
    reply_boxes = _many("reply_to", reply_to)
    if not (to_boxes or cc_boxes or bcc_boxes):
        raise HveConfigError("Argument 'to' is empty: give at least one recipient in 'to', 'cc' or 'bcc'.")
    _single_line("subject", subject)
    if html_content is None and text_content is None:
        raise HveConfigError("Give 'html_content' or 'text_content' (or both); the message has no body.")

    message = EmailMessage()
    message["From"] = from_box.header
    if to_boxes:
        message["To"] = ", ".join(box.header for box in to_boxes)
    if cc_boxes:
        message["Cc"] = ", ".join(box.header for box in cc_boxes)
    if reply_boxes:
        message["Reply-To"] = ", ".join(box.header for box in reply_boxes)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=from_box.addr_spec.rpartition("@")[2])
    for name, value in (headers or {}).items():
        _check_custom_header(name, value)
        message[name] = value

    if text_content is not None:
        message.set_content(text_content)
        if html_content is not None:
            message.add_alternative(html_content, subtype="html")
    else:
        message.set_content(html_content or "", subtype="html")

    for path in files or ():
        _attach(message, path)

    recipients = _unique(box.addr_spec for box in (*to_boxes, *cc_boxes, *bcc_boxes))
    size = len(message.as_bytes())
    if size > MAX_MESSAGE_BYTES:
        raise HveConfigError(
            f"The message is {size / 1048576:.1f} MB; HVE accepts at most {MAX_MESSAGE_BYTES // 1048576} MB "
            f"per message (attachments grow by a third when encoded). Send smaller or fewer 'files'."
        )
    return OutgoingMessage(message=message, recipients=recipients)


def _one(argument: str, value: str) -> Mailbox:
    try:
        return parse_mailbox(value)
    except AddressError as exc:
        raise HveConfigError(f"Argument {argument!r}: {exc}.") from None


def _many(argument: str, value: AddressInput) -> list[Mailbox]:
    try:
        return parse_addresses(value)
    except AddressError as exc:
        raise HveConfigError(f"Argument {argument!r}: {exc}.") from None


def _single_line(argument: str, value: object) -> None:
    if not isinstance(value, str):
        raise HveConfigError(f"Argument {argument!r} must be a string, got {type(value).__name__}.")
    if any(ch in value for ch in _LINE_BREAKS):
        raise HveConfigError(
            f"Argument {argument!r} contains a line break; header values must be one line (a line break "
            f"there could inject headers)."
        )


def _check_custom_header(name: object, value: object) -> None:
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise HveConfigError(
            f"Argument 'headers': {name!r} is not a valid header name (printable ASCII, no ':' or spaces)."
        )
    if name.lower() in RESERVED_HEADERS:
        raise HveConfigError(
            f"Argument 'headers': {name!r} is set by the provider; use the matching argument instead."
        )
    _single_line(f"headers[{name!r}]", value)


def _attach(message: EmailMessage, path: str) -> None:
    if not isinstance(path, str) or not os.path.isfile(path):
        raise HveConfigError(f"Argument 'files': {path!r} is not a readable file on this worker.")
    content_type, encoding = mimetypes.guess_type(path)
    if content_type is None or encoding is not None:
        content_type = "application/octet-stream"
    maintype, subtype = content_type.split("/", 1)
    with open(path, "rb") as handle:
        data = handle.read()
    message.add_attachment(data, maintype=maintype, subtype=subtype, filename=os.path.basename(path))


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    result: list[str] = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return tuple(result)
