"""`p2p config schema` (the config's JSON schema, for editors) and `p2p config init` (a
commented starting config with every field and its default; `--demo` also writes sample
scenes and fills the config in to train on them).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from p2p.app.typer_app import app, guard

if TYPE_CHECKING:
    from p2p.core.config import PipelineConfig

config_app = typer.Typer(help="Write a starting config, or print its JSON schema.")
app.add_typer(config_app, name="config")


@config_app.command("schema")
def schema(
    batch: bool = typer.Option(
        False, "--batch", help="The batch_predict flow's config instead of the pipeline's."
    ),
) -> None:
    """Print the JSON schema of a pipeline config (for editors' YAML completion).

    Example: p2p config schema > p2p.schema.json, then in VS Code's settings:
    "yaml.schemas": {"p2p.schema.json": "config*.yaml"}
    """

    def body() -> None:
        from p2p.core.config import BatchPredictConfig, PipelineConfig

        model = BatchPredictConfig if batch else PipelineConfig
        sys.stdout.write(json.dumps(model.model_json_schema(), indent=2, allow_nan=False) + "\n")

    guard(body)


@config_app.command("init")
def init(
    output: str | None = typer.Argument(
        None, metavar="[OUTPUT]", help="Config file to write (default: print it)."
    ),
    demo: bool = typer.Option(
        False,
        "--demo",
        help="Also write the demo's sample scenes (into demo-data/ beside OUTPUT) and set "
        "the config to train on them in a few minutes on a CPU.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
) -> None:
    """Write a commented starting config: every field, its default and what it means.

    Example: p2p config init config.yaml --demo && p2p run config.yaml
    """

    def body() -> None:
        from p2p.core.config import PipelineConfig
        from p2p.core.configdoc import commented_yaml
        from p2p.core.errors import ConfigError
        from p2p.core.fsutil import atomic_write_text

        target = Path(output) if output else None
        if target is not None and target.exists() and not force:
            raise ConfigError(target, "exists; choose another name, or --force to replace it")
        base = (target.absolute().parent if target else Path.cwd()).resolve()
        config = _demo_config(base) if demo else PipelineConfig()
        how = "p2p config init" + (" --demo" if demo else "")
        text = commented_yaml(config, f"Made by `{how}`. Relative paths are read from here.")
        if target is None:
            sys.stdout.write(text)
            return
        base.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
        typer.echo(f"wrote {target}; next: p2p plan {target}")

    guard(body)


def _demo_config(base: Path) -> PipelineConfig:
    """The demo's config with its scenes written under `base`/demo-data, paths relative."""
    from p2p.demo import demo_config, write_demo_scenes

    data = write_demo_scenes(base / "demo-data")
    scenes = [
        s.model_copy(
            update={
                "source": [os.path.relpath(p, base) for p in s.source],
                "target": [os.path.relpath(p, base) for p in s.target or []],
            }
        )
        for s in data.train
    ]
    return demo_config("work", scenes)
