"""The `p2p` commands that run the Prefect flows, and their plan: `plan`, `run`, `train-node`,
`demo`.

They register on the one Typer `app` (`p2p.app.typer_app`) and run through its `guard`.
"""

from __future__ import annotations

from typing import Any

import typer

from p2p.app.typer_app import THREADS_HELP, app, debugging, guard, print_json

# --- run / demo: the Prefect flows --------------------------------------------------------
# These two commands are the CLI's only way up into `flows/`; they import it inside the
# command (never at module level), so the library and `p2p --help` never load Prefect.
# tests/test_layering.py holds that line.


def _print_summary(record: dict[str, Any]) -> None:
    """The end of a run: every stage, the bundle, its skill and where the report is."""
    from p2p.app.summary import summary_lines

    for line in summary_lines(record):
        typer.echo(line)


def _print_plan(entries: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("stage", "status", "key", "why")
    for e in entries:
        table.add_row(e.label, e.status, e.record.key, e.why)
    Console().print(table)


def _plan_json(entries: Any) -> dict[str, Any]:
    return {
        "stages": {
            e.label: {"key": e.record.key, "path": e.record.path, "status": e.status, "why": e.why}
            for e in entries
        }
    }


def _training_plan(config: str, overrides: list[str], until: str | None) -> tuple[Any, Any]:
    """The checked config and its plan; nothing runs, Prefect is not imported."""
    from p2p.core.configfile import load_config
    from p2p.core.errors import ConfigError
    from p2p.core.roots import checked_pipeline_config
    from p2p.stages.pipeline import TRAINING, UNTIL
    from p2p.stages.plan import plan

    if until is not None and until not in UNTIL:
        raise ConfigError("--until", f"must be one of {', '.join(UNTIL)}, not {until!r}")
    cfg = checked_pipeline_config(load_config(config, overrides))
    return cfg, plan(TRAINING, cfg, cfg.workspace, until)


@app.command("plan")
def plan_command(
    config: str = typer.Argument(..., help="Pipeline config YAML."),
    until: str | None = typer.Option(None, "--until", help="Plan up to this stage."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Show, for each stage, whether it is cached or will run and why; runs nothing.

    Example: p2p plan config.yaml --set train.epochs=50
    """

    def body() -> None:
        _, entries = _training_plan(config, overrides, until)
        if as_json:
            print_json(_plan_json(entries))
        else:
            _print_plan(entries)

    guard(body)


@app.command()
def run(
    config: str = typer.Argument(..., help="Pipeline config YAML."),
    until: str | None = typer.Option(
        None, "--until", help="Stop after this stage: tile, dataset, train or evaluate."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config field, e.g. --set train.epochs=5 (repeatable)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show the plan (`p2p plan`)."),
    force: list[str] = typer.Option(
        [], "--force", help="Rebuild this stage and what depends on it (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help=THREADS_HELP + " Overrides the config's threads."
    ),
) -> None:
    """Run the training pipeline flow (tile → dataset → train → evaluate), cached per stage.

    When every stage is already cached, the record is printed without starting Prefect.

    Example: p2p run config.yaml --set train.epochs=50 --until train
    """

    def body() -> None:
        from p2p.core.errors import ConfigError
        from p2p.core.threads import use_threads
        from p2p.stages.pipeline import TRAINING, pipeline_record
        from p2p.stages.plan import force as force_stage
        from p2p.stages.plan import plan, records_of

        cfg, entries = _training_plan(config, overrides, until)
        if threads is not None:
            cfg = cfg.model_copy(update={"threads": threads})
        use_threads(cfg.threads)
        if dry_run:
            if as_json:
                print_json(_plan_json(entries))
            else:
                _print_plan(entries)
            return
        names = [step.stage.name for step in TRAINING.steps]
        for stage in force:
            if stage not in names:
                raise ConfigError("--force", f"must be one of {', '.join(names)}, not {stage!r}")
            force_stage(entries, stage)
        if force:
            entries = plan(TRAINING, cfg, cfg.workspace, until)
        if all(e.status == "cached" for e in entries):
            record = pipeline_record(TRAINING, cfg, records_of(entries))
        else:
            TRAINING.check(cfg)  # here too, so bad input costs no Prefect start-up
            record = _run_flow(cfg, until, plain=not as_json)
        if as_json:
            print_json(record)
        else:
            _print_summary(record)

    guard(body)


def _run_flow(cfg: Any, until: str | None, plain: bool = True) -> dict[str, Any]:
    """Run the training flow; Ctrl-C stops it with one line and exit code 130 (a rerun of the
    same command resumes)."""
    from p2p.app.console import console_progress_bars, ctrl_c_stops_stages, quiet_prefect
    from p2p.stages.watch import Interrupted

    with ctrl_c_stops_stages():  # before Prefect starts its server or any thread
        quiet_prefect(debugging())
        from flows.train_pipeline import train_pipeline

        try:
            with console_progress_bars(plain):
                return train_pipeline(cfg, until)  # type: ignore[arg-type]
        except Interrupted as stopped:
            typer.echo(stopped.line(), err=True)
            raise typer.Exit(130) from None


@app.command("train-node")
def train_node(
    config: str = typer.Argument(..., help="Pipeline config YAML (the same as `p2p run`'s)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config field, e.g. --set train.nodes=2 (repeatable)."
    ),
    wait: float = typer.Option(3600.0, "--wait", help="Seconds to wait for the train stage."),
) -> None:
    """Join, from another machine, the multi-node train stage that `p2p run` launches.

    Example (on the second machine): p2p train-node config.yaml --set train.nodes=2
    """

    def body() -> None:
        from p2p.core.configfile import load_config
        from p2p.core.roots import checked_pipeline_config
        from p2p.stages.train_node import join_training

        folder = join_training(checked_pipeline_config(load_config(config, overrides)), wait)
        typer.echo(f"trained in {folder}")

    guard(body)


@app.command()
def demo(
    workspace: str = typer.Option("demo-work", "--workspace", help="Folder for data and runs."),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """Generate sample scenes, train, predict two held-out scenes, mosaic and report (CPU).

    Example: p2p demo --workspace demo-work
    """

    def body() -> None:
        from p2p.app.console import console_progress_bars, quiet_prefect
        from p2p.core.threads import use_threads

        use_threads(threads)  # handed to the flow's tasks as P2P_THREADS when set
        quiet_prefect(debugging())
        from flows.demo import demo_flow

        with console_progress_bars(plain=not as_json):
            record = demo_flow(workspace)
        if as_json:
            print_json(record)
        else:
            _print_summary(record)

    guard(body)
