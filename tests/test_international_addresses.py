"""Internationalised addresses: IDN domains go out as A-labels; non-ASCII local parts (RFC 6532) go in UTF-8
headers with SMTPUTF8 on MAIL FROM when the server offers it, and are refused before any transaction when it
does not (SMTPUTF8 envelopes: test_wire.py); non-ASCII display names of ASCII addresses are RFC 2047-encoded.
Sends go to the sandbox and the assertions read what its SMTP server received."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from email.header import decode_header, make_header
from typing import Any

import pytest

from airflow_provider_hve.addresses import AddressError, parse_mailbox
from airflow_provider_hve.exceptions import HveConfigError
from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.message import build_message
from airflow_provider_hve.sandbox import HveSandbox

# bücher.example and münchen.contoso.example, as DNS (and HVE's accepted-domain list) know them.
BUECHER = "xn--bcher-kva.example"
MUENCHEN = "xn--mnchen-3ya.contoso.example"


@pytest.fixture
def hook(hve_connection: Callable[..., str]) -> HveHook:
    return HveHook(hve_conn_id=hve_connection())


@pytest.fixture
def idn_tenant(sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Add the IDN domains to the sandbox tenant's accepted domains (in A-label form, as Exchange lists them)."""
    monkeypatch.setattr(sandbox.directory, "accepted_domains", [*sandbox.accepted_domains, BUECHER, MUENCHEN])


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize(
    ("written", "addr_spec", "display_name"),
    [
        ("anna@bücher.example", f"anna@{BUECHER}", ""),
        ("user@münchen.contoso.example", f"user@{MUENCHEN}", ""),
        ("Anna Bücher <anna@BÜCHER.example>", f"anna@{BUECHER}", "Anna Bücher"),
        (f"anna@{BUECHER}", f"anna@{BUECHER}", ""),  # already an A-label: unchanged
    ],
    ids=["u-label", "u-label-subdomain", "upper-case-with-display-name", "a-label"],
)
def test_idn_domain_is_converted_to_its_a_label(written: str, addr_spec: str, display_name: str) -> None:
    mailbox = parse_mailbox(written)
    assert (mailbox.addr_spec, mailbox.display_name) == (addr_spec, display_name)


def test_u_label_and_a_label_of_one_address_are_one_recipient() -> None:
    outgoing = build_message(
        sender="hve-sender@contoso.example",
        to=["anna@bücher.example", f"Anna <anna@{BUECHER}>"],
        bcc=f"ANNA@{BUECHER.upper()}",
        subject="s",
        text_content="x",
    )
    assert outgoing.recipients == (f"anna@{BUECHER}",)


def test_idn_recipients_travel_as_a_labels_in_envelope_and_headers(
    sandbox: HveSandbox, hook: HveHook, idn_tenant: None
) -> None:
    result = hook.send_email(
        to="Anna Bücher <anna@bücher.example>",
        cc="ops@münchen.contoso.example",
        bcc=f"anna@{BUECHER}",  # the same mailbox as To: sent once
        reply_to="desk@bücher.example",
        subject="Bestellung",
        text_content="Ihre Bestellung ist unterwegs.",
    )
    assert result.accepted == (f"anna@{BUECHER}", f"ops@{MUENCHEN}")
    assert result.refused == {}

    (delivered,) = sandbox.wait_for_messages(1)
    (transaction,) = sandbox.smtp_sessions[0].transactions
    # RCPT TO exactly as the server read it off the wire.
    assert transaction.rcpt_tos == [f"anna@{BUECHER}", f"ops@{MUENCHEN}"]
    assert delivered.rcpt_tos == [f"anna@{BUECHER}", f"ops@{MUENCHEN}"]

    headers = header_block(delivered.data)
    assert headers.isascii(), "headers must be 7-bit: the builder writes no SMTPUTF8 headers"
    assert "bücher".encode() not in delivered.data and "münchen".encode() not in delivered.data
    message = delivered.message
    (to,) = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Anna Bücher", f"anna@{BUECHER}")
    assert [a.addr_spec for a in message["Cc"].addresses] == [f"ops@{MUENCHEN}"]
    assert [a.addr_spec for a in message["Reply-To"].addresses] == [f"desk@{BUECHER}"]
    assert message["Bcc"] is None


def test_the_sandbox_refuses_what_it_does_not_list(sandbox: HveSandbox, hook: HveHook) -> None:
    # Without the IDN domain on the tenant's list the same send is refused: the test above is not vacuous.
    from airflow_provider_hve.exceptions import HveSendError

    with pytest.raises(HveSendError) as info:
        hook.send_email(to="anna@bücher.example", subject="s", text_content="x")
    assert f"anna@{BUECHER}" in info.value.refused
    assert not sandbox.messages


# 例子.广告 ("example.ad" in Chinese), as the tenant's list and DNS write it.
CHINESE = "xn--fsqu00a.xn--4rr70v"


@pytest.fixture
def utf8_tenant(sandbox: HveSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.directory, "accepted_domains", [*sandbox.accepted_domains, BUECHER, CHINESE])


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_non_ascii_local_parts_go_in_utf8_headers_with_smtputf8(
    sandbox: HveSandbox, hook: HveHook, utf8_tenant: None, chunking: bool
) -> None:
    assert sandbox.smtp.smtputf8  # HVE's Exchange Online frontends offer it (HVE_FACTS), and so does the sandbox
    sandbox.smtp.chunking = chunking
    result = hook.send_email(
        to=["José Q <José@contoso.example>", "用户@例子.广告"],
        cc="Zoë <zoë@bücher.example>",
        bcc="jürgen@contoso.example",
        reply_to="Jörg <jörg@contoso.example>",
        subject="Grüße",
        text_content="x",
    )
    envelope = ["José@contoso.example", f"用户@{CHINESE}", f"zoë@{BUECHER}", "jürgen@contoso.example"]
    assert result.accepted == tuple(envelope) and result.refused == {}

    (delivered,) = sandbox.wait_for_messages(1)
    (transaction,) = sandbox.smtp_sessions[0].transactions
    assert "SMTPUTF8" in transaction.mail_options  # RFC 6531 3.4: asked for on MAIL FROM
    assert (transaction.bdat_chunks > 0) is chunking
    assert transaction.rcpt_tos == envelope == delivered.rcpt_tos
    headers = header_block(delivered.data).decode("utf-8")
    # RFC 6532: the addresses themselves in UTF-8, never an encoded word inside an address.
    assert "José Q <José@contoso.example>" in headers and f"用户@{CHINESE}" in headers
    assert f"zoë@{BUECHER}" in headers and "jörg@contoso.example" in headers
    assert "=?utf-8?" not in headers.split("\nSubject:")[0]
    assert "jürgen" not in headers  # Bcc: envelope only
    message = delivered.message
    assert [a.addr_spec for a in message["To"].addresses] == ["José@contoso.example", f"用户@{CHINESE}"]
    assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [("Zoë", f"zoë@{BUECHER}")]
    assert [a.addr_spec for a in message["Reply-To"].addresses] == ["jörg@contoso.example"]


def test_an_ascii_message_still_has_7_bit_headers_and_no_smtputf8(sandbox: HveSandbox, hook: HveHook) -> None:
    hook.send_email(to="Zoë <zoe@contoso.example>", subject="Grüße", text_content="x")
    (delivered,) = sandbox.wait_for_messages(1)
    assert header_block(delivered.data).isascii()
    assert "SMTPUTF8" not in sandbox.smtp_sessions[0].transactions[0].mail_options


def test_a_non_ascii_from_address_is_written_in_utf8() -> None:
    # The sandbox, like HVE, sends only as the (ASCII) HVE account: the From header is checked as built.
    outgoing = build_message(
        sender="Jörg <jörg@contoso.example>", to="ok@contoso.example", subject="s", text_content="x"
    )
    assert b"From: J\xc3\xb6rg <j\xc3\xb6rg@contoso.example>\r\n" in header_block(outgoing.payload)
    assert outgoing.sender == "jörg@contoso.example"


@pytest.mark.parametrize(
    ("argument", "value", "named"),
    [
        ("to", "jörg@contoso.example", "to"),
        ("to", ["ok@contoso.example", "Jörg Müller <jörg@contoso.example>"], "to"),
        ("cc", "用户@例子.广告", "cc"),
        ("reply_to", "jörg@contoso.example", "reply_to"),
        ("from_email", "Jörg <jörg@contoso.example>", "from_email"),
        ("bcc", "jörg@bücher.example", "recipients"),  # in the envelope only: named as the envelope's
    ],
    ids=["to", "to-list-with-display-name", "cc", "reply-to", "from-email", "bcc"],
)
def test_non_ascii_local_part_is_refused_before_any_transaction_without_smtputf8(
    sandbox: HveSandbox, hook: HveHook, argument: str, value: Any, named: str
) -> None:
    sandbox.smtp.smtputf8 = False  # the sandbox's --no-smtputf8
    kwargs: dict[str, Any] = {"to": "ok@contoso.example", argument: value}
    with pytest.raises(HveConfigError) as info:
        hook.send_email(subject="s", text_content="x", **kwargs)
    text = str(info.value)
    assert text.startswith(f"Argument {named!r}: ")
    assert "does not offer SMTPUTF8" in text and "Nothing was sent" in text
    # EHLO told the session what the server offers; no MAIL FROM followed, nothing was delivered.
    assert sandbox.smtp_sessions and all(not session.transactions for session in sandbox.smtp_sessions)
    assert not sandbox.messages


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("to", "jo\u202ese@contoso.example"),
        ("cc", "jo\u200bse@contoso.example"),
        ("from_email", "Jo <jo\u2066se@contoso.example>"),
        ("to", "josé@contoso.example\r\nBcc: x@evil.example"),
    ],
    ids=["rlo", "zwsp", "lri", "crlf"],
)
def test_non_ascii_local_parts_keep_the_format_character_and_injection_refusals(
    sandbox: HveSandbox, hook: HveHook, token_posts: Callable[[], list[Any]], argument: str, value: str
) -> None:
    kwargs: dict[str, Any] = {"to": "ok@contoso.example", argument: value}
    with pytest.raises(HveConfigError, match=rf"^Argument {argument!r}: .*(unsafe characters|line break)"):
        hook.send_email(subject="s", text_content="x", **kwargs)
    assert not sandbox.smtp_sessions and not token_posts()


def test_non_ascii_local_part_error_from_the_address_parser() -> None:
    # Where no UTF-8 header is written (the connection's login, a mail merge's rows), the parser refuses it.
    with pytest.raises(AddressError, match=r"'jörg@contoso\.com' has non-ASCII characters before the '@' \('ö'\)"):
        parse_mailbox("jörg@contoso.com")
    with pytest.raises(AddressError, match="which need SMTPUTF8"):
        parse_mailbox('"Jörg Müller" <jörg.müller@contoso.com>')
    assert parse_mailbox("Jörg <jörg@bücher.example>", smtputf8=True).addr_spec == f"jörg@{BUECHER}"


def test_non_ascii_login_is_refused_naming_the_connection(
    sandbox: HveSandbox, hve_connection: Callable[..., str], token_posts: Callable[[], list[Any]]
) -> None:
    hook = HveHook(hve_conn_id=hve_connection(conn_id="hve_umlaut", login="jörg@contoso.example"))
    with pytest.raises(HveConfigError) as info:
        hook.send_email(to="ok@contoso.example", subject="s", text_content="x")
    text = str(info.value)
    assert "'hve_umlaut'" in text and "'login'" in text and "SMTPUTF8" in text
    assert sandbox.client_secret not in text
    assert not sandbox.smtp_sessions and not token_posts()


def test_non_ascii_display_names_are_rfc2047_encoded(sandbox: HveSandbox, hook: HveHook) -> None:
    hook.send_email(
        to='"Jörg Müller" <jorg@contoso.example>',
        cc="Zoë Ångström <zoe@contoso.example>",
        from_email=f"Berichte Zürich <{sandbox.account}>",
        subject="Bericht für Jörg",
        text_content="Grüße",
    )
    (delivered,) = sandbox.wait_for_messages(1)
    headers = header_block(delivered.data)
    assert headers.isascii(), "headers must be 7-bit: the builder writes no SMTPUTF8 headers"

    raw = email.message_from_bytes(delivered.data, policy=email.policy.compat32)  # headers as received
    expected = {
        "To": "Jörg Müller <jorg@contoso.example>",
        "Cc": "Zoë Ångström <zoe@contoso.example>",
        "From": f"Berichte Zürich <{sandbox.account}>",
        "Subject": "Bericht für Jörg",
    }
    for name, decoded in expected.items():
        assert "=?utf-8?" in raw[name].lower(), f"{name} is not RFC 2047-encoded: {raw[name]!r}"
        assert str(make_header(decode_header(raw[name]))) == decoded

    parsed = delivered.message
    (to,) = parsed["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Jörg Müller", "jorg@contoso.example")
    assert delivered.rcpt_tos == ["jorg@contoso.example", "zoe@contoso.example"]
    # The display name on the HVE account passed the sandbox's send-as check (From is the account).
    assert parsed["From"].addresses[0].addr_spec == sandbox.account


@pytest.mark.parametrize("argument", ["to", "cc", "reply_to", "from_email"])
@pytest.mark.parametrize(
    ("display_name", "code"),
    [
        ('"Fin\u202eecnan" ', "U+202E"),  # right-to-left override: reads "Finnance" backwards
        ("Fin\u200bance ", "U+200B"),  # zero width space
        ('"\u2066Ops\u2069" ', "U+2066"),  # left-to-right isolate
        ("\ufeffOps ", "U+FEFF"),  # zero width no-break space (a byte order mark)
        ("=?utf-8?q?Fin=E2=80=AEance?= ", "U+202E"),  # the same, hidden in an RFC 2047 encoded word
    ],
    ids=["rlo", "zwsp", "lri", "bom", "encoded-word"],
)
def test_format_characters_in_a_display_name_are_refused_before_connecting(
    sandbox: HveSandbox,
    hook: HveHook,
    token_posts: Callable[[], list[Any]],
    argument: str,
    display_name: str,
    code: str,
) -> None:
    address = sandbox.account if argument == "from_email" else "finance@contoso.example"
    kwargs: dict[str, Any] = {"to": "ok@contoso.example", argument: f"{display_name}<{address}>"}
    with pytest.raises(HveConfigError) as info:
        hook.send_email(subject="s", text_content="x", **kwargs)
    text = str(info.value)
    assert text.startswith(f"Argument {argument!r}: the display name of ")
    assert f"invisible format character {code}" in text
    assert not sandbox.smtp_sessions and not token_posts()


def test_joiners_in_a_display_name_are_kept(sandbox: HveSandbox, hook: HveHook) -> None:
    # ZWJ and ZWNJ spell emoji sequences and Persian or Indic words; they neither reorder nor hide text.
    hook.send_email(
        to="\U0001f469\u200d\U0001f4bb Ops <ops@contoso.example>",
        cc='"\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645" <fa@contoso.example>',
        subject="s",
        text_content="x",
    )
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.message["To"].addresses[0].display_name == "\U0001f469\u200d\U0001f4bb Ops"
    assert delivered.message["Cc"].addresses[0].display_name == "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"


@pytest.mark.parametrize("smtputf8", [True, False], ids=["offered", "not-offered"])
def test_a_mail_merge_with_a_non_ascii_reply_to(sandbox: HveSandbox, hook: HveHook, smtputf8: bool) -> None:
    # The merge's fast (compiled) builder writes 7-bit headers: with a UTF-8 header it builds each message with the
    # email package instead (it failed with a raw UnicodeEncodeError).
    from airflow_provider_hve.bulk import MailMerge

    sandbox.smtp.smtputf8 = smtputf8
    merge = MailMerge(hook, subject="Hi", text_content="x", reply_to="José <José@contoso.example>", sessions=1)
    rows = [{"email": "a@contoso.example"}, {"email": "b@contoso.example"}]
    if not smtputf8:
        with pytest.raises(HveConfigError, match=r"^Argument 'reply_to': .*does not offer SMTPUTF8"):
            merge.run(rows)
        assert all(not session.transactions for session in sandbox.smtp_sessions) and not sandbox.messages
        return
    assert merge.run(rows).accepted == 2
    delivered = sandbox.wait_for_messages(2)
    for message in delivered:
        assert b"Reply-To: Jos\xc3\xa9 <Jos\xc3\xa9@contoso.example>\r\n" in header_block(message.data)
    assert all("SMTPUTF8" in t.mail_options for s in sandbox.smtp_sessions for t in s.transactions)
