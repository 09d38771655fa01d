"""The reference pages generated from the code, so they cannot drift from it.

``make docs`` (``python -m p2p.app.reference docs``) writes:

- ``docs/configuration.md`` from the pydantic models (`PipelineConfig`, `BatchPredictConfig`
  and the scene models): every field with its type, default, bounds and description;
- ``docs/cli.md`` from the Typer app: every command with its usage, help and options;
- ``docs/record.schema.json``: the JSON schema of a run record (`p2p.stages.record`).

``tests/test_docs.py`` fails when a committed page differs from what the code generates.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

#: Page name → generator; the order of `write_reference`.
PAGES = ("configuration.md", "cli.md", "record.schema.json")


def _type_name(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML terms: ``int``, ``cog | gtiff``, ..."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {
    annotated_types.Gt: ">",
    annotated_types.Ge: "≥",
    annotated_types.Lt: "<",
    annotated_types.Le: "≤",
    annotated_types.MultipleOf: "multiple of",
    annotated_types.MinLen: "at least items:",
    annotated_types.MaxLen: "at most items:",
}


def _bounds(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for kind, symbol in _BOUNDS.items():
            if isinstance(item, kind):  # one-field dataclasses: Gt(gt=0), Le(le=1024), ...
                (value,) = dataclasses.astuple(item)  # type: ignore[call-overload]
                found.append(f"{symbol} {value}")
    return ", ".join(found)


def _default(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        return "null" if field.default is None else f"`{field.default}`"
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]
        return "see below" if isinstance(made, BaseModel) else f"`{made}`"
    return "**required**"


def _table(model: type[BaseModel]) -> str:
    rows = ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(
            f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | "
            f"{_bounds(field)} | {description} |"
        )
    return "\n".join(rows)


def _models(root: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """`root` and every model its fields use, depth first, once each."""
    seen: list[type[BaseModel]] = []

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            for inner in _nested(field.annotation):
                walk(inner)

    walk(root)
    yield from seen


def _nested(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _nested(arg)


def configuration_page() -> str:
    """docs/configuration.md: the training and batch-prediction configs, field by field."""
    from p2p.core.config import BatchPredictConfig, PipelineConfig

    parts = [
        "# Configuration reference\n",
        "Generated from the pydantic models by `make docs`; do not edit by hand. A training "
        "config (`p2p run CONFIG.yaml`, the `train-pipeline` flow's form) is a "
        "`PipelineConfig`; a batch prediction (the `batch-predict` flow) is a "
        "`BatchPredictConfig`. Unknown keys and values out of bounds are refused before any "
        "work, naming the field; relative paths resolve against the YAML file's folder; "
        "`--set section.field=value` overrides a field on the command line.\n",
    ]
    done: set[type[BaseModel]] = set()
    for root in (PipelineConfig, BatchPredictConfig):
        for model in _models(root):
            if model in done:
                continue
            done.add(model)
            doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
            parts.append(f"## {model.__name__}\n\n{doc}\n\n{_table(model)}\n")
    return "\n".join(parts)


def _option_rows(command: Any) -> list[str]:
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        kind = _param_type(param)
        default = param.default
        shown = "" if default in (None, (), [], False) or callable(default) else f"`{default}`"
        if param.required:
            shown = "**required**"
        help_text = (getattr(param, "help", None) or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {names} | {kind} | {shown} | {help_text} |")
    return rows


_WORDS = {str: "text", int: "integer", float: "number", bool: "flag"}


def _param_type(param: Any) -> str:
    annotation = param.type_descriptor.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        return f"{_WORDS.get(args[0], 'value')}, repeatable"
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0]
    word = _WORDS.get(annotation, "value")
    return f"{word} (argument)" if param.param_type_name == "argument" else word


def _commands(group: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        yield path, command
        if hasattr(command, "commands"):
            yield from _commands(command, path)


def cli_page() -> str:
    """docs/cli.md: every `p2p` command with its usage, help and options."""
    import typer
    from typer._click import Context  # Typer 0.29 vendors Click here

    from p2p.app.cli import app

    root = typer.main.get_command(app)
    parts = [
        "# Command-line reference\n",
        "Generated from the Typer app by `make docs`; do not edit by hand. Every command "
        "prints one line `error: <where>: <problem>` on bad input (exit code 2 for usage, 1 "
        "for data) and a traceback only with `p2p --debug COMMAND`.\n",
        f"## p2p\n\n{_help(root)}\n\n" + _options_table(root),
    ]
    for path, command in _commands(root, "p2p"):
        context = Context(command, info_name=path, terminal_width=100, max_content_width=100)
        usage = command.get_usage(context).replace("Usage: ", "")
        parts.append(f"## {path}\n\n```\n{usage}\n```\n\n{_help(command)}\n\n")
        parts[-1] += _options_table(command)
    return "\n".join(parts)


def _help(command: Any) -> str:
    return "\n".join(line.strip() for line in (command.help or "").strip().splitlines())


def _options_table(command: Any) -> str:
    rows = _option_rows(command)
    if not rows:
        return ""
    header = ["| option | type | default | help |", "|---|---|---|---|"]
    return "\n".join(header + rows) + "\n"


def generate() -> dict[str, str]:
    """Page name → its generated text."""
    from p2p.stages.record import record_schema

    return {
        "configuration.md": configuration_page(),
        "cli.md": cli_page(),
        "record.schema.json": record_schema(),
    }


def write_reference(folder: str | Path) -> list[Path]:
    """Write the generated pages into `folder` (atomically each); returns their paths."""
    from p2p.core.fsutil import atomic_write_text

    written = []
    for name, text in generate().items():
        path = Path(folder) / name
        atomic_write_text(path, text)
        written.append(path)
    return written


if __name__ == "__main__":
    for page in write_reference(sys.argv[1] if len(sys.argv) > 1 else "docs"):
        print(f"wrote {page}")
