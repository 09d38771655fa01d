"""What p2p imports directly, pyproject declares (issue 19 item 7): a module that arrives only
as another package's dependency can vanish when that package changes its own."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Imported directly but pinned exactly by the package named: declaring them too could only
#: conflict with that pin.
PINNED_BY = {"pydantic_core": "pydantic", "annotated_types": "pydantic"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]).lower()


def _imports(folders: list[str]) -> set[str]:
    found = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"p2p", "tasks", "flows", "__future__"}


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    runtime |= {_name(r) for r in project["optional-dependencies"]["onnx"]}
    distributions = packages_distributions()
    undeclared = []
    for module in sorted(_imports(["p2p", "tasks", "flows"])):
        if module in PINNED_BY:
            assert _name(PINNED_BY[module]) in runtime
            continue
        names = {_name(d) for d in distributions.get(module, [module])}
        if not names & runtime:
            undeclared.append(f"{module} ({', '.join(sorted(names))})")
    assert undeclared == []


def test_rio_cogeo_is_a_development_tool_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "rio-cogeo" not in {_name(r) for r in project["dependencies"]}
    assert "rio_cogeo" not in _imports(["p2p", "tasks", "flows"])
