"""The Python API: `import p2p` stays cheap, and docs/python-api.md's example runs as it stands
(tiny demo data, real stages in this process) and gives what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def test_import_p2p_loads_nothing_heavy() -> None:
    code = (
        "import sys, p2p; print(sorted(m for m in ('torch', 'rasterio', 'prefect', "
        "'p2p.app.api') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stderr


def _example() -> str:
    text = (ROOT / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1
    return str(blocks[0])


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict[str, Any] = {}
        exec(compile(_example(), "docs/python-api.md", "exec"), namespace)
    finally:
        os.chdir(here)
    result, pred, scores = namespace["result"], namespace["pred"], namespace["scores"]
    assert Path(result.model, "weights.safetensors").is_file()
    assert result._repr_png_().startswith(PNG)  # the validation picture
    assert pred._repr_png_().startswith(PNG)  # the quicklook
    assert Path(pred.output) == tmp_path / "heldout.tif"
    assert scores["overall"]["mae"] > 0
    printed = capsys.readouterr().out
    assert f"model:  {result.model}" in printed and "skill:  MAE on the same pixels" in printed
    # the plan printed first, before anything ran
    assert re.search(r"^train +run +never built in this workspace$", printed, re.MULTILINE)
