"""
SMTP replies cut out of the bytes received: pure, bounded, no I/O.

A reply is one or more lines ``<code>-text`` ending with a line ``<code> text`` (RFC 5321 4.2). What a server
sends is bounded here, so that no server can make the client grow: a line longer than ``max_line_bytes``, a
reply of more than ``max_lines`` lines, or more than ``max_reply_bytes`` bytes is a :class:`UnreadableReply`.

:func:`parse_replies` is the one place the reply queue turns bytes into replies
(:meth:`~airflow_provider_hve.transport.queue.ReplyQueue.receive`).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE_BYTES = 8192
"""The longest reply line taken (smtplib's own limit, ``_MAXLINE``)."""
MAX_LINES = 256
"""The most lines one reply may have (an EHLO reply has about twenty)."""
MAX_REPLY_BYTES = 65536
"""The most bytes one reply may have."""


class UnreadableReply(ValueError):
    """What the server sent is not an SMTP reply, or is one larger than the limits."""


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: its code and the text of each line (after the code and its separator)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The lines joined by ``\\n``, as ``smtplib.SMTP.getreply`` gives them."""
        return "\n".join(self.lines)


def parse_replies(
    buffer: bytes,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_lines: int = MAX_LINES,
    max_reply_bytes: int = MAX_REPLY_BYTES,
) -> tuple[list[Reply], bytes]:
    """
    Cut the complete replies out of ``buffer``; return them and the bytes of the reply not complete yet.

    :raises UnreadableReply: a line without a reply code, or a reply beyond the limits.
    """
    replies: list[Reply] = []
    lines: list[str] = []
    start = reply_start = 0
    while (end := buffer.find(b"\n", start)) != -1:
        line = buffer[start:end]
        if len(line) > max_line_bytes:
            raise UnreadableReply(f"a reply line of more than {max_line_bytes} bytes")
        code, last, text = _reply_line(line)
        lines.append(text)
        start = end + 1
        if len(lines) > max_lines or start - reply_start > max_reply_bytes:
            raise UnreadableReply(f"a reply of more than {max_lines} lines or {max_reply_bytes} bytes")
        if last:
            replies.append(Reply(code, tuple(lines)))
            lines, reply_start = [], start
    rest = buffer[reply_start:]
    if len(buffer) - start > max_line_bytes or len(rest) > max_reply_bytes:
        raise UnreadableReply(f"a reply line of more than {max_line_bytes} bytes")
    return replies, rest


def _reply_line(line: bytes) -> tuple[int, bool, str]:
    """Return ``(code, is the last line, text)`` of one line (without its LF)."""
    line = line.rstrip(b"\r")
    code = line[:3]
    separator = line[3:4]
    if not (code.isdigit() and len(code) == 3 and separator in (b"", b" ", b"-")):
        shown = line[:40].decode("ascii", "replace")
        raise UnreadableReply(f"a line that is not an SMTP reply: {shown!r}")
    return int(code), separator != b"-", line[4:].strip(b" \t").decode("utf-8", "replace")
