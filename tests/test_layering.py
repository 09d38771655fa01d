"""The layering contract (docs/architecture.md): packages import downwards only.

core ← bands ← raster, model (torch + numpy only) ← data, infer, demo ← stages ← app; Prefect
lives in tasks/ and flows/ only, and only p2p/app reaches up to flows (lazily, inside a
command). Tasks wrap stages (never the engines beneath them), flows compose tasks (never the
command line), and no modules import each other in a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "p2p"
ORCHESTRATION = ("prefect", "prefect_dask", "flows", "tasks")
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
#: What each package may import from p2p (itself included), at any depth.
ALLOWED = {
    "core": {"core"},
    "bands": {"core", "bands"},
    "raster": {"core", "raster"},
    "model": {"core", "bands", "model"},
    "data": {"core", "bands", "raster", "model", "data"},
    "infer": {"core", "bands", "raster", "model", "infer"},
    "demo": {"core", "raster", "demo"},
    "stages": {"core", "bands", "raster", "model", "data", "infer", "stages"},
    "app": {"core", "bands", "raster", "model", "data", "infer", "demo", "stages", "app"},
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


def test_the_app_never_imports_tasks() -> None:
    # The command line starts flows; what tasks do (artifacts, progress) reaches it through
    # the stage layer's progress protocol, never by importing Prefect's layer.
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((PACKAGE / "app").rglob("*.py"))
        for module, _ in _imports(path)
        if _top(module) == "tasks"
    ]
    assert offenders == []


def test_tasks_wrap_stages_not_engines() -> None:
    # A task runs a stage and publishes what the stage declares (its record, its report); the
    # engines beneath (data, infer, model, raster) are reached only through a stage.
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "tasks").rglob("*.py"))
        for module, _ in _imports(path)
        if module.startswith("p2p.") and module.split(".")[1] not in ("core", "stages")
    ]
    assert offenders == []


def test_flows_never_import_the_app() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "flows").rglob("*.py"))
        for module, _ in _imports(path)
        if module.startswith("p2p.app")
    ]
    assert offenders == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports at module level (imports inside functions are
    deferred on purpose and cannot form a cycle at import time)."""
    files = [p for d in ("p2p", "flows", "tasks") for p in sorted((ROOT / d).rglob("*.py"))]
    known = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        name = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def test_no_import_cycles() -> None:
    graph = _module_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


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
    # A GPU box with only torch + numpy (and safetensors/Pillow for bundles, checkpoints and
    # previews) can train; the training loop itself takes nothing beyond torch and numpy. The
    # band values it builds on (p2p.bands) hold to the same.
    allowed = STDLIB | {"torch", "numpy", "p2p"}
    extra = {"bundle.py": {"safetensors"}, "checkpoint.py": {"safetensors"}, "preview.py": {"PIL"}}
    files = [*(PACKAGE / "model").rglob("*.py"), *(PACKAGE / "bands").rglob("*.py")]
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {module}"
        for path in sorted(files)
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
        "p2p.core.threads",  # the thread budget of loader workers: the standard library only
        "p2p.core.config",  # under TYPE_CHECKING only
        "p2p.bands.normalization",
        *(f"p2p.model.{n}" for n in ("checkpoint", "metrics", "networks", "pix2pix", "preview")),
        *(f"p2p.model.{n}" for n in ("distributed", "epoch")),
    }


def test_the_check_sees_nested_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    if True:\n        from prefect import flow\n")
    assert _imports(probe) == [("prefect", True)]
    assert all(_top(m) in ORCHESTRATION for m, _ in _imports(probe))
