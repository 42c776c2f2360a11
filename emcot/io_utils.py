"""Dependency-free helpers shared by every sub-package: strict dataclass parsing, JSON and safetensors files.

This module imports nothing from emcot, so codecs and experts can use it without pulling in the core.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file


def dataclass_from_dict(cls: type, data: dict[str, Any], label: str | None = None, where: str = "") -> Any:
    """``cls(**data)``, refusing keys ``cls`` does not have so a typo is never silently dropped.

    The error reads ``{label} [...]{where}; known keys are [...]`` (``label`` defaults to
    ``"unknown <ClassName> keys"``).
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        label = label if label is not None else f"unknown {cls.__name__} keys"
        raise ValueError(f"{label} {unknown}{where}; known keys are {sorted(known)}")
    return cls(**data)


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing or malformed one raises a ValueError naming the path.

    ``what`` says what the file is in the message (e.g. ``"trace file"``).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist; is this the right folder?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{what} {path} is not valid JSON ({err}); the file is corrupt or truncated"
        ) from None


def read_json_lines(path: str | Path, torn_tail_ok: bool = False) -> list[Any]:
    """The records of a JSON-lines file, blank lines skipped.

    With ``torn_tail_ok`` an unparsable *last* line (a write cut short by a kill) is dropped;
    a bad line anywhere else still raises a ValueError naming the file and line.
    """
    path = Path(path)
    lines = [
        (n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()
    ]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if torn_tail_ok and i == len(lines) - 1:
                break
            raise ValueError(f"{path} line {number} is not valid JSON ({err}); the file is corrupt") from None
    return records


def load_safetensors_folder(folder: str | Path, prefix: str = "model") -> dict[str, torch.Tensor]:
    """All tensors of ``{prefix}.safetensors`` or of the shards listed in ``{prefix}.safetensors.index.json``."""
    folder = Path(folder)
    single = folder / f"{prefix}.safetensors"
    index = folder / f"{prefix}.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = [folder / name for name in sorted(set(read_json(index)["weight_map"].values()))]
    else:
        found = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else "no such folder"
        raise ValueError(
            f"no safetensors weights in {folder} (looked for {single.name} and {index.name}; found {found}). "
            "emcot loads safetensors only; convert pickled .bin checkpoints with transformers' save_pretrained first"
        )
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except Exception as err:  # safetensors raises its own error types for truncated headers/data
            raise ValueError(
                f"cannot read weights from {file}: {err}. The file is truncated or corrupt"
            ) from None
    return tensors


# ---------------------------------------------------------------------------------------------
# Boundary checks: one place that turns a wrong type or a non-finite number into a clear error.


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed interval of a number: ``gt``/``ge`` below, ``lt``/``le`` above (None = open)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def violated_by(self, value: float) -> str | None:
        """The rule ``value`` breaks (e.g. ``"> 0"``), or None."""
        for bound, op, ok in (
            (self.gt, ">", lambda v, b: v > b),
            (self.ge, "≥", lambda v, b: v >= b),
            (self.lt, "<", lambda v, b: v < b),
            (self.le, "≤", lambda v, b: v <= b),
        ):
            if bound is not None and not ok(value, bound):
                return f"{op} {bound:g}"
        return None


POSITIVE = Range(gt=0)
NON_NEGATIVE = Range(ge=0)
UNIT_INTERVAL = Range(ge=0, le=1)
AT_LEAST_ONE = Range(ge=1)


class _Mismatch(Exception):
    """A value does not fit a type hint (internal; becomes a ValueError naming the field)."""


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if hint is float:
        return "a finite number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true/false"
    if hint is str:
        return "a string"
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if not args:
            return "a list"
        if origin is tuple and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or hint is dict:
        return "a mapping"
    return f"a {getattr(hint, '__name__', str(hint))}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _to_bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise _Mismatch


def _to_int(value: Any) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise _Mismatch


def _to_float(value: Any) -> float:
    if _is_number(value) and math.isfinite(float(value)):
        return float(value)
    raise _Mismatch


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Mismatch


_SCALARS: dict[Any, Any] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _to_union(value: Any, args: tuple) -> Any:
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg)
        except _Mismatch:
            continue
    raise _Mismatch


def _to_sequence(value: Any, origin: Any, args: tuple) -> Any:
    if not isinstance(value, (tuple, list)):
        raise _Mismatch
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise _Mismatch
        items = [_coerce(v, a) for v, a in zip(value, args, strict=True)]
    else:
        items = [_coerce(v, args[0]) for v in value] if args else list(value)
    return tuple(items) if origin is tuple else items


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` checked against ``hint`` (numpy scalars become Python ones; ints are valid floats)."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return value
    if hint in _SCALARS:
        return _SCALARS[hint](value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _to_union(value, args)
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Mismatch
    if origin in (tuple, list):
        return _to_sequence(value, origin, args)
    if origin is dict or hint is dict:
        expected: Any = dict
    elif dataclasses.is_dataclass(hint):
        # A nested section may still be a mapping here; its owner converts it (and checks it then).
        expected = (hint, dict)
    elif isinstance(hint, type):
        expected = hint
    else:
        return value  # a hint this checker does not model (callables, protocols): trust the caller
    if isinstance(value, expected):
        return value
    raise _Mismatch


def check_value(name: str, value: Any, hint: Any, bounds: Range | None = None) -> Any:
    """``value`` checked against the type ``hint`` and ``bounds``; a wrong one raises a ValueError naming ``name``.

    NaN and infinity are never valid numbers. Returns the value with numpy scalars turned into
    Python ones and integers given for floats turned into floats.
    """
    try:
        value = _coerce(value, hint)
    except _Mismatch:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"{name} must be {_describe(hint)}, got {type(value).__name__} {shown}") from None
    if bounds is not None and value is not None and not isinstance(value, bool):
        rule = bounds.violated_by(value)
        if rule is not None:
            raise ValueError(f"{name} must be {rule}, got {value}")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any, label: str | None = None, **bounds: Range) -> None:
    """Check every field of the dataclass ``obj`` against its annotation, and the named fields against ``bounds``.

    Meant for ``__post_init__``: wrong types, NaN/inf and out-of-range numbers fail at
    construction with the field's name (``{label}.{field}``; label defaults to the class name,
    ``""`` names the bare field)
    rather than deep inside a computation. Coerced values (numpy scalars, ints for floats, lists
    for tuples) are written back, also on frozen dataclasses.
    """
    cls: type = type(obj)
    label = label if label is not None else cls.__name__
    hints = _hints(cls)
    unknown = sorted(set(bounds) - set(hints))
    if unknown:
        raise TypeError(f"check_fields: {cls.__name__} has no fields {unknown}")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{label}.{f.name}" if label else f.name
        checked = check_value(name, value, hints[f.name], bounds.get(f.name))
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


E = typing.TypeVar("E", bound=enum.Enum)


def parse_choice(kind: type[E], value: Any, what: str) -> E:
    """The member of the enum ``kind`` whose value is ``value``; a typo names the closest valid choice.

    ``what`` names the setting in the message: ``unknown trace mode 'fulll' (did you mean
    'full'?); choose one of [...]``.
    """
    if isinstance(value, kind):
        return value
    choices = [str(member.value) for member in kind]
    if isinstance(value, str) and value in choices:
        return kind(value)
    close = difflib.get_close_matches(str(value), choices, n=1) if isinstance(value, str) else []
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown {what} {value!r}{hint}; choose one of {choices}")
