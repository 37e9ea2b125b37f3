"""Property-based tests: no header or address input injects a header or a recipient (hypothesis)."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_hve.exceptions import HveConfigError
from airflow_provider_hve.message import build_message

SENDER = "hve-sender@contoso.example"
BREAKS = st.sampled_from(["\r", "\n", "\r\n", "\x00"])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
LINE = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60)
INJECTED = st.builds(lambda a, brk, b: a + brk + "Bcc: victim@contoso.example" + b, TEXT, BREAKS, TEXT)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parsed(subject: str, **kwargs: object) -> email.message.EmailMessage:
    out = build_message(
        sender=SENDER, to=kwargs.pop("to", "a@contoso.example"), subject=subject, text_content="x", **kwargs
    )  # type: ignore[arg-type]
    return email.message_from_bytes(out.payload, policy=email.policy.default)  # type: ignore[return-value]


@SETTINGS
@given(INJECTED)
def test_line_breaks_in_the_subject_are_refused(subject: str) -> None:
    with pytest.raises(HveConfigError, match="'subject'"):
        parsed(subject)


@SETTINGS
@given(LINE)
def test_any_single_line_subject_round_trips_as_one_header(subject: str) -> None:
    message = parsed(subject)
    assert message.get_all("Subject") is not None and len(message.get_all("Subject")) == 1
    assert message["Bcc"] is None
    assert " ".join(str(message["Subject"]).split()) == " ".join(subject.split())


@SETTINGS
@given(INJECTED)
def test_line_breaks_in_addresses_and_display_names_are_refused(value: str) -> None:
    for argument in ("to", "cc", "bcc", "reply_to"):
        kwargs = {"to": "a@contoso.example", argument: value}
        with pytest.raises(HveConfigError):
            build_message(sender=SENDER, subject="s", text_content="x", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(HveConfigError):
        build_message(sender=f'"{value}" <{SENDER}>', to="a@contoso.example", subject="s", text_content="x")


@SETTINGS
@given(LINE)
def test_a_display_name_never_adds_recipients_or_headers(name: str) -> None:
    clean = name.replace("\\", "").replace('"', "")
    to = f'"{clean}" <a@contoso.example>'
    try:
        out = build_message(sender=SENDER, to=to, subject="s", text_content="x")
    except HveConfigError:
        return  # refused clearly: fine
    assert out.recipients == ("a@contoso.example",)
    message = email.message_from_bytes(out.payload, policy=email.policy.default)
    assert message["Bcc"] is None and len(message.get_all("To")) == 1


@SETTINGS
@given(st.text(min_size=1, max_size=20), INJECTED)
def test_custom_headers_cannot_inject(name: str, value: str) -> None:
    with pytest.raises(HveConfigError, match="headers"):
        build_message(
            sender=SENDER, to="a@contoso.example", subject="s", text_content="x", headers={f"X-{name}": value}
        )
