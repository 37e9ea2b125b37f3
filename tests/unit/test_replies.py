"""The sans-I/O reply parser, fed bytes: replies in order, any chunking, and limits that hold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_hve.transport.replies import (
    MAX_LINE_BYTES,
    MAX_LINES,
    MAX_REPLY_BYTES,
    MalformedReply,
    ProtocolViolation,
    Reply,
    ReplyLimitExceeded,
    ReplyParser,
)

EXCHANGE_EHLO = (
    b"250-SN4PEPF0000A4B7.mail.protection.outlook.com Hello [203.0.113.5]\r\n"
    b"250-SIZE 157286400\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n"
    b"250-AUTH LOGIN XOAUTH2\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n"
)


def feed_all(parser: ReplyParser, chunks: list[bytes]) -> list[Reply]:
    return [reply for chunk in chunks for reply in parser.feed(chunk)]


def test_one_multiline_reply_in_one_piece() -> None:
    (reply,) = ReplyParser().feed(EXCHANGE_EHLO)
    assert reply.code == 250 and len(reply.lines) == 11
    assert reply.lines[2] == "250-PIPELINING"
    assert reply.text.split("\n")[1:4] == ["SIZE 157286400", "PIPELINING", "DSN"]


@pytest.mark.parametrize(
    ("data", "code", "text"),
    [
        (b"250 ok\r\n", 250, "ok"),
        (b"250 ok\n", 250, "ok"),  # a bare LF, as smtplib accepts
        (b"250\r\n", 250, ""),  # a bare code
        (b"250-first\n250 second\r\n", 250, "first\nsecond"),
        (b"354 go ahead  \r\n", 354, "go ahead"),  # text stripped as smtplib's getreply does
        (b"220 caf\xc3\xa9\r\n", 220, "caf\xe9"),
    ],
    ids=["crlf", "bare-lf", "bare-code", "two-lines", "trailing-space", "utf8"],
)
def test_accepted_forms(data: bytes, code: int, text: str) -> None:
    (reply,) = ReplyParser().feed(data)
    assert (reply.code, reply.text) == (code, text)


def test_bytes_that_are_not_utf8_come_back_unchanged() -> None:
    (reply,) = ReplyParser().feed(b"550 \xff\xfe bad\r\n")
    assert reply.lines[0].encode("utf-8", "surrogateescape") == b"550 \xff\xfe bad"


def test_an_incomplete_reply_is_held_until_its_last_line() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250-a\r\n250-b\r\n250 c") == []
    assert (parser.pending_lines, parser.buffered) == (2, 19)
    (reply,) = parser.feed(b"\r\n")
    assert reply.lines == ("250-a", "250-b", "250 c") and parser.buffered == 0 == parser.pending_lines


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"25 short\r\n", "not an SMTP reply line"),
        (b"abc ok\r\n", "not an SMTP reply line"),
        (b"+25 ok\r\n", "not an SMTP reply line"),  # int() would take it
        (b"250ok\r\n", "not an SMTP reply line"),
        (b"\r\n", "not an SMTP reply line"),
        (b"250-a\r\n251 b\r\n", "code 251 in a reply that began with 250"),
    ],
    ids=["two-digits", "letters", "sign", "no-separator", "empty", "code-changes"],
)
def test_malformed_lines(data: bytes, problem: str) -> None:
    with pytest.raises(MalformedReply, match=problem):
        ReplyParser().feed(data)


def test_eof_after_whole_replies_is_quiet_and_mid_reply_is_malformed() -> None:
    parser = ReplyParser()
    parser.feed(b"221 bye\r\n")
    parser.receive_eof()
    parser.feed(b"250-a\r\n250 unterminated")
    with pytest.raises(MalformedReply, match=r"closed in the middle of a reply \(1 complete line, 23 bytes\)"):
        parser.receive_eof()


def test_take_buffered_hands_over_the_unfinished_reply() -> None:
    parser = ReplyParser()
    parser.feed(b"250-a\n250-b\r\n25")
    held = parser.take_buffered()
    assert held == b"250-a\r\n250-b\r\n25" and parser.buffered == 0
    (reply,) = ReplyParser().feed(held + b"0 c\r\n")
    assert reply.lines == ("250-a", "250-b", "250 c")


@pytest.mark.parametrize(
    ("limits", "data", "message"),
    [
        ({"max_lines": 3}, b"250-a\r\n" * 3, "a reply of more than 3 lines"),
        ({"max_line_bytes": 10}, b"250 " + b"x" * 7, "a reply line of more than 10 bytes"),
        ({"max_reply_bytes": 20}, b"250-abcdefgh\r\n250-abc", "a reply of more than 20 bytes"),
    ],
    ids=["lines", "line-bytes", "reply-bytes"],
)
def test_each_limit_is_named(limits: dict[str, int], data: bytes, message: str) -> None:
    with pytest.raises(ReplyLimitExceeded, match=message):
        ReplyParser(**limits).feed(data)


def test_replies_at_the_limits_are_accepted() -> None:
    parser = ReplyParser(max_lines=3, max_line_bytes=10, max_reply_bytes=30)
    (reply,) = parser.feed(b"250-1234\r\n250-1234\r\n250 12345\n")  # 3 lines, 10 + 10 + 10 bytes
    assert len(reply.lines) == 3


def test_the_defaults_fit_real_replies_and_are_documented() -> None:
    assert (MAX_LINE_BYTES, MAX_LINES, MAX_REPLY_BYTES) == (2048, 100, 64 * 1024)
    (reply,) = ReplyParser().feed(b"250-x\r\n" * (MAX_LINES - 1) + b"250 " + b"y" * 500 + b"\r\n")
    assert len(reply.lines) == MAX_LINES


# -- properties --------------------------------------------------------------------------------------------

_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.rstrip)
_reply = st.tuples(st.integers(200, 599), st.lists(_text, min_size=1, max_size=8), st.sampled_from(["\r\n", "\n"]))


def _encode(code: int, texts: list[str], end: str) -> bytes:
    lines = [f"{code}-{t}" for t in texts[:-1]] + [f"{code} {texts[-1]}".rstrip() if texts[-1] else f"{code}"]
    return "".join(line + end for line in lines).encode()


@settings(max_examples=200, deadline=None)
@given(replies=st.lists(_reply, min_size=1, max_size=6), data=st.data())
def test_any_split_of_a_stream_gives_the_same_replies(
    replies: list[tuple[int, list[str], str]], data: st.DataObject
) -> None:
    stream = b"".join(_encode(*r) for r in replies)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = ReplyParser().feed(stream)
    assert feed_all(ReplyParser(), chunks) == whole
    assert [(r.code, r.text) for r in whole] == [
        (c, "\n".join(t.strip(" \t") for t in texts)) for c, texts, _ in replies
    ]


@settings(max_examples=200, deadline=None)
@given(
    line=st.binary(min_size=0, max_size=12).filter(lambda b: b"\n" not in b),
    chunk=st.integers(1, 50),
    max_line_bytes=st.integers(8, 64),
    max_lines=st.integers(1, 10),
    max_reply_bytes=st.integers(8, 256),
)
def test_an_endless_reply_raises_at_a_limit_and_never_holds_more(
    line: bytes, chunk: int, max_line_bytes: int, max_lines: int, max_reply_bytes: int
) -> None:
    """Endless ``250-`` lines (or one endless line) in chunks of any size: it raises, and never holds too much."""
    parser = ReplyParser(max_line_bytes=max_line_bytes, max_lines=max_lines, max_reply_bytes=max_reply_bytes)
    unit = b"250-" + line + b"\r\n" if len(line) % 2 else b"250-" + line * 1000
    stream = unit * (max_reply_bytes // len(unit) + max_lines + 2)
    fed = 0
    with pytest.raises(ReplyLimitExceeded):
        for start in range(0, len(stream), chunk):
            parser.feed(stream[start : start + chunk])
            fed += chunk
            assert parser.buffered <= min(max_reply_bytes, fed)
            assert parser.pending_lines < max_lines
            assert len(parser._partial) <= max_line_bytes
    assert parser.buffered <= max_reply_bytes


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200), chunk=st.integers(1, 64))
def test_arbitrary_bytes_give_replies_or_a_protocol_violation(data: bytes, chunk: int) -> None:
    parser = ReplyParser(max_line_bytes=64, max_lines=4, max_reply_bytes=128)
    try:
        for start in range(0, len(data), chunk):
            for reply in parser.feed(data[start : start + chunk]):
                assert 0 <= reply.code <= 999 and all(line[:3] == f"{reply.code:03d}" for line in reply.lines)
            assert parser.buffered <= 128
    except ProtocolViolation:
        pass
