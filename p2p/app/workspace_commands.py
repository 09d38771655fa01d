"""`p2p workspace ls` and `p2p workspace prune`: see the stage folders a workspace has gathered
and free the disk of those no config uses (`p2p.stages.workspace` does the work).
"""

from __future__ import annotations

from typing import Any

import typer

from p2p.app.typer_app import app, guard, print_json

workspace_app = typer.Typer(help="See and prune a workspace's stage folders.", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")


def _configs(paths: list[str], overrides: list[str]) -> tuple[str, list[Any]]:
    """The checked configs and their one workspace.

    Raises:
        ConfigError: the configs name different workspaces.
    """
    from p2p.core.configfile import load_config
    from p2p.core.errors import ConfigError
    from p2p.core.roots import checked_pipeline_config

    configs = [checked_pipeline_config(load_config(p, overrides)) for p in paths]
    spaces = sorted({c.workspace for c in configs})
    if len(spaces) > 1:
        raise ConfigError(
            paths[1], f"its workspace {spaces[1]} is not {spaces[0]}; prune one at a time"
        )
    return spaces[0], configs


def _print_folders(folders: list[Any], header: str) -> None:
    """One plain line per folder (never cut to a terminal's width: the settings come last)."""
    from p2p.stages.workspace import age, human_bytes

    typer.echo(header)
    for f in folders:
        state = "complete" if f.complete else "partial"
        used = "used" if f.used else "-"
        line = f"  {f.stage:<8} {f.key}  {human_bytes(f.bytes):>9}  {age(f.modified):>7}  "
        typer.echo(f"{line}{state:<8}  {used:<4}  {f.settings}".rstrip())


@workspace_app.command("ls")
def ls(
    config: str | None = typer.Argument(
        None, help="Pipeline config: its workspace, and which folders it would use."
    ),
    workspace: str | None = typer.Option(
        None, "--workspace", help="The workspace to list (without CONFIG)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field."),
    as_json: bool = typer.Option(False, "--json", help="Print the folders as JSON."),
) -> None:
    """List every stage folder, and which ones CONFIG would use.

    Each line: stage, key, size, age, complete or partial, used (by CONFIG), and the
    settings that made the folder.

    Example: p2p workspace ls config.yaml
    """

    def body() -> None:
        from p2p.app.scene_commands import workspace_path
        from p2p.core.errors import ConfigError
        from p2p.stages.workspace import list_folders, used_paths

        if (config is None) == (workspace is None):
            raise ConfigError("workspace ls", "give a CONFIG or --workspace DIR (one of them)")
        if config is not None:
            ws, configs = _configs([config], overrides)
            folders = list_folders(ws, used_paths(configs))
        else:
            ws = workspace_path(str(workspace))
            folders = list_folders(ws)
        if as_json:
            print_json({"workspace": ws, "folders": [f.record() for f in folders]})
        else:
            _print_folders(folders, f"workspace {ws}: {len(folders)} stage folder(s)")

    guard(body)


@workspace_app.command("prune")
def prune(
    configs: list[str] = typer.Argument(
        ..., help="Pipeline configs whose folders stay (they must share one workspace)."
    ),
    keep: int = typer.Option(
        0, "--keep", min=0, help="Also keep the N newest unused folders of each stage."
    ),
    yes: bool = typer.Option(False, "--yes", help="Remove them (without it: a dry run)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field."),
    as_json: bool = typer.Option(False, "--json", help="Print what was (or would be) removed."),
) -> None:
    """Remove the stage folders no given config would use; a dry run unless --yes.

    Each folder is removed under its stage's lock: a folder a running stage holds is left.

    Example: p2p workspace prune config.yaml other.yaml --keep 1 --yes
    """

    def body() -> None:
        from p2p.stages import workspace as wsmod

        ws, checked = _configs(configs, overrides)
        doomed = wsmod.to_prune(wsmod.list_folders(ws, wsmod.used_paths(checked)), keep)
        outcomes = wsmod.prune(ws, doomed) if yes else [(f, "would remove") for f in doomed]
        freed = sum(f.bytes for f, outcome in outcomes if outcome != "in use")
        if as_json:
            rows = [{**f.record(), "outcome": outcome} for f, outcome in outcomes]
            print_json({"workspace": ws, "dry_run": not yes, "bytes": freed, "folders": rows})
            return
        for folder, outcome in outcomes:
            typer.echo(f"{outcome:<12} {folder.stage:<8} {folder.key}  {folder.settings}")
        verb = "freed" if yes else "would free"
        typer.echo(
            f"{verb} {wsmod.human_bytes(freed)} in {ws}" + ("" if yes else "; --yes to do it")
        )

    guard(body)
