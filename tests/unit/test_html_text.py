"""The plain-text alternative keeps what only looks like a tag (Airflow 3.1's unescaped failure HTML)."""

from __future__ import annotations

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
        "<svg><path d='M0 0'/></svg>",
        "<!-- a comment --><!DOCTYPE html>",
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
    ],
)
def test_exception_text_that_looks_like_a_tag_is_shown(text: str, shown: str) -> None:
    assert shown in html_to_text(f"<p>{text}</p>")
