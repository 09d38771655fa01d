"""The generated reference pages match the code (`make docs` regenerates them), and the README
front page stays a guide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p2p.app.reference import PAGES, generate

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = DOCS.parent / "README.md"


@pytest.mark.parametrize("page", PAGES)
def test_committed_reference_matches_the_code(page: str) -> None:
    committed = (DOCS / page).read_text()
    assert committed == generate()[page], f"docs/{page} is stale: run `make docs`"


def test_reference_names_every_field_and_command() -> None:
    pages = generate()
    for field in ("chip_size", "lambda_l1", "tta", "n_workers", "output_format"):
        assert f"| `{field}` |" in pages["configuration.md"], field
    for command in ("run", "plan", "predict", "evaluate", "export", "demo"):
        assert f"## p2p {command}\n" in pages["cli.md"], command
    assert "| `--tile-size` | integer |" in pages["cli.md"]


def test_readme_is_a_short_guide_whose_links_resolve() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 200
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (DOCS.parent / target).is_file(), target
