"""The `p2p` command line: the Typer app (`p2p.app.typer_app`) with every command registered.

`main` is the console script. The commands live by what they work on: `run_commands` (the
training pipeline and the demo, through the Prefect flows) and `scene_commands` (predict, export
and evaluate scenes with a bundle, no Prefect).
"""

from __future__ import annotations

from p2p.app import config_commands, run_commands, scene_commands, workspace_commands
from p2p.app.typer_app import app, guard, main

__all__ = [
    "app",
    "config_commands",
    "guard",
    "main",
    "run_commands",
    "scene_commands",
    "workspace_commands",
]
