"""Pydantic's validation errors as one line that says what to do.

Pydantic's own messages leak its internals (``Value error, ...``, ``Extra inputs are not
permitted``, a union member's class name in the location). `first_error` gives the field as
the user wrote it (``scenes[0].source``) and a message that offers the fix: close matches for a
misspelt field, and the valid fields otherwise.
"""

from __future__ import annotations

import difflib
import re
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

#: A model-level check names its field first: ``tiling.chip_size: 48 must be ...``.
_FIELD_FIRST = re.compile(r"^([a-z_]\w*(?:\.[a-z_]\w*|\[\d+\])+): (.*)$", re.DOTALL)


def first_error(exc: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """(field, message) of the first error `model` raised, both as a user reads them.

    Args:
        exc: The error of ``model.model_validate``.
        model: The validated model (to list the fields an unknown key could have meant).
    """
    err = exc.errors()[0]
    members = _model_names(model)  # pydantic puts the union member it tried into the location
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p in members)]
    field = dotted(loc)
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden" and loc:
        return field, unknown_field(str(loc[-1]), fields_at(model, err["loc"][:-1]))
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    match = _FIELD_FIRST.match(msg)
    if match and not loc:
        return match.group(1), match.group(2)
    return field or "config", msg


def dotted(loc: list[Any]) -> str:
    """A location as written in YAML paths: ``scenes[0].source``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def unknown_field(name: str, valid: list[str]) -> str:
    """The message for a key no model field has: close matches, else every valid field."""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    if close:
        return f"unknown field {name!r}; did you mean {' or '.join(close)}?"
    return f"unknown field {name!r}; the fields here are {', '.join(valid)}"


def fields_at(model: type[BaseModel], loc: tuple[Any, ...] | list[Any]) -> list[str]:
    """The field names of the model found at `loc` inside `model` (a union: all members')."""
    models = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        named = [m for m in models if m.__name__ == part]
        if named:  # pydantic names the union member it tried
            models = named
            continue
        found: list[type[BaseModel]] = []
        for m in models:
            if part in m.model_fields:
                found += _models_in(m.model_fields[part].annotation)
        models = found
    return sorted({name for m in models for name in m.model_fields})


def _model_names(model: type[BaseModel]) -> set[str]:
    """The class names of `model` and of every model its fields hold, at any depth."""
    names: set[str] = set()
    todo = [model]
    while todo:
        current = todo.pop()
        if current.__name__ not in names:
            names.add(current.__name__)
            todo += [m for f in current.model_fields.values() for m in _models_in(f.annotation)]
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``list[A | B]`` → [A, B])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, types.UnionType) or get_args(annotation):
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return []
