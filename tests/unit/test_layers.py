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
    transport = {name for name in graph if name.startswith("airflow_provider_hve.transport")}
    for name in transport:
        outside = {t for t in graph[name] if not t.startswith("airflow_provider_hve.transport")}
        # The transport uses the errors, their hints and the message policy (to re-encode 8-bit content): not the
        # connection's configuration (smtp.py passes bdat_window and timeout in), not the session above it.
        assert outside <= {
            "airflow_provider_hve.exceptions",
            "airflow_provider_hve.diagnostics",
            "airflow_provider_hve.message",
        }, f"{name} imports {outside}"
    # Inside the transport, each layer imports only the layers under it (see transport/__init__.py).
    order = ["envelope", "replies", "setup", "transactions", "queue", "window", "loop", "session", "outcome"]
    for below, name in enumerate(order):
        layer = graph[f"airflow_provider_hve.transport.{name}"]
        above = {f"airflow_provider_hve.transport.{upper}" for upper in order[below:]}
        assert not layer & above, f"transport.{name} imports {layer & above}"
    below_the_hook = ["smtp", "transport", "auth", "connection", "message", "addresses"]
    for name in below_the_hook:
        uppers = {t for t in graph[f"airflow_provider_hve.{name}"] if t.split(".")[1] in ("hooks", "bulk", "operators")}
        assert not uppers, f"{name} imports {uppers}"


def test_the_transport_does_not_import_the_connection_module() -> None:
    graph = _imports()
    for name in (n for n in graph if n.startswith("airflow_provider_hve.transport")):
        assert "airflow_provider_hve.connection" not in graph[name], name


def test_the_transport_and_connection_agree_on_the_window() -> None:
    from airflow_provider_hve.connection import DEFAULT_BDAT_WINDOW, MAX_BDAT_WINDOW
    from airflow_provider_hve.transport import DEFAULT_WINDOW, MAX_WINDOW

    assert (DEFAULT_BDAT_WINDOW, MAX_BDAT_WINDOW) == (DEFAULT_WINDOW, MAX_WINDOW)
    # And the connection form (get_provider_info is kept free of imports, so it spells the numbers out).
    from airflow_provider_hve.get_provider_info import get_provider_info

    (hve,) = [t for t in get_provider_info()["connection-types"] if t["connection-type"] == "hve"]
    field = hve["conn-fields"]["bdat_window"]["schema"]
    assert (field["default"], field["maximum"]) == (DEFAULT_BDAT_WINDOW, MAX_BDAT_WINDOW)


def test_no_private_name_is_imported_across_modules() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("airflow_provider_hve"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                found += [f"{path.relative_to(PACKAGE)}: {node.module}.{name}" for name in private]
    assert found == []


def test_no_function_in_the_transport_is_long() -> None:
    long = []
    for path in (PACKAGE / "transport").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                if body and (lines := (body[-1].end_lineno or 0) - body[0].lineno + 1) > 50:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert long == []
