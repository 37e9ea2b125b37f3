"""A mail merge's message compiled once: constant bytes, and the few slots each row fills.

Building every message of a merge with the ``email`` package costs about a millisecond a row, most of it
parsing and folding headers that are the same in every message (From, the MIME structure, attachments). Here
the email package builds one message (the *skeleton*) with markers where a row's content goes, and that message
is cut into constant bytes and slots: To, Subject, Date, Message-ID, and each body part's transfer encoding and
content. A row then costs its rendering, the encoding of its bodies and one ``bytes.join``.

The bytes are those the email package would write for the same row: the constant pieces are its own output,
each slot is filled with the rules it applies (a short printable-ASCII subject as it is, anything else folded
by the email package itself; bodies encoded 7bit, 8bit, quoted-printable or base64 by its heuristic). Only the
boundaries, Date and Message-ID differ, as they differ between any two messages. ``tests/unit/test_compiled.py``
holds the two builders to that.

What this does not cover, it does not half-cover: :func:`compile_message` returns ``None`` for inline images
and for UTF-8 headers, RFC 6532 (the merge then builds every message with the email package), and
:meth:`CompiledMessage.fill` returns ``None`` for a row whose content happens to contain a boundary (that row is
built with the email package).
"""

from __future__ import annotations

import binascii
import functools
import random
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from email import quoprimime
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from io import BytesIO
from typing import TYPE_CHECKING, Any

from airflow_provider_hve.message import (
    LONG_LINE,
    MAX_MESSAGE_BYTES,
    POLICY,
    WIRE_POLICY,
    address_list_header,
    check_line_lengths,
    check_single_line,
)

if TYPE_CHECKING:
    from airflow_provider_hve.addresses import Mailbox
    from airflow_provider_hve.message import OutgoingMessage

SkeletonBuild = Callable[..., "OutgoingMessage"]
"""Builds one message with the email package from ``to``, ``subject``, ``html_content`` and ``text_content``;
every other argument (sender, Reply-To, headers, attachments) bound already."""

_CRLF = b"\r\n"
_MAX_LINE: int = POLICY.max_line_length or 78  # 78: where the email package folds headers and switches body encodings
# Fast paths: values the email package would write unchanged on one line. Anything else goes through it.
_SIMPLE_SUBJECT = re.compile(r"[!-~]+(?: [!-~]+)*")
_SIMPLE_ADDRESS = re.compile(r"[A-Za-z0-9._+-]+@[A-Za-z0-9.-]+")
_SIMPLE_MESSAGE_ID = re.compile(r"<[0-9.]+@[A-Za-z0-9.-]+>")
_ROW_HEADERS = frozenset({"to", "subject", "date", "message-id"})


@dataclass(frozen=True)
class MergedMessage:
    """One row's message, as :class:`~airflow_provider_hve.message.OutgoingMessage` but without the tree."""

    recipients: tuple[str, ...]
    sender: str
    payload: bytes
    """The message as SMTP carries it (CRLF line ends)."""
    message_id: str

    @property
    def message(self) -> EmailMessage:
        """Return the payload parsed by the email package (for inspection; sending uses :attr:`payload`)."""
        from email.parser import BytesParser

        parsed = BytesParser(policy=POLICY).parsebytes(self.payload)
        assert isinstance(parsed, EmailMessage)
        return parsed


class CompiledMessage:
    """
    The skeleton of a merge's messages as constant byte strings and slots; :meth:`fill` makes one row's bytes.

    Example::

        compiled = compile_message(functools.partial(build_message, sender="hve@contoso.com"), html=True)
        merged = compiled.fill(mailbox, "Hello Ann", "<p>Hello Ann</p>", None)
    """

    def __init__(
        self,
        segments: list[bytes | str],
        boundaries: list[bytes],
        sender: str,
        domain: str,
        has_html: bool,
        has_text: bool,
    ) -> None:
        self._segments = segments
        self._boundaries = boundaries
        self.sender = sender
        self._domain = domain
        self._has_html = has_html
        self._has_text = has_text
        self._slots = [n for n, segment in enumerate(segments) if isinstance(segment, str)]

    def fill(
        self, mailbox: Mailbox, subject: str, html: str | None, text: str | None, *, message_id_left: str | None = None
    ) -> MergedMessage | None:
        """
        Return the message of one row, or ``None`` if its content contains a boundary (build it the slow way).

        :param mailbox: the row's validated recipient.
        :param subject: the rendered subject, one line.
        :param html: the rendered HTML body, if the merge has one.
        :param text: the rendered text body; derived from ``html`` when ``None``, as the email-package path does.
        :param message_id_left: the left part of the Message-ID (the right part is the sender's domain); default:
            a new one, as ``email.utils.make_msgid`` makes it.
        :raises HveConfigError: as :func:`~airflow_provider_hve.message.build_message` would for the same row.
        """
        check_single_line("subject", subject)
        if (html is not None) != self._has_html or (text is None and html is None):
            raise ValueError("The row's bodies do not match the compiled message.")
        if text is None and self._has_text:
            from airflow_provider_hve.reports import html_to_text

            text = html_to_text(html or "")
        message_id = f"<{message_id_left}@{self._domain}>" if message_id_left else make_msgid(domain=self._domain)
        values: dict[str, bytes] = {
            "to": _to_header(mailbox),
            "subject": _subject_header(subject),
            "date": _date_header(formatdate(localtime=True)),
            "message-id": _message_id_header(message_id),
        }
        for name, content in (("text", text), ("html", html)):
            if content is None:
                continue
            cte, body = encode_text(content)
            if any(boundary in body for boundary in self._boundaries):
                return None
            values[name + "-cte"] = _cte_header(cte)
            values[name] = body
        pieces = list(self._segments)
        for n in self._slots:
            pieces[n] = values[pieces[n]]  # type: ignore[index]
        payload = b"".join(pieces)  # type: ignore[arg-type]
        _check_size(payload)
        # The constant pieces passed this check in the skeleton, and every piece ends a line: scanning the row's
        # own pieces is enough (an attachment of megabytes is not scanned again per row).
        if any(LONG_LINE.search(value) for value in values.values()):
            check_line_lengths(payload)  # names the header at fault
        return MergedMessage((mailbox.addr_spec,), self.sender, payload, message_id)


def compile_message(build: SkeletonBuild, *, first: Mailbox, html: bool, text: bool) -> CompiledMessage | None:
    """
    Build the skeleton with ``build`` and cut it into constant bytes and slots; ``None`` if it cannot be cut.

    :param build: the email-package builder with every constant argument bound.
    :param first: a recipient for the skeleton (the first row's).
    :param html: the merge has an HTML template.
    :param text: the merge has a text template, or derives one from the HTML.
    """
    markers = {"text": f"hve-merge-text-{secrets.token_hex(8)}", "html": f"hve-merge-html-{secrets.token_hex(8)}"}
    skeleton = build(
        to=[first],
        subject="skeleton",
        html_content=markers["html"] if html else None,
        text_content=markers["text"] if text else None,
    )
    if getattr(skeleton.message.policy, "utf8", False):
        # UTF-8 headers (an address with non-ASCII before the '@' in From, Reply-To...): the slots are filled with
        # the 7-bit rules, so every message is built by the email package, which writes them (RFC 6532).
        return None
    bodies = {f"{marker}\n": name for name, marker in markers.items()}
    boundaries: dict[bytes, int] = {}
    segments: list[bytes | str] = []
    if not _cut(skeleton.message, segments, boundaries, bodies, top=True):
        return None
    if sorted(s for s in segments if isinstance(s, str)) != sorted(_expected_slots(html, text)):
        return None
    # Each boundary where the skeleton's structure puts it, and nowhere else (an attachment's bytes, say).
    constants = b"".join(s for s in segments if isinstance(s, bytes))
    if any(constants.count(marker) != count for marker, count in boundaries.items()):
        return None
    merged: list[bytes | str] = []
    for segment in segments:  # adjacent constants as one piece: fewer to join per row
        if isinstance(segment, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += segment
        else:
            merged.append(segment)
    domain = skeleton.sender.rpartition("@")[2]
    return CompiledMessage(merged, list(boundaries), skeleton.sender, domain, has_html=html, has_text=text)


def _expected_slots(html: bool, text: bool) -> list[str]:
    slots = ["to", "subject", "date", "message-id"]
    for name, present in (("text", text), ("html", html)):
        if present:
            slots += [name, f"{name}-cte"]
    return slots


def _cut(
    part: EmailMessage, segments: list[bytes | str], boundaries: dict[bytes, int], bodies: dict[str, str], top: bool
) -> bool:
    """Append ``part`` as the generator writes it, slots for what a row fills; ``False`` if it cannot be cut."""
    if part.preamble is not None or part.epilogue is not None:
        return False
    slot = None if part.is_multipart() else bodies.get(part.get_payload())  # type: ignore[arg-type]
    if not part.is_multipart() and slot is None:
        if top:
            return False
        segments.append(_flattened(part))  # an attachment: the same in every message
        return True
    boundary = ""
    if part.is_multipart():
        # Chosen once per run, as the email package would (and checked against every row's content in fill).
        boundary = "=" * 15 + f"{random.randrange(10**18, 10**19)}" + "=="
        part.set_boundary(boundary)
    for name, value in part.raw_items():
        lowered = name.lower()
        if top and lowered in _ROW_HEADERS:
            segments.append(lowered)
        elif slot is not None and lowered == "content-transfer-encoding":
            segments.append(f"{slot}-cte")
        else:
            segments.append(WIRE_POLICY.fold_binary(name, value))
    segments.append(_CRLF)
    if slot is not None:
        segments.append(slot)
        return True
    delimiter = f"--{boundary}\r\n".encode("ascii")
    children = list(part.iter_parts())
    for n, child in enumerate(children):
        segments.append(delimiter if n == 0 else _CRLF + delimiter)
        if not _cut(child, segments, boundaries, bodies, top=False):  # type: ignore[arg-type]
            return False
    segments.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    boundaries[b"--" + boundary.encode("ascii")] = len(children) + 1  # before each part, and the close
    return True


def _flattened(part: Any) -> bytes:
    buffer = BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=WIRE_POLICY).flatten(part, unixfrom=False, linesep="\r\n")
    return buffer.getvalue()


def _check_size(payload: bytes) -> None:
    if len(payload) > MAX_MESSAGE_BYTES:
        from airflow_provider_hve.exceptions import HveConfigError

        raise HveConfigError(
            f"The message is {len(payload) / 1048576:.1f} MB; HVE accepts at most {MAX_MESSAGE_BYTES // 1048576} "
            f"MB per message (attachments grow by a third when encoded). Send smaller or fewer 'files'."
        )


# -- the slots --------------------------------------------------------------------------------------------


def _subject_header(subject: str) -> bytes:
    if len(subject) <= _MAX_LINE - len("Subject: ") and _SIMPLE_SUBJECT.fullmatch(subject) and "=?" not in subject:
        return b"Subject: " + subject.encode("ascii") + _CRLF
    return _folded("Subject", subject)


def _to_header(mailbox: Mailbox) -> bytes:
    address = mailbox.addr_spec
    if not mailbox.display_name and len(address) <= _MAX_LINE - len("To: ") and _SIMPLE_ADDRESS.fullmatch(address):
        return b"To: " + address.encode("ascii") + _CRLF
    return WIRE_POLICY.fold_binary("To", address_list_header((mailbox,)))  # stored raw, as build_message does


def _message_id_header(message_id: str) -> bytes:
    if len(message_id) <= _MAX_LINE - len("Message-ID: ") and _SIMPLE_MESSAGE_ID.fullmatch(message_id):
        return b"Message-ID: " + message_id.encode("ascii") + _CRLF
    return _folded("Message-ID", message_id)


@functools.lru_cache(maxsize=4)
def _date_header(date: str) -> bytes:
    # Not through message._parsed_header: its cache of 256 would keep a parsed Date per second of the run.
    return _folded("Date", date)


@functools.lru_cache(maxsize=8)
def _cte_header(cte: str) -> bytes:
    return _folded("Content-Transfer-Encoding", cte)


def _folded(name: str, value: str) -> bytes:
    """The header as the email package writes ``message[name] = value``."""
    return WIRE_POLICY.fold_binary(*POLICY.header_store_parse(name, value))


def encode_text(text: str) -> tuple[str, bytes]:
    """
    Encode a text body as the email package's ``set_content`` does; return its transfer encoding and bytes.

    Its heuristic, unchanged (``email.contentmanager``): 7bit for ASCII with lines of at most 78 characters,
    8bit for other text with such lines, else quoted-printable or base64, whichever is shorter on the first ten
    lines. The bytes have CRLF line ends, as the generator writes them.
    """
    lines = text.encode("utf-8").splitlines()
    body = b"\n".join(lines) + b"\n"
    if max((len(line) for line in lines), default=0) <= _MAX_LINE:
        return ("7bit" if body.isascii() else "8bit"), body.replace(b"\n", _CRLF)
    sniff = b"\n".join(lines[:10]) + b"\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), _MAX_LINE)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        per_line = _MAX_LINE // 4 * 3
        encoded = "".join(
            binascii.b2a_base64(body[i : i + per_line]).decode("ascii") for i in range(0, len(body), per_line)
        )
        return "base64", encoded.encode("ascii").replace(b"\n", _CRLF)
    encoded = sniff_qp if len(lines) <= 10 else quoprimime.body_encode(body.decode("latin-1"), _MAX_LINE)
    return "quoted-printable", encoded.encode("ascii").replace(b"\n", _CRLF)
