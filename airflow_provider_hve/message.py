"""Build the ``EmailMessage`` and its envelope, validating everything before a connection is opened."""

from __future__ import annotations

import contextlib
import email.policy
import functools
import mimetypes
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, BinaryIO, TypedDict, cast

from airflow_provider_hve.addresses import (
    HEADER_REGISTRY,
    LINE_BREAKS,
    AddressError,
    Mailbox,
    TooManyAddresses,
    parse_addresses,
    parse_mailbox,
)
from airflow_provider_hve.exceptions import HveConfigError

POLICY = email.policy.default.clone(header_factory=HEADER_REGISTRY)
"""The modern e-mail policy, with a header registry that does not rebuild classes per header (2x faster)."""
WIRE_POLICY = POLICY.clone(linesep="\r\n")
UTF8_POLICY = POLICY.clone(utf8=True)
"""For a message whose From, To, Cc or Reply-To names an address with non-ASCII before the ``@``: its headers are
UTF-8 (RFC 6532), sent only with ``SMTPUTF8`` on ``MAIL FROM`` (the pipeline checks the server offers it)."""
UTF8_WIRE_POLICY = UTF8_POLICY.clone(linesep="\r\n")

MAX_MESSAGE_BYTES = 10 * 1024 * 1024
"""HVE's per-message size limit (the whole MIME message, attachments base64-encoded)."""
MAX_LINE_OCTETS = 998
"""RFC 5322 2.1.1: a line of a message is at most 998 octets, CRLF excluded."""
DEFAULT_MAX_RECIPIENTS = 3000
"""Recipients (To + Cc + Bcc) one call may name; ``[hve] max_recipients_per_message`` in Airflow's configuration
(``AIRFLOW__HVE__MAX_RECIPIENTS_PER_MESSAGE``) or the ``max_recipients`` argument changes it."""

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
        "received",
        "return-path",
        "dkim-signature",
        "authentication-results",
        # Verdicts a receiver trusts: SPF's, and a read receipt that would mail the reader's opening elsewhere.
        "received-spf",
        "disposition-notification-to",
        "return-receipt-to",
        "x-confirm-reading-to",
        "delivered-to",
        "x-original-authentication-results",
        "x-ms-exchange-externaloriginalinternetsender",
        "x-ms-exchange-senderadcheck",
    }
)
# Whole families the provider, the MIME structure or the receiving servers own: trace and signature headers a
# receiver trusts, the MIME headers of the body, Exchange's organisation-internal headers.
RESERVED_PREFIXES = (
    "content-",
    "resent-",
    "arc-",
    "x-ms-exchange-organization-",
    # Exchange Online Protection's cross-tenant, Forefront and anti-spam verdicts: Outlook trusts them.
    "x-ms-exchange-crosstenant-",
    "x-forefront-",
    "x-microsoft-antispam",
    "x-ms-exchange-antispam-",
    "x-ms-exchange-transport-",
    "x-spam-",
)
_FOLD_WIDTH = 78 - len("Reply-To: ")  # the policy's line length, less the longest address header name
# RFC 5322 ftext: printable ASCII except ':'. Used with fullmatch: "^...$" with match() let a final "\n" through.
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_LINE_BREAKS = LINE_BREAKS | {"\0"}
# RFC 5322 msg-id in its common dot-atom form: <left@right>, printable ASCII, no spaces, brackets or a second '@'.
_MSG_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>")
LONG_LINE = re.compile(rb"[^\r\n]{%d}" % (MAX_LINE_OCTETS + 1))
"""A line longer than RFC 5322 allows (998 octets), CR and LF aside."""
# Where a header of the built message came from, to name the argument when one of its lines is too long.
_HEADER_ARGUMENT = {
    "from": "from_email",
    "to": "to",
    "cc": "cc",
    "reply-to": "reply_to",
    "subject": "subject",
    "content-type": "files' or 'attachments",
    "content-disposition": "files' or 'attachments",
}

AddressInput = str | Mailbox | Iterable[str | Mailbox] | None


@dataclass(frozen=True)
class Attachment:
    """An attachment made in memory (a CSV of report rows, say)."""

    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


class MessageOptions(TypedDict, total=False):
    """
    The optional parts of one message, shared by :meth:`HveHook.build_message` and :meth:`HveHook.send_email`.

    :param text_content: the plain-text alternative; derived from the HTML when not given.
    :param cc: Cc recipients, as a list or a comma/semicolon separated string.
    :param bcc: Bcc recipients: in the envelope only, never in the headers.
    :param reply_to: Reply-To addresses.
    :param from_email: the From header (may carry a display name); defaults to the connection's ``from_email``
        extra, then to the HVE account. HVE sends only as the HVE account.
    :param files: paths of files to attach.
    :param headers: extra headers (``X-...``); structural and trace headers are refused.
    :param images: inline images, content id -> path, shown in the HTML with ``cid:``.
    :param attachments: attachments built in memory.
    :param message_id: the Message-ID, ``<left@domain>``; default: a new unique one. A stable one (an alert's, from
        :func:`airflow_provider_hve.alerts.ids.alert_message_id`) lets a resend be the same message and follow-ups
        thread under it.
    """

    text_content: str | None
    cc: AddressInput
    bcc: AddressInput
    reply_to: AddressInput
    from_email: str | None
    files: Iterable[str] | None
    headers: Mapping[str, str] | None
    images: Mapping[str, str] | None
    attachments: Iterable[Attachment]
    message_id: str | None


@dataclass(frozen=True)
class OutgoingMessage:
    """A built message and its envelope recipients (To + Cc + Bcc, each once; Bcc only here)."""

    message: EmailMessage
    recipients: tuple[str, ...]
    sender: str
    """The From address (without display name)."""
    payload: bytes = b""
    """The message as SMTP carries it (CRLF line ends), serialised once."""

    @property
    def message_id(self) -> str:
        """Return the Message-ID header."""
        return str(self.message["Message-ID"])


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
    images: Mapping[str, str] | None = None,
    attachments: Iterable[Attachment] = (),
    derive_text: bool = True,
    max_recipients: int | None = None,
    message_id: str | None = None,
) -> OutgoingMessage:
    """
    Validate the arguments and build a message ready for :meth:`HveSmtpSession.send`.

    An HTML body is sent as ``multipart/alternative`` with a plain-text part: ``text_content`` if given,
    else derived from the HTML (``derive_text``). ``images`` are inline images the HTML shows with
    ``<img src="cid:NAME">``; ``files`` and ``attachments`` are attached. ``Bcc`` never appears in the
    headers, only in the returned envelope.

    :param sender: the From address, optionally with a display name.
    :param images: content id -> image file path.
    :param attachments: attachments built in memory.
    :param derive_text: derive a plain-text part from HTML when ``text_content`` is not given.
    :param max_recipients: most recipients (To + Cc + Bcc) allowed; default :data:`DEFAULT_MAX_RECIPIENTS` or
        Airflow's ``[hve] max_recipients_per_message``.
    :raises HveConfigError: naming the argument at fault.
    """
    limit = configured_max_recipients() if max_recipients is None else max_recipients
    from_box = _one("from_email", sender)
    to_boxes = _many("to", to, limit, limit)
    cc_boxes = _many("cc", cc, limit - len(to_boxes), limit)
    bcc_boxes = _many("bcc", bcc, limit - len(to_boxes) - len(cc_boxes), limit)
    reply_boxes = _many("reply_to", reply_to, limit, limit)
    if not (to_boxes or cc_boxes or bcc_boxes):
        raise HveConfigError("Argument 'to' is empty: give at least one recipient in 'to', 'cc' or 'bcc'.")
    check_single_line("subject", subject)
    if html_content is None and text_content is None:
        raise HveConfigError("Give 'html_content' or 'text_content' (or both); the message has no body.")
    for argument, body in (("html_content", html_content), ("text_content", text_content)):
        if body is not None:
            _text(argument, body)
    if headers is not None and not isinstance(headers, Mapping):
        raise HveConfigError(
            f"Argument 'headers' must be a dict of header name -> value, got {type(headers).__name__}; write "
            f"headers={{'X-Run-Id': '42'}}."
        )
    attachments = list(attachments)
    for attachment in attachments:
        check_single_line("attachments filename", attachment.filename)
        check_single_line("attachments content_type", attachment.content_type)
    # Opened, checked on the open descriptor and read here, before anything is built (see _load_files).
    file_data, image_data = _load_files(files, images, attachments)

    # An address with non-ASCII before the '@' cannot be written in a 7-bit header (an encoded word is not allowed
    # there): such a message gets UTF-8 headers (RFC 6532), and the session sends it only with SMTPUTF8.
    utf8 = any(box.smtputf8 for box in (from_box, *to_boxes, *cc_boxes, *reply_boxes))
    message = EmailMessage(policy=UTF8_POLICY if utf8 else POLICY)
    message["From"] = _parsed_header("From", from_box.header)
    # Address lists are folded one mailbox at a time and stored as they are: handing the email package the
    # whole list makes it parse (and fold) it in time quadratic in its length.
    if to_boxes:
        message.set_raw("To", address_list_header(tuple(to_boxes)))
    if cc_boxes:
        message.set_raw("Cc", address_list_header(tuple(cc_boxes)))
    if reply_boxes:
        message.set_raw("Reply-To", address_list_header(tuple(reply_boxes)))
    message["Subject"] = subject
    message["Date"] = _parsed_header("Date", formatdate(localtime=True))
    if message_id is not None and not _MSG_ID.fullmatch(str(message_id)):
        raise HveConfigError(
            f"Argument 'message_id': {_short(message_id)} is not a Message-ID; write <unique-part@domain>."
        )
    message["Message-ID"] = message_id or make_msgid(domain=from_box.addr_spec.rpartition("@")[2])
    for name, value in (headers or {}).items():
        _check_custom_header(name, value)
        message[name] = value

    inline = _inline_images(images, html_content, image_data)
    if html_content is not None and text_content is None and derive_text:
        from airflow_provider_hve.reports import html_to_text

        text_content = html_to_text(html_content)
    if text_content is not None:
        message.set_content(text_content)
        if html_content is not None:
            message.add_alternative(html_content, subtype="html")
    else:
        message.set_content(html_content or "", subtype="html")
    if inline:
        html_part = message if text_content is None else cast(EmailMessage, cast(list, message.get_payload())[-1])
        for cid, (data, maintype, subtype, filename) in inline.items():
            html_part.add_related(data, maintype=maintype, subtype=subtype, cid=f"<{cid}>", filename=filename)

    for path, data in file_data:
        maintype, subtype = _content_type(path)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=os.path.basename(path))
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        # In-memory text (the report CSV) is UTF-8; say so, or readers assume ASCII.
        params = {"charset": "utf-8"} if maintype == "text" else None
        message.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename, params=params
        )

    recipients = _unique(box.addr_spec for box in (*to_boxes, *cc_boxes, *bcc_boxes))
    # Measured as it goes on the wire: CRLF line ends, attachments base64-encoded.
    payload = wire_bytes(message)
    size = len(payload)
    if size > MAX_MESSAGE_BYTES:
        raise HveConfigError(
            f"The message is {size / 1048576:.1f} MB; HVE accepts at most {MAX_MESSAGE_BYTES // 1048576} MB "
            f"per message (attachments grow by a third when encoded). Send smaller or fewer 'files'."
        )
    check_line_lengths(payload)
    return OutgoingMessage(message=message, recipients=recipients, sender=from_box.addr_spec, payload=payload)


@functools.lru_cache(maxsize=256)
def _parsed_header(name: str, value: str) -> Any:
    # Header objects are immutable: a bulk send reuses the parsed From, Cc, Reply-To and Date (per
    # second) instead of parsing the same text for every message.
    return POLICY.header_factory(name, value)


def wire_bytes(message: EmailMessage) -> bytes:
    """Serialise ``message`` as SMTP carries it (CRLF line endings)."""
    policy: email.policy.Policy
    if message.policy is POLICY:
        policy = WIRE_POLICY
    elif message.policy is UTF8_POLICY:
        policy = UTF8_WIRE_POLICY
    else:
        policy = message.policy.clone(linesep="\r\n")
    return message.as_bytes(policy=policy)


def _one(argument: str, value: str) -> Mailbox:
    try:
        return parse_mailbox(value, smtputf8=True)
    except AddressError as exc:
        raise HveConfigError(f"Argument {argument!r}: {exc}.") from None


def _many(argument: str, value: AddressInput, remaining: int, limit: int) -> list[Mailbox]:
    try:
        return parse_addresses(value, limit=max(remaining, 0), smtputf8=True)
    except TooManyAddresses:
        raise HveConfigError(
            f"Argument {argument!r}: this message would have more than {limit} recipients "
            f"(To + Cc + Bcc), the limit of one send. To write to many people, use HveMailMergeOperator (one "
            f"message per recipient, sessions reused, progress kept across retries); to raise the limit, set "
            f"[hve] max_recipients_per_message."
            if argument != "reply_to"
            else f"Argument 'reply_to': more than {limit} addresses; give a few."
        ) from None
    except AddressError as exc:
        raise HveConfigError(f"Argument {argument!r}: {exc}.") from None


def configured_max_recipients() -> int:
    """Return ``[hve] max_recipients_per_message`` from Airflow's configuration, or :data:`DEFAULT_MAX_RECIPIENTS`."""
    try:
        from airflow.configuration import conf
    except ImportError:  # pragma: no cover - used without Airflow
        return DEFAULT_MAX_RECIPIENTS
    try:
        value = conf.getint("hve", "max_recipients_per_message", fallback=DEFAULT_MAX_RECIPIENTS)
    except Exception as exc:  # AirflowConfigException: not an integer
        raise HveConfigError(f"[hve] max_recipients_per_message must be a whole number: {exc}") from None
    if value < 1:
        raise HveConfigError(f"[hve] max_recipients_per_message is {value}; use 1 or more.")
    return value


@functools.lru_cache(maxsize=256)
def address_list_header(mailboxes: tuple[Mailbox, ...]) -> str:
    """
    Fold an address header's value, one mailbox at a time, into lines of at most 78 characters.

    Each mailbox is encoded (RFC 2047 for non-ASCII display names) by the email package on its own, so the
    work is linear in the number of mailboxes; the result is stored with ``set_raw`` and not parsed again. A
    mailbox with non-ASCII before the ``@`` is written in UTF-8 (RFC 6532), display name included.
    """
    lines: list[str] = []
    current = ""
    for box in mailboxes:
        piece = _folded_mailbox(box.header, box.smtputf8)
        if current and "\n" not in piece and len(current) + 2 + len(piece) <= _FOLD_WIDTH:
            current = f"{current}, {piece}"
            continue
        if current:
            lines.append(current + ",")
        current = piece
    lines.append(current)
    return "\n ".join(lines)


@functools.lru_cache(maxsize=4096)
def _folded_mailbox(header: str, utf8: bool = False) -> str:
    folded = HEADER_REGISTRY("To", header).fold(policy=UTF8_POLICY if utf8 else POLICY)
    return folded[len("To: ") :].rstrip("\n")


def _text(argument: str, value: object) -> str:
    """Refuse what is not a string, or a string UTF-8 cannot encode (a lone surrogate, from a bad decode)."""
    if not isinstance(value, str):
        raise HveConfigError(f"Argument {argument!r} must be a string, got {type(value).__name__}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HveConfigError(
            f"Argument {argument!r} holds {value[exc.start]!r} at position {exc.start}, a lone UTF-16 surrogate that "
            f"no e-mail can carry; it usually comes from bytes decoded with errors='surrogateescape'. Decode the "
            f"text with its real encoding (or errors='replace')."
        ) from None
    return value


def check_single_line(argument: str, value: object) -> None:
    """Refuse a value with a line break (it would end its header early), naming the argument it came from."""
    text = _text(argument, value)
    found = next((ch for ch in text if ch in _LINE_BREAKS), None)
    if found is not None:
        raise HveConfigError(
            f"Argument {argument!r} contains a line break ({found!r}); header values must be one line (a line "
            f"break there could inject headers)."
        )


def _check_custom_header(name: object, value: object) -> None:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise HveConfigError(
            f"Argument 'headers': {_short(name)} is not a valid header name (printable ASCII, no ':' or spaces)."
        )
    if len(name) + 2 > MAX_LINE_OCTETS:
        raise HveConfigError(
            f"Argument 'headers': a header name of {len(name)} characters cannot fit a line of {MAX_LINE_OCTETS} "
            f"octets (RFC 5322 2.1.1); use a short X- name."
        )
    lowered = name.lower()
    if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIXES):
        raise HveConfigError(
            f"Argument 'headers': {name!r} is set by the provider, the MIME structure or the receiving servers; "
            f"use the matching argument, or an X- header of your own."
        )
    check_single_line(f"headers[{name!r}]", value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _encoded_size(size: int) -> int:
    """Bytes ``size`` bytes take base64-encoded in 76-character lines with CRLF."""
    encoded = (size + 2) // 3 * 4
    return encoded + (encoded + 75) // 76 * 2


def _check_encoded_size(files: list[_OpenFile], attachments: list[Attachment]) -> None:
    """Refuse attachments too big for HVE from the sizes of their open files, before reading a byte of them."""
    sizes: list[tuple[int, str, str]] = [
        (_encoded_size(opened.size), opened.argument, os.path.basename(opened.path)) for opened in files
    ]
    for attachment in attachments:
        sizes.append((_encoded_size(len(attachment.data)), "attachments", attachment.filename))
    total = sum(size for size, _, _ in sizes)
    if total > MAX_MESSAGE_BYTES:
        biggest, where, name = max(sizes)
        raise HveConfigError(
            f"Argument {where!r}: the attachments come to {total / 1048576:.1f} MB once encoded (base64 adds a "
            f"third); HVE accepts at most {MAX_MESSAGE_BYTES // 1048576} MB per message. The largest is {name!r} "
            f"({biggest / 1048576:.1f} MB encoded). Nothing was read or sent: attach less, or share a link instead."
        )


def check_line_lengths(payload: bytes) -> None:
    """Refuse a message with a line over 998 octets (RFC 5322 2.1.1), naming the argument it came from."""
    match = LONG_LINE.search(payload)
    if match is None:
        return
    header = b""
    for line in payload[: match.start()].split(b"\r\n")[::-1]:
        if line and not line[:1].isspace():
            header = line.split(b":", 1)[0]
            break
    name = header.decode("ascii", errors="replace").lower()
    argument = _HEADER_ARGUMENT.get(name, f"headers[{name!r}]" if name else "html_content' or 'text_content")
    raise HveConfigError(
        f"Argument {argument!r} makes a header line longer than {MAX_LINE_OCTETS} octets, which RFC 5322 (2.1.1) "
        f"forbids and servers refuse or cut. Shorten it (a display name or header value without spaces cannot be "
        f"folded)."
    )


def attachments_from_files(files: Iterable[str] | str | None, argument: str = "files") -> list[Attachment]:
    """Read attachment files once (a mail merge attaches the same files to every message), sizes checked first."""
    file_data, _ = _load_files(files, None, [], argument)
    return [Attachment(os.path.basename(path), data, "/".join(_content_type(path))) for path, data in file_data]


@dataclass(frozen=True)
class _OpenFile:
    """An attachment's file, opened and checked on its descriptor: what is read is what was checked."""

    path: str
    argument: str
    handle: BinaryIO
    size: int


def _load_files(
    files: Iterable[str] | str | None,
    images: Mapping[str, str] | None,
    attachments: list[Attachment],
    argument: str = "files",
) -> tuple[list[tuple[str, bytes]], dict[Any, tuple[str, bytes]]]:
    """
    Open every file and image, check each open descriptor, check the total size, then read them.

    Everything about a file is learnt from its open descriptor (``fstat``), never from its path again: a path
    swapped for a symlink to ``/proc/self/environ`` between a check and the read cannot pass the check and
    be read. Returns ``(path, data)`` per file, and ``cid -> (path, data)`` for the images.
    """
    paths = _listed(argument, files)
    if images is not None and not isinstance(images, Mapping):
        raise HveConfigError(
            f"Argument 'images' must be a mapping of content id to file path (cid -> path), got "
            f"{type(images).__name__}."
        )
    image_paths = dict(images or {})
    if not paths and not image_paths:  # no file to open: not even the mount table is read
        _check_encoded_size([], attachments)
        return [], {}
    opened: list[_OpenFile] = []
    image_files: dict[Any, _OpenFile] = {}
    try:
        kernel = _kernel_file_systems()
        for path in paths:
            opened.append(_open_regular(argument, path, kernel))
        for cid, path in image_paths.items():
            image_files[cid] = _open_regular("images", path, kernel)
        _check_encoded_size([*opened, *image_files.values()], attachments)
        return (
            [(item.path, _read_opened(item)) for item in opened],
            {cid: (item.path, _read_opened(item)) for cid, item in image_files.items()},
        )
    finally:
        for item in (*opened, *image_files.values()):
            item.handle.close()


def _listed(argument: str, files: Iterable[str] | str | None) -> list[Any]:
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [files]
    if not isinstance(files, Iterable):
        raise HveConfigError(f"Argument {argument!r} must be a list of file paths, got {type(files).__name__}.")
    return list(files)


def _open_regular(argument: str, path: object, kernel: Mapping[int, str]) -> _OpenFile:
    """Open ``path`` for reading and refuse it unless the open file is a regular file the kernel does not make up."""
    if not isinstance(path, (str, os.PathLike)):
        raise HveConfigError(f"Argument {argument!r}: {path!r} is not a readable file on this worker.")
    name = os.fspath(path)
    if not isinstance(name, str):
        raise HveConfigError(f"Argument {argument!r}: {path!r} is not a readable file on this worker.")
    # The file name becomes the attachment's name in a MIME header.
    check_single_line(f"{argument} file name", os.path.basename(name))
    not_regular = HveConfigError(
        f"Argument {argument!r}: {path!r} is not a regular file (a directory, a device, a pipe or a "
        f"socket). Attach a regular file: copy what you need into one first."
    )
    try:
        # Refused before it is opened: opening a device can act (a tape rewinds, a serial line resets its board, a
        # watchdog arms). The open file is checked again below, so a path swapped in between gains nothing.
        before = os.stat(name)
    except OSError:
        raise HveConfigError(f"Argument {argument!r}: {path!r} is not a readable file on this worker.") from None
    if not stat.S_ISREG(before.st_mode):
        raise not_regular
    try:
        # O_NONBLOCK: a FIFO put in the file's place opens at once (and is refused below) instead of waiting for a
        # writer; O_NOCTTY: a terminal never becomes the worker's. Neither changes how a regular file reads.
        handle = open(name, "rb", opener=_opener)  # noqa: SIM115 - closed by _load_files
    except OSError:
        raise HveConfigError(f"Argument {argument!r}: {path!r} is not a readable file on this worker.") from None
    try:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise not_regular
        file_system = kernel.get(info.st_dev)
        if file_system is not None:
            # /proc and /sys report a size of 0 (or 4096) whatever they hold: the size check cannot see them, and
            # they hold the worker's environment (secrets), not a document. Known by the file system the open
            # file is on, not by its path: a bind mount or a symlink elsewhere is the same file system.
            raise HveConfigError(
                f"Argument {argument!r}: {path!r} is not a regular file (it is on {file_system}, a file the kernel "
                f"makes up as it is read, whose size is unknown). Attach a regular file: copy what you need into "
                f"one first."
            )
        if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            raise HveConfigError(
                f"Argument {argument!r}: {path!r} was replaced by another file while it was being opened. Attach a "
                f"file that is not being moved or relinked."
            )
    except BaseException:
        handle.close()
        raise
    return _OpenFile(name, argument, handle, info.st_size)


def _opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))


# File systems whose files the kernel makes up as they are read (sizes 0 or 4096 whatever they hold). Not tmpfs:
# /dev/shm holds ordinary files.
_KERNEL_FILE_SYSTEMS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "cgroup",
        "cgroup2",
        "bpf",
        "pstore",
        "efivarfs",
        "binfmt_misc",
        "fusectl",
    }
)


def _kernel_file_systems() -> dict[int, str]:
    """
    Return ``st_dev -> "proc (/proc)"`` for every mounted kernel file system (``/proc/self/mountinfo``).

    Where that cannot be read, the devices of ``/proc`` and ``/sys`` themselves.
    """
    found: dict[int, str] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
            for line in mountinfo:
                fields, _, rest = line.partition(" - ")
                parts, fs_type = fields.split(), rest.split(" ", 1)[0]
                if fs_type in _KERNEL_FILE_SYSTEMS and len(parts) >= 5:
                    major, _, minor = parts[2].partition(":")
                    device = os.makedev(int(major), int(minor))
                    found.setdefault(device, f"{fs_type} ({parts[4]})")
    except (OSError, ValueError):
        pass
    for mount, fs_type in (("/proc", "proc"), ("/sys", "sysfs")):
        with contextlib.suppress(OSError):
            found.setdefault(os.stat(mount).st_dev, f"{fs_type} ({mount})")
    return found


def _read_opened(opened: _OpenFile) -> bytes:
    """Read an open file whose size was checked, refusing one that holds more than its size said."""
    data = opened.handle.read(max(opened.size, 0) + 1)
    if len(data) > opened.size:
        raise HveConfigError(
            f"Argument {opened.argument!r}: {os.path.basename(opened.path)!r} holds more than the {opened.size} "
            f"bytes its size says (it is growing, or not a regular file); attach a regular file that is no longer "
            f"being written."
        )
    return data


def _content_type(path: str) -> tuple[str, str]:
    content_type, encoding = mimetypes.guess_type(path)
    if content_type is None or encoding is not None:
        content_type = "application/octet-stream"
    maintype, subtype = content_type.split("/", 1)
    return maintype, subtype


_CID_REFERENCE = re.compile(r"""cid:([^"'\s>)]+)""", re.IGNORECASE)


def _inline_images(
    images: Mapping[str, str] | None, html_content: str | None, image_data: Mapping[Any, tuple[str, bytes]]
) -> dict[str, tuple[bytes, str, str, str]]:
    referenced = set(_CID_REFERENCE.findall(html_content or ""))
    given = dict(images or {})
    missing = sorted(referenced - set(given))
    if missing:
        raise HveConfigError(
            f"Argument 'html_content' shows cid:{missing[0]} but argument 'images' has no such key; add "
            f"images={{{missing[0]!r}: '/path/to/image.png'}}."
        )
    inline: dict[str, tuple[bytes, str, str, str]] = {}
    for cid, path in given.items():
        if not isinstance(cid, str) or not re.fullmatch(r"[A-Za-z0-9._-]+(@[A-Za-z0-9.-]+)?", cid):
            raise HveConfigError(f"Argument 'images': {cid!r} is not a valid content id (letters, digits, . _ -).")
        if html_content is None:
            raise HveConfigError("Argument 'images' needs 'html_content' that shows them with <img src=\"cid:...\">.")
        checked, data = image_data[cid]
        maintype, subtype = _content_type(checked)
        if maintype != "image":
            raise HveConfigError(f"Argument 'images': {path!r} is not an image ({maintype}/{subtype}).")
        inline[cid] = (data, maintype, subtype, os.path.basename(checked))
    return inline


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    result: list[str] = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return tuple(result)
