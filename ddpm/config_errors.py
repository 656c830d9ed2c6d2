"""One line per pydantic error of params.yaml or an override: where (the file or flag, the dotted
key), what was expected (from the field's type and bounds, in words) and what was given.
"""

import json
import math
import types
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

# An override of one param: (where it came from, e.g. "--batch-size"; dotted key; value).
Override = tuple[str, str, Any]


def describe_error(err: dict[str, Any], label: str, overrides: Sequence[Override], root: type[BaseModel]) -> str:
    """One line for one pydantic error of the model `root`: source, dotted key path, what was expected,
    what was given."""
    keys, parent, field = _walk(err["loc"], root)
    path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
    source = next((s for s, key, _ in overrides if path == key or path.startswith((key + ".", key + "["))), None)
    if source is None:
        prefix = f"{label}: {path}"
    else:  # "--set train.lr" names its key already; "--lr" gets it in brackets
        prefix = source if path in source else f"{source} ({path})"
    if field is None:
        return f"{prefix}: unknown key; expected one of: {', '.join(parent.model_fields)}"
    expected = field.description or _expected(field.annotation, field.metadata)
    return f"{prefix}: expected {expected}, got {_show(err['input'])}"


def _walk(loc: Sequence[int | str], root: type[BaseModel]) -> tuple[list[int | str], type[BaseModel], FieldInfo | None]:
    """Follow an error's location through our models: the keys to print, the last model passed
    through, and the field the error is in (None where the location ends at a key that model does
    not declare: an unknown key)."""
    keys: list[int | str] = []
    parent: type[BaseModel] = root
    field: FieldInfo | None = None
    for part in loc:
        if field is None or _is_section(field.annotation):  # part is a key of one of our models
            parent = field.annotation if field else parent
            field = parent.model_fields.get(str(part))
            keys.append(part)
            if field is None:
                break
        elif isinstance(part, int):  # an index into a list field
            keys.append(part)
        elif (mapped := _mapping_types(field.annotation)) is not None:  # a key of a mapping (variants)
            keys.append(part)
            in_key = loc[-1] == "[key]"  # pydantic's mark of an error in the key itself
            field = FieldInfo.from_annotation(mapped[0 if in_key else 1])
            if in_key:
                break
        # any other part below a field is pydantic's name for a union's branch, however spelt: no key
    return keys, parent, field


def _mapping_types(annotation: Any) -> tuple[Any, Any] | None:
    """The key and value types of a mapping field whose values are one of our models, else None."""
    if get_origin(annotation) is dict and _is_section(get_args(annotation)[1]):
        return get_args(annotation)
    return None


def _is_section(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _expected(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """A few words for what a field accepts, e.g. "a positive integer" or "one of ddpm, ddim"."""
    origin = get_origin(annotation)
    if origin is Annotated:  # a Field(...) in it keeps its bounds in its own metadata
        inner, *extra = get_args(annotation)
        flat = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return _expected(inner, [*metadata, *flat])
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        null = " or null" if type(None) in get_args(annotation) else ""
        return " or ".join(_expected(a, metadata) for a in options) + null
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if origin is dict:
        return "a mapping"
    if origin is list:
        return f"a list of {_plural(_expected(get_args(annotation)[0]))}"
    if _is_section(annotation):
        return "a mapping with keys " + ", ".join(annotation.model_fields)
    if annotation is bool:
        return "true or false"
    if annotation in (int, float):
        # the bounds (annotated_types' Gt, Ge, Lt, Le) by the attribute each one has
        bounds = {k: v for m in metadata for k in ("gt", "ge", "lt", "le") if (v := getattr(m, k, None)) is not None}
        return _number(annotation is int, bounds)
    return "a string"


def _number(integer: bool, bounds: dict[str, Any]) -> str:
    noun = "integer" if integer else "number"
    if bounds == {"gt": 0}:
        return f"a positive {noun}"
    if bounds == {"ge": 0}:
        return f"a non-negative {noun}"
    if {"ge", "lt"} <= bounds.keys():
        return f"a {noun} in [{bounds['ge']}, {bounds['lt']})"
    return f"an {noun}" if integer else f"a {noun}"


def _plural(phrase: str) -> str:
    """The plural of a phrase from _expected: "a number in [0, 1)" → "numbers in [0, 1)"."""
    head, sep, tail = phrase.removeprefix("a ").removeprefix("an ").partition(" in ")
    return head + "s" + sep + tail


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # inf, nan (JSON would say Infinity)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
