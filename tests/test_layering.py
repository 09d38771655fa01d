"""The layering contract (docs/architecture.md): packages import downwards only.

core ← raster, model (torch + numpy only) ← data, infer ← stages ← app; Prefect lives in
tasks/ and flows/ only, and only p2p/app reaches up to them (lazily, inside a command).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "p2p"
ORCHESTRATION = ("prefect", "prefect_dask", "flows", "tasks")
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
#: What each package may import from p2p (itself included), at any depth.
ALLOWED = {
    "core": {"core"},
    "raster": {"core", "raster"},
    "model": {"core", "model"},
    "data": {"core", "raster", "model", "data"},
    "infer": {"core", "raster", "model", "infer"},
    "stages": {"core", "raster", "model", "data", "infer", "stages"},
    "app": {"core", "raster", "model", "data", "infer", "stages", "app"},
}


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


def _package(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def test_library_never_imports_prefect() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module, _ in _imports(path)
        if _top(module) in ("prefect", "prefect_dask")
    ]
    assert offenders == []


def test_only_the_app_reaches_flows_and_only_lazily() -> None:
    # The app (CLI, console) is the one edge allowed to start a flow; it imports it inside the
    # command so that the library modules and `p2p --help` never load Prefect.
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {module} (in function: {lazy})"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module, lazy in _imports(path)
        if _top(module) in ("flows", "tasks") and not (_package(path) == "app" and lazy)
    ]
    assert offenders == []


def test_packages_import_downwards_only() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE:
            continue  # p2p/__init__.py, p2p/__main__.py
        package = _package(path)
        for module, _ in _imports(path):
            parts = module.split(".")
            if parts[0] == "p2p" and len(parts) > 1 and parts[1] not in ALLOWED[package]:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}: {module}")
    assert offenders == []  # e.g. model and raster never import each other


def test_model_code_needs_only_torch_and_numpy() -> None:
    # A GPU box with only torch + numpy (and safetensors/Pillow for bundles and previews)
    # can train; the training loop itself takes nothing beyond torch and numpy.
    allowed = STDLIB | {"torch", "numpy", "p2p"}
    extra = {"bundle.py": {"safetensors"}, "preview.py": {"PIL"}}
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {module}"
        for path in sorted((PACKAGE / "model").rglob("*.py"))
        for module, _ in _imports(path)
        if _top(module) not in allowed | extra.get(path.name, set())
    ]
    assert offenders == []
    loop = ("training.py", "epoch.py")  # the loop and its epochs
    training = {m for f in loop for m, _ in _imports(PACKAGE / "model" / f)}
    assert {_top(m) for m in training} <= STDLIB | {"torch", "numpy", "p2p"}
    assert {m for m in training if m.startswith("p2p.")} <= {
        "p2p.core.errors",
        "p2p.core.fsutil",
        "p2p.core.config",  # under TYPE_CHECKING only
        *(f"p2p.model.{n}" for n in ("checkpoint", "metrics", "networks", "normalization")),
        *(f"p2p.model.{n}" for n in ("pix2pix", "preview", "augment", "distributed", "epoch")),
    }


def test_the_check_sees_nested_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    if True:\n        from prefect import flow\n")
    assert _imports(probe) == [("prefect", True)]
    assert all(_top(m) in ORCHESTRATION for m, _ in _imports(probe))
