"""Alert Message-IDs: a notifier may carry a stable one (alerts.ids) so follow-ups thread under it."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from airflow_provider_hve.sandbox import HveSandbox


def test_a_notifier_sends_the_message_id_and_thread_headers_it_is_given(
    hve_connection: Callable[..., str], sandbox: HveSandbox
) -> None:
    from airflow_provider_hve.notifications.hve import HveNotifier

    hve_connection()
    # Airflow 2.11's notifier renders with context["dag"]
    context = {"dag": SimpleNamespace(dag_id="etl", render_template_as_native_obj=False)}
    first = "<hve-alert.0123abcd@contoso.example>"
    HveNotifier(to="oncall@contoso.example", subject="s", html_content="<p>x</p>", message_id=first)(context)
    HveNotifier(
        to="oncall@contoso.example",
        subject="s",
        html_content="<p>y</p>",
        headers={"In-Reply-To": first, "References": first},
    )(dict(context))
    one, two = sandbox.wait_for_messages(2)
    assert one.message["Message-ID"] == first
    assert two.message["In-Reply-To"] == first and two.message["References"] == first
    assert two.message["Message-ID"] != first


@pytest.mark.parametrize("bad", ["no-brackets@x", "<two@at@x>", "<a b@x>", "<x@y>\r\nBcc: z@x"], ids=str)
def test_a_message_id_must_be_one(bad: str, hve_connection: Callable[..., str]) -> None:
    from airflow_provider_hve.exceptions import HveConfigError
    from airflow_provider_hve.hooks.hve import HveHook

    hve_connection()
    with pytest.raises(HveConfigError, match="message_id"):
        HveHook().build_message("a@contoso.example", "s", "<p>x</p>", message_id=bad)
