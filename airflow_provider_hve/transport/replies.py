"""SMTP replies parsed from bytes, sans I/O: fed what the socket gave, returns the replies it completes.

Like h11, the parser does no I/O: :meth:`ReplyParser.feed` takes bytes and returns complete :class:`Reply`
objects in order; whoever owns the socket decides when to read and how long to wait. It is tested by
feeding it bytes.

Every reply is bounded, so that a broken or hostile server (or anyone on the path before STARTTLS) cannot
make the client hold more than a fixed amount: :class:`ReplyLimitExceeded` is raised as soon as a line or a
reply passes a limit, before the bytes past it are kept. The defaults and why:

- ``max_line_bytes`` = 2048 (:data:`MAX_LINE_BYTES`): RFC 5321 4.5.3.1.5 caps a reply line at 512 octets
  with its CRLF; 4x that leaves room for servers that put long texts in replies (Exchange's enhanced status
  texts, ``AUTH`` continuations with a base64 JSON error), while smtplib's 8192 is more than any server we
  know of needs.
- ``max_lines`` = 100 (:data:`MAX_LINES`): the longest replies a client meets are EHLO answers: Exchange
  Online's, as the sandbox copies it (sandbox/extensions.py), is at most 12 lines, Postfix's default about
  11; 100 is several times either and still a small amount of memory.
- ``max_reply_bytes`` = 64 KiB (:data:`MAX_REPLY_BYTES`): 100 lines of 512 octets is 50 KiB; a reply
  larger than that is not one a mail server writes. It also bounds what a reply can hold in memory.

Line ends are CRLF or a bare LF, as smtplib accepts. A line is ``ddd`` (a bare code), ``ddd text`` (the
last line of a reply) or ``ddd-text`` (a line with more to come); every line of one reply carries the same
code. Anything else is :class:`MalformedReply`. Lines are decoded as UTF-8 with ``surrogateescape``, so
``line.encode("utf-8", "surrogateescape")`` gives back the bytes the server sent.

Example::

    parser = ReplyParser()
    parser.feed(b"250-mail.example\\r\\n250-PIPE")    # -> []
    parser.feed(b"LINING\\r\\n250 CHUNKING\\r\\n")   # -> [Reply(250, (...3 lines...))]
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE_BYTES = 2048
"""Default longest reply line, its line end included (RFC 5321 allows 512 octets)."""
MAX_LINES = 100
"""Default most lines in one reply (EHLO answers are 10 to 30 lines)."""
MAX_REPLY_BYTES = 64 * 1024
"""Default largest reply, line ends included."""


@dataclass(frozen=True)
class Reply:
    """
    One complete SMTP reply.

    :param code: the three-digit reply code.
    :param lines: each line as sent, code included, without its line end (``"250-PIPELINING"``).
    """

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The text of the lines after the code and separator, joined with ``"\\n"`` (as smtplib's getreply)."""
        return "\n".join(line[4:].strip(" \t\r\n") for line in self.lines)


class ProtocolViolation(ValueError):
    """The server sent something that is not an SMTP reply within the limits; the connection must be closed."""


class ReplyLimitExceeded(ProtocolViolation):
    """A line or a reply passed one of :class:`ReplyParser`'s limits (the message says which)."""


class MalformedReply(ProtocolViolation):
    """A line that is not an SMTP reply line, a code that changes within a reply, or a reply cut short by EOF."""


class ReplyParser:
    """
    Turn bytes from an SMTP server into :class:`Reply` objects, holding at most one reply's worth of bytes.

    :param max_line_bytes: longest line, its line end included.
    :param max_lines: most lines in one reply.
    :param max_reply_bytes: largest reply, line ends included.

    After a :class:`ProtocolViolation` the parser's state is undefined: close the connection.
    """

    def __init__(
        self,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_lines: int = MAX_LINES,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        if min(max_line_bytes, max_lines, max_reply_bytes) < 1 or max_line_bytes < 4:
            raise ValueError("ReplyParser limits must be positive, and a line must fit at least a code.")
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self.max_reply_bytes = max_reply_bytes
        self._partial = bytearray()  # the line being received, no line end yet
        self._lines: list[str] = []  # the complete lines of the reply being received
        self._reply_bytes = 0  # bytes of self._lines, line ends included

    @property
    def buffered(self) -> int:
        """Bytes held: the complete lines of the unfinished reply and the unfinished line."""
        return self._reply_bytes + len(self._partial)

    @property
    def pending_lines(self) -> int:
        """Complete lines of the reply not yet finished."""
        return len(self._lines)

    def feed(self, data: bytes) -> list[Reply]:
        """
        Take bytes received and return the replies they complete, in order.

        :raises ReplyLimitExceeded: a line or the reply passed a limit; nothing past the limit was kept.
        :raises MalformedReply: a line is not an SMTP reply line.
        """
        replies: list[Reply] = []
        view = memoryview(data)
        start = 0
        while start < len(view):
            end = data.find(b"\n", start)
            if end < 0:
                self._hold(view[start:])
                break
            self._hold(view[start : end + 1])
            line, self._partial = bytes(self._partial), bytearray()
            reply = self._complete(line)
            if reply is not None:
                replies.append(reply)
            start = end + 1
        return replies

    def receive_eof(self) -> None:
        """
        Say the server closed the connection. Nothing to do if no reply was under way.

        :raises MalformedReply: part of a reply was received (a line without its end, or a reply whose last
            line never came): it is not used, as smtplib would use an unterminated last line.
        """
        if self.buffered:
            raise MalformedReply(
                f"the connection was closed in the middle of a reply ({_count(self.pending_lines, 'complete line')}, "
                f"{self.buffered} bytes)"
            )

    def take_buffered(self) -> bytes:
        """
        Return the bytes of the unfinished reply (its complete lines end with CRLF) and forget them.

        Feeding them to a new parser puts it where this one was: how a reader loop takes over a connection.
        """
        held = b"".join(line.encode("utf-8", "surrogateescape") + b"\r\n" for line in self._lines)
        held += bytes(self._partial)
        self._lines, self._partial, self._reply_bytes = [], bytearray(), 0
        return held

    # -- one line ------------------------------------------------------------------------------------------

    def _hold(self, chunk: memoryview) -> None:
        """Keep part of a line, after checking that it stays within the limits."""
        size = len(self._partial) + len(chunk)
        if size > self.max_line_bytes:
            raise ReplyLimitExceeded(f"a reply line of more than {self.max_line_bytes} bytes")
        if self._reply_bytes + size > self.max_reply_bytes:
            raise ReplyLimitExceeded(f"a reply of more than {self.max_reply_bytes} bytes")
        self._partial += chunk

    def _complete(self, raw: bytes) -> Reply | None:
        """Add one line ending in LF to the reply; return the reply if the line was its last."""
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        code = line[:3]
        if len(code) < 3 or not code.isdigit() or line[3:4] not in (b"", b" ", b"-"):
            raise MalformedReply(f"a line that is not an SMTP reply line: {_shown(line)}")
        if self._lines and not self._lines[0].startswith(code.decode("ascii")):
            raise MalformedReply(
                f"a reply line with code {code.decode('ascii')} in a reply that began with {self._lines[0][:3]}"
            )
        self._lines.append(line.decode("utf-8", "surrogateescape"))
        self._reply_bytes += len(raw)
        if line[3:4] == b"-":
            if len(self._lines) >= self.max_lines:
                raise ReplyLimitExceeded(f"a reply of more than {self.max_lines} lines")
            return None
        reply = Reply(int(code), tuple(self._lines))
        self._lines, self._reply_bytes = [], 0
        return reply


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _shown(line: bytes) -> str:
    """A line for an error message: at most 60 characters, non-printable bytes escaped."""
    text = repr(line[:60])[2:-1]
    return text + ("..." if len(line) > 60 else "")
