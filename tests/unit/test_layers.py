"""The package's modules import each other in one direction only (function-local imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_hve"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "sandbox" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            found = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            targets.update(t for t in found if t in modules and t != name)
        # A package's __init__ re-exports its own modules; importing the package is importing them.
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles_in_the_package() -> None:
    assert _cycle(_imports()) is None, " -> ".join(_cycle(_imports()) or [])


def test_the_wire_layers_import_downwards_only() -> None:
    graph = _imports()
    assert "airflow_provider_hve.smtp" not in graph["airflow_provider_hve.pipeline"]
    assert not graph["airflow_provider_hve.wire"] - {"airflow_provider_hve.exceptions"}
    below_the_hook = ["smtp", "pipeline", "wire", "auth", "connection", "message", "addresses"]
    for name in below_the_hook:
        uppers = {t for t in graph[f"airflow_provider_hve.{name}"] if t.split(".")[1] in ("hooks", "bulk", "operators")}
        assert not uppers, f"{name} imports {uppers}"
