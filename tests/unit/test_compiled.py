"""The compiled mail-merge message against the email package's: same headers, same parts, same bytes.

Each case builds one row both ways, through :class:`MailMerge` itself (its templates, its connection's From),
and compares the parsed messages (every header, every part, every decoded body) and the raw bytes once the
three things that differ between any two messages (boundaries, Date, Message-ID) are set aside.
"""

from __future__ import annotations

import json
import os
import re
import string
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_hve.addresses import parse_mailbox
from airflow_provider_hve.bulk import MailMerge
from airflow_provider_hve.bulk.compiled import (
    MergedMessage,
    _folded,
    _message_id_header,
    _subject_header,
    _to_header,
    encode_text,
)
from airflow_provider_hve.bulk.rows import Row
from airflow_provider_hve.exceptions import HveConfigError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.message import POLICY, Attachment, OutgoingMessage, address_list_header

ACCOUNT = "hve@contoso.example"
LONG_ASCII = "All work and no play makes Jack a dull boy. " * 6
LONG_CJK = "中文的长行\uff0c没有空格可以折叠" * 12
TEN_PLUS_LINES = "\n".join(f"line {n}: {'é' * 90}" for n in range(14))


@pytest.fixture
def hook() -> Iterator[HveHook]:
    conn_id = f"hve_unit_{uuid.uuid4().hex[:8]}"
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    extra = {"tenant_id": "00000000-0000-0000-0000-000000000001", "client_id": "00000000-0000-0000-0000-000000000002"}
    os.environ[variable] = json.dumps({"conn_type": "hve", "login": ACCOUNT, "password": "not-used", "extra": extra})
    try:
        yield HveHook(hve_conn_id=conn_id)
    finally:
        del os.environ[variable]


def both_ways(merge: MailMerge, data: dict[str, Any], index: int = 0) -> tuple[OutgoingMessage, MergedMessage]:
    """Build one row with the email package (the reference) and with the compiled message."""
    row = Row(index, parse_mailbox(data["email"]), f"{index}:{data['email']}", data)
    reference = merge._build(row)
    compiled = merge.row_builder(row)(row)
    assert isinstance(compiled, MergedMessage), "the row was not built by the compiled path"
    return reference, compiled


def parsed(payload: bytes) -> EmailMessage:
    message = BytesParser(policy=POLICY).parsebytes(payload)
    assert isinstance(message, EmailMessage) and not message.defects
    return message


def structure(message: EmailMessage) -> list[Any]:
    """Every part in order: its headers (Date, Message-ID and boundaries aside), its decoded content."""
    described: list[Any] = []
    for part in message.walk():
        headers = []
        for name, value in part.items():
            if name.lower() in ("date", "message-id"):
                headers.append((name, "<varies>"))
            elif name.lower() == "content-type":
                params = {k: v for k, v in part.get_params() or [] if k != "boundary"}
                headers.append((name, part.get_content_type(), params, bool(part.get_boundary())))
            else:
                headers.append((name, str(value)))
        assert not part.defects, part.defects
        content = None if part.is_multipart() else part.get_content()
        described.append((headers, content))
    return described


def normalised(payload: bytes) -> bytes:
    """The bytes with boundaries, Date and Message-ID replaced by placeholders."""
    message = parsed(payload)
    for n, part in enumerate(p for p in message.walk() if p.is_multipart()):
        payload = payload.replace(str(part.get_boundary()).encode(), f"BOUNDARY-{n}".encode())
    payload = re.sub(rb"(?m)^Date: .*\r\n", b"Date: <varies>\r\n", payload)
    return re.sub(rb"(?m)^Message-ID: .*\r\n", b"Message-ID: <varies>\r\n", payload)


def assert_same(reference: OutgoingMessage, compiled: MergedMessage) -> None:
    assert structure(parsed(compiled.payload)) == structure(parsed(reference.payload))
    assert normalised(compiled.payload) == normalised(reference.payload)
    assert (compiled.recipients, compiled.sender) == (reference.recipients, reference.sender)
    assert parsed(compiled.payload)["Message-ID"] == compiled.message_id
    assert compiled.payload.isascii() == reference.payload.isascii()  # the pipeline's 8BITMIME decision


SUBJECT = "Statement for {{ recipient.name }}"
HTML = "<p>Dear {{ recipient.name }},</p><p>{{ recipient.note }}</p>"
TEXT = "Dear {{ recipient.name }},\n{{ recipient.note }}\n"
ROWS = {
    "ascii": {"email": "ann@contoso.example", "name": "Ann <&> O'Neil", "note": "Balance: 42."},
    "accents": {"email": "zoe@contoso.example", "name": "Zoë Éléonore", "note": "Café crème."},
    "cjk-emoji": {"email": "li@contoso.example", "name": "李明 😀", "note": "你好\uff0c世界 🎉🎉"},
    "long-ascii-line": {"email": "long@contoso.example", "name": "Long", "note": LONG_ASCII},
    "long-cjk-line": {"email": "cjk@contoso.example", "name": "长", "note": LONG_CJK},
    "many-long-lines": {"email": "many@contoso.example", "name": "Many", "note": TEN_PLUS_LINES},
    "long-subject": {"email": "subj@contoso.example", "name": "word " * 40, "note": "x"},
    "long-non-ascii-subject": {"email": "nas@contoso.example", "name": "Straße ünïcödé 中文 " * 8, "note": "x"},
    "unbreakable-subject": {"email": "ub@contoso.example", "name": "x" * 1200, "note": "x"},
    "encoded-word-lookalike": {"email": "ew@contoso.example", "name": "=?utf-8?q?hi?=", "note": "x"},
    "display-name": {"email": "Ann Smith <ann@contoso.example>", "name": "Ann", "note": "x"},
    "non-ascii-display-name": {"email": "Zoë Ünal <zoe@contoso.example>", "name": "Zoë", "note": "x"},
    "quoted-local-part": {"email": "ann.o+tag@sub.contoso.example", "name": "Ann", "note": "x"},
    "empty-note": {"email": "e@contoso.example", "name": "", "note": ""},
    "crlf-in-text": {"email": "crlf@contoso.example", "name": "A", "note": "one\r\ntwo\rthree\n\nfour  "},
    "boundary-like": {"email": "b@contoso.example", "name": "B", "note": "--===============123==\n--"},
}
BODIES = {
    "text-and-html": {"html_content": HTML, "text_content": TEXT},
    "text-only": {"text_content": TEXT},
    "html-only": {"html_content": HTML},  # the text part is derived from the HTML, per row
}


@pytest.mark.parametrize("bodies", list(BODIES.values()), ids=list(BODIES))
@pytest.mark.parametrize("data", list(ROWS.values()), ids=list(ROWS))
def test_same_message_as_the_email_package(hook: HveHook, data: dict[str, Any], bodies: dict[str, str]) -> None:
    merge = MailMerge(hook, subject=SUBJECT, **bodies)
    assert_same(*both_ways(merge, data))


ATTACHMENTS = [
    Attachment("report.csv", "name,city\nZoë,Zürich\n".encode(), "text/csv"),
    Attachment("data.bin", bytes(range(256)) * 40),
    Attachment("Übersicht 中文.pdf", b"%PDF-1.4 not really", "application/pdf"),
]


@pytest.mark.parametrize("bodies", list(BODIES.values()), ids=list(BODIES))
@pytest.mark.parametrize(
    "data", [ROWS["ascii"], ROWS["cjk-emoji"], ROWS["long-cjk-line"]], ids=["ascii", "cjk", "long"]
)
def test_same_message_with_attachments_reply_to_and_headers(
    hook: HveHook, data: dict[str, Any], bodies: dict[str, str]
) -> None:
    merge = MailMerge(
        hook,
        subject=SUBJECT,
        from_email=f"Reports Bot Ünïcode <{ACCOUNT}>",
        reply_to=["Help Desk <help@contoso.example>", "other@contoso.example"],
        headers={"X-Campaign": "spring-2026", "X-Long": "v " * 60},
        attachments=ATTACHMENTS,
        **bodies,
    )
    reference, compiled = both_ways(merge, data)
    assert_same(reference, compiled)
    attachments = list(parsed(compiled.payload).iter_attachments())
    assert [a.get_filename() for a in attachments] == [a.filename for a in ATTACHMENTS]
    assert [a.get_content() for a in attachments][1:] == [a.data for a in ATTACHMENTS][1:]


def test_many_rows_each_its_own_headers_one_boundary(hook: HveHook) -> None:
    merge = MailMerge(hook, subject=SUBJECT, html_content=HTML, text_content=TEXT)
    first = Row(0, parse_mailbox("a@contoso.example"), "0:a", ROWS["ascii"])
    build = merge.row_builder(first)
    built = [
        build(Row(n, parse_mailbox(f"u{n}@contoso.example"), f"{n}", {"name": f"U{n}", "note": "é" * n}))
        for n in range(5)
    ]
    messages = [parsed(m.payload) for m in built]
    assert [m["To"] for m in messages] == [f"u{n}@contoso.example" for n in range(5)]
    assert [m["Subject"] for m in messages] == [f"Statement for U{n}" for n in range(5)]
    assert len({m["Message-ID"] for m in messages}) == 5
    assert len({m.get_boundary() for m in messages}) == 1  # chosen once per run
    texts = [m.get_body(("plain",)).get_content().splitlines() for m in messages]  # type: ignore[union-attr]
    assert texts == [f"Dear U{n},\n{'é' * n}".splitlines() for n in range(5)]


def test_a_row_holding_the_boundary_is_built_by_the_email_package(hook: HveHook) -> None:
    merge = MailMerge(hook, subject=SUBJECT, html_content=HTML, text_content=TEXT)
    first = Row(0, parse_mailbox("a@contoso.example"), "0:a", ROWS["ascii"])
    build = merge.row_builder(first)
    boundary = parsed(build(first).payload).get_boundary()
    hostile = {"name": "X", "note": f"--{boundary}\nContent-Type: text/html\n\n<script>"}
    outgoing = build(Row(1, parse_mailbox("b@contoso.example"), "1:b", hostile))
    assert isinstance(outgoing, OutgoingMessage)  # the fallback, which picks another boundary
    message = parsed(outgoing.payload)
    assert message.get_boundary() != boundary
    assert f"--{boundary}" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_inline_images_use_the_email_package_for_every_row(hook: HveHook, tmp_path: Any) -> None:
    image = tmp_path / "logo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    merge = MailMerge(
        hook, subject=SUBJECT, html_content='<img src="cid:logo"> {{ recipient.name }}', images={"logo": str(image)}
    )
    first = Row(0, parse_mailbox("a@contoso.example"), "0:a", ROWS["ascii"])
    outgoing = merge.row_builder(first)(first)
    assert isinstance(outgoing, OutgoingMessage)
    assert [p.get_content_type() for p in parsed(outgoing.payload).walk()][-1] == "image/png"


@pytest.mark.parametrize(
    ("subject", "match"),
    [("Hi \x00 there", "contains a line break"), ("Hi \x00", "header values must be one line")],
    ids=["nul", "nul-at-end"],
)
def test_a_bad_row_fails_as_with_the_email_package(hook: HveHook, subject: str, match: str) -> None:
    merge = MailMerge(hook, subject="{{ recipient.subject }}", text_content="x")
    good = Row(0, parse_mailbox("a@contoso.example"), "0:a", {"subject": "fine"})
    bad = Row(1, parse_mailbox("b@contoso.example"), "1:b", {"subject": subject})
    build = merge.row_builder(good)
    with pytest.raises(HveConfigError, match=match) as compiled_error:
        build(bad)
    with pytest.raises(HveConfigError) as reference_error:
        merge._build(bad)
    assert str(compiled_error.value) == str(reference_error.value)


def test_line_breaks_in_a_rendered_subject_never_start_a_header(hook: HveHook) -> None:
    merge = MailMerge(hook, subject="Hi {{ recipient.name }}", text_content="x")
    row = Row(0, parse_mailbox("a@contoso.example"), "0:a", {"name": "A\r\nBcc: victim@evil.example\u2028X: y"})
    reference, compiled = both_ways(merge, row.data | {"email": "a@contoso.example"})
    assert_same(reference, compiled)
    message = parsed(compiled.payload)
    assert "Bcc" not in message and "X" not in message
    assert compiled.recipients == ("a@contoso.example",)


def test_html_stays_autoescaped(hook: HveHook) -> None:
    merge = MailMerge(hook, subject=SUBJECT, html_content=HTML, text_content=TEXT)
    _, compiled = both_ways(merge, {"email": "a@contoso.example", "name": "<script>x</script>", "note": "&"})
    html = parsed(compiled.payload).get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>" not in html


# -- the fast paths against the email package, on many values -------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable + "é中😀=?", max_size=120))
def test_subject_header_is_the_email_packages(subject: str) -> None:
    subject = " ".join(subject.split())  # as the merge renders subjects
    assert _subject_header(subject) == _folded("Subject", subject)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z0-9._+-]{1,40}@[a-z0-9-]{1,30}\.example", fullmatch=True))
def test_to_header_is_the_email_packages(address: str) -> None:
    from email.policy import default

    try:
        mailbox = parse_mailbox(address)
    except ValueError:
        return
    expected = default.clone(linesep="\r\n").fold_binary("To", address_list_header((mailbox,)))
    assert _to_header(mailbox) == expected


@pytest.mark.parametrize("domain", ["contoso.example", "a" * 60 + ".contoso.example"], ids=["short", "long"])
def test_message_id_header_is_the_email_packages(domain: str) -> None:
    from email.utils import make_msgid

    message_id = make_msgid(domain=domain)
    assert _message_id_header(message_id) == _folded("Message-ID", message_id)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=400))
def test_text_encoding_is_the_email_packages(text: str) -> None:
    part = EmailMessage(policy=POLICY)
    part.set_content(text)
    reference = part.as_bytes(policy=POLICY.clone(linesep="\r\n"))
    cte, body = encode_text(text)
    assert part["Content-Transfer-Encoding"] == cte
    assert reference.split(b"\r\n\r\n", 1)[1] == body


_ATOM_CHARS = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet=_ATOM_CHARS, min_size=1, max_size=12), min_size=1, max_size=3),
    st.lists(
        st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=12), min_size=2, max_size=3
    ),
)
def test_bare_address_fast_path_is_what_the_header_parser_returns(local: list[str], domain: list[str]) -> None:
    from airflow_provider_hve.addresses import _BARE_ADDRESS, HEADER_REGISTRY

    address = f"{'.'.join(local)}@{'.'.join(domain)}"
    assert _BARE_ADDRESS.fullmatch(address)
    header = HEADER_REGISTRY("to", address)
    assert not header.defects
    assert [(a.display_name, a.addr_spec) for a in header.addresses] == [("", address)]


@pytest.mark.parametrize("address", ["a..b@x.example", ".a@x.example", "a@x", '"a b"@x.example', "Ann <a@x.example>"])
def test_other_addresses_take_the_header_parser(address: str) -> None:
    from airflow_provider_hve.addresses import _BARE_ADDRESS

    assert _BARE_ADDRESS.fullmatch(address) is None


def test_a_header_line_over_998_octets_is_refused_as_with_the_email_package(hook: HveHook) -> None:
    from airflow_provider_hve.addresses import Mailbox

    merge = MailMerge(hook, subject="Hi", text_content="x", attachments=ATTACHMENTS)
    good = Row(0, parse_mailbox("a@contoso.example"), "0:a", {})
    unchecked = Row(1, Mailbox("a" * 1000 + "@contoso.example"), "1:b", {})  # past validation, as if it had failed
    with pytest.raises(HveConfigError, match="longer than 998 octets") as compiled_error:
        merge.row_builder(good)(unchecked)
    with pytest.raises(HveConfigError) as reference_error:
        merge._build(unchecked)
    assert str(compiled_error.value) == str(reference_error.value)
