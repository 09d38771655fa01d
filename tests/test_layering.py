"""The layering contract: the library never imports Prefect; only p2p/app reaches up to flows."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "p2p"
ORCHESTRATION = ("prefect", "prefect_dask", "flows", "tasks")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, inside_a_function) for every import in a file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def test_library_never_imports_prefect() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module, _ in _imports(path)
        if _top(module) in ("prefect", "prefect_dask")
    ]
    assert offenders == []


def test_only_the_cli_reaches_flows_and_only_lazily() -> None:
    # The app (CLI, console) is the one edge allowed to start a flow; it imports it inside the
    # command so that the library modules and `p2p --help` never load Prefect.
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {module} (in function: {lazy})"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module, lazy in _imports(path)
        if _top(module) in ("flows", "tasks") and not (path.parent.name == "app" and lazy)
    ]
    assert offenders == []


def test_the_check_sees_nested_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    if True:\n        from prefect import flow\n")
    assert _imports(probe) == [("prefect", True)]
    assert all(_top(m) in ORCHESTRATION for m, _ in _imports(probe))
