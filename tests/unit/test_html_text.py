"""The plain-text alternative keeps what only looks like a tag (Airflow 3.1's unescaped failure HTML)."""

from __future__ import annotations

import html as html_module

import pytest

from airflow_provider_hve.reports import escape_unknown_tags, html_to_text


def test_airflows_unescaped_exception_keeps_its_text() -> None:
    # Airflow 2.11's and 3.1's failure mail: "Exception:<br>{{exception_html}}" with the text unescaped.
    body = "Try 1 out of 1<br>Exception:<br>disk <full> & broken<br>Log: <a href='http://x/log'>Link</a><br>"
    assert "disk <full> & broken" in html_to_text(body)
    assert "disk &lt;full> & broken" in escape_unknown_tags(body)


@pytest.mark.parametrize(
    "markup",
    [
        "<p>a <b>bold</b> <i>word</i></p>",
        "<table><tr><td>1</td></tr></table>",
        "<o:p></o:p>",  # Outlook's namespaced elements
        "<my-card>x</my-card>",  # a custom element
        "<svg><path d='M0 0'/><feGaussianBlur stdDeviation='2'/></svg>",
        "<math><mover><mi>x</mi><mo>^</mo></mover></math>",
        "<!-- a comment <full> --><!DOCTYPE html>",
        "<!--[if mso]><xml><o:OfficeDocumentSettings><o:AllowPNG/></o:OfficeDocumentSettings></xml><![endif]-->",
        "<style>td < th { color: red }</style><script>if (a <b) {}</script>",
        "<CENTER>old mail</CENTER>",
    ],
)
def test_real_markup_is_left_as_written(markup: str) -> None:
    assert escape_unknown_tags(markup) == markup


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("ValueError: <lambda> failed", "<lambda>"),
        ("got <Response [500]>", "<Response [500]>"),
        ("closing </full> too", "</full>"),
        ("KeyError: <table_name>", "<table_name>"),
        ("broken <a.b> import", "<a.b>"),
        ("cannot read <path> or <text>", "cannot read <path> or <text>"),
    ],
)
def test_exception_text_that_looks_like_a_tag_is_shown(text: str, shown: str) -> None:
    assert shown in html_to_text(f"<p>{text}</p>")


def test_a_secret_holding_a_lt_sign_is_masked_before_anything_is_escaped() -> None:
    # The backend masks first, then escapes: escaping first turned "hunter<secret42" into "hunter&lt;secret42",
    # which the masker no longer recognised inside a comment or an unquoted attribute.
    from airflow.providers.common.compat.sdk import mask_secret

    from airflow_provider_hve.utils.email import _redacted

    mask_secret("hunter<secret42")
    mask_secret("s3cr&t-Zq8")
    html = "<!-- hunter<secret42 --><a href=x?k=hunter<secret42>link</a> disk <full> <full s3cr&amp;t-Zq8> end"
    _, body = _redacted("s", html)
    assert "secret42" not in body and "Zq8" not in body, body  # the escaped one inside a pseudo-tag too
    assert "disk <full> <full ***> end" in html_module.unescape(body)


def test_elements_without_their_end_tag_cost_one_pass() -> None:
    # An exception text full of "<svg" without "</svg>" once took minutes (a search to the end per occurrence).
    import time

    body = "<p>" + "<svg <script <style <xml <math " * 20_000 + "<full></p>"
    started = time.perf_counter()
    escaped = escape_unknown_tags(body)
    assert time.perf_counter() - started < 2.0
    assert escaped.endswith("&lt;full></p>")


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        ("<svg-icon>a</svg-icon> <full> <svg>x</svg>", "<svg-icon>a</svg-icon> &lt;full> <svg>x</svg>"),
        ("<!-- never closed <full>", "<!-- never closed <full>"),
        ("<SVG><Text>t</Text></SVG><full>", "<SVG><Text>t</Text></SVG>&lt;full>"),
    ],
)
def test_skipped_elements_end_at_their_own_end_tag(markup: str, expected: str) -> None:
    assert escape_unknown_tags(markup) == expected
