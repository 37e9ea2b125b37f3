"""The README's promises: its links lead somewhere, and its DAG runs as printed (dag.test() against the sandbox)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_provider_hve.sandbox import HveSandbox

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# [text](target): targets without a scheme are files of this repository.
LINK = re.compile(r"\]\(([^)\s]+)\)")
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def test_readme_links_point_at_files_in_the_repository() -> None:
    targets = [t for t in LINK.findall(README) if "://" not in t and not t.startswith("#")]
    assert targets, "the README links into docs/"
    missing = [t for t in targets if not (ROOT / t.split("#", 1)[0]).is_file()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_readme_dag_delivers_the_report(run_dag: Callable[..., Any], sandbox: HveSandbox) -> None:
    (source,) = [block for block in PYTHON_BLOCK.findall(README) if "@dag" in block]
    # dag.test() needs the file inside the configured DAGs folder, which the suite sets to the repository.
    with tempfile.TemporaryDirectory(prefix=".readme-dag-", dir=ROOT) as folder:
        dag_file = Path(folder) / "readme_dag.py"
        dag_file.write_text(source, encoding="utf-8")
        dag_run = run_dag(dag_file, "daily_sales")
    assert dag_run.state == "success"

    (delivered,) = sandbox.wait_for_messages(1)
    message = delivered.message
    ds = dag_run.logical_date.strftime("%Y-%m-%d")
    assert message["Subject"] == f"Daily sales {ds}"
    assert delivered.rcpt_tos == ["sales@contoso.example"]
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    assert "EMEA" in html.get_content() and "1280" in html.get_content()
    assert re.search(r"APAC\s+640", text.get_content())
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == f"sales_{ds.replace('-', '')}.csv"
