"""Demo: send a Jinja-templated report through HveHook and the local HVE sandbox, then show the .eml.

Run with ``make demo``. No Microsoft tenant needed: the sandbox plays Entra ID (HTTPS token endpoint) and
HVE (STARTTLS + XOAUTH2 SMTP) on localhost, and writes every delivered message to ./mailbox.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hve-demo-airflow-"))


def main() -> int:
    import jinja2

    from airflow_provider_hve.hooks.hve import HveHook
    from airflow_provider_hve.sandbox import HveSandbox

    rows = [
        {"region": "EMEA", "orders": 1280, "revenue": "€ 1.2M"},
        {"region": "Americas", "orders": 2210, "revenue": "$ 2.9M"},
        {"region": "APAC <new>", "orders": 640, "revenue": "¥ 88M"},
    ]
    env = jinja2.Environment(autoescape=True)
    html = env.from_string(
        "<h2>{{ title }}</h2><table border='1' cellpadding='4'>"
        "<tr><th>Region</th><th>Orders</th><th>Revenue</th></tr>"
        "{% for r in rows %}<tr><td>{{ r.region }}</td><td>{{ r.orders }}</td><td>{{ r.revenue }}</td></tr>"
        "{% endfor %}</table><p>{{ rows | length }} rows.</p>"
    ).render(title="Daily sales", rows=rows)

    with HveSandbox(mailbox_dir=ROOT / "mailbox") as sandbox:
        os.environ["AIRFLOW_CONN_HVE_DEFAULT"] = sandbox.connection_json()
        result = HveHook().send_email(
            to=["sales-team@contoso.example"], subject="Daily sales report", html_content=html
        )
        (delivered,) = sandbox.wait_for_messages(1)
        print(f"Accepted by the sandbox HVE: {', '.join(result.accepted)} ({result.message_id})")
        print(f"Delivered message: {delivered.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
