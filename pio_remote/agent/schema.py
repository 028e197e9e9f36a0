"""One checker for what the agent is handed: its owner's agent.toml and a client's call params.

Both declare their shape as Python types (a dataclass's fields, a handler's
parameters), so one walk over those types checks both, and a value that passes
is the type its reader declared. The errors say what broke and where (``key`` is
a path such as ``uploader[1].ports[2]``); each caller phrases them in its own
voice (a config file's key, a call's parameter).

Types it knows: ``Any``, ``None``, ``str``, ``int``, ``float``, ``bool``,
``list[...]``, ``dict[str, ...]``, unions of those, ``Globs`` (a string or a list
of strings, kept as a list) and lists of dataclasses (TOML's ``[[table]]``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NewType, Union

# One glob or several: `ports = "/dev/ttyUSB*"` and `ports = ["/dev/ttyUSB*", "/dev/ttyACM*"]`.
Globs = NewType("Globs", list)


@dataclass(frozen=True)
class Field:
    kind: Any
    required: bool


class SchemaError(Exception):
    """A value that breaks the schema; ``key`` is where, as a path from the top."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class UnknownKey(SchemaError):
    def __init__(self, key: str, known: Iterable[str]):
        super().__init__(key)
        self.known = sorted(known)


class MissingKey(SchemaError):
    """``key`` is the table that lacks ``name`` ("" for the top)."""

    def __init__(self, key: str, name: str):
        super().__init__(key)
        self.name = name


class WrongType(SchemaError):
    def __init__(self, key: str, kind: Any, value: object):
        super().__init__(key)
        self.expected = describe(kind)
        self.value = value


def dataclass_fields(cls: type) -> dict[str, Field]:
    hints = typing.get_type_hints(cls)
    return {
        f.name: Field(
            hints[f.name],
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    }


def function_fields(fn: Callable[..., Any], skip: int = 1) -> dict[str, Field]:
    """A function's named parameters after the first ``skip``; TypeError for a type no
    checker knows, so a handler declared wrong fails at start, not at its first call."""
    hints = typing.get_type_hints(fn)
    spec = {}
    for name, p in list(inspect.signature(fn).parameters.items())[skip:]:
        if p.kind is not p.POSITIONAL_OR_KEYWORD and p.kind is not p.KEYWORD_ONLY:
            raise TypeError(f"{fn.__name__}: parameter {name} must be a named one")
        describe(hints[name])
        spec[name] = Field(hints[name], p.default is p.empty)
    return spec


def check_table(fields: dict[str, Field], raw: object, where: str = "") -> dict[str, Any]:
    """``raw`` checked against ``fields``; keys under ``where`` (``"uploader[1]."``)."""
    if not isinstance(raw, dict):
        error = WrongType(where.rstrip("."), dict[str, Any], raw)
        error.expected = "a table"  # what TOML calls it; a CALL's params are always one
        raise error
    for key in raw:
        if key not in fields:
            raise UnknownKey(f"{where}{key}", fields)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = check(f.kind, raw[name], f"{where}{name}")
        elif f.required:
            raise MissingKey(where.rstrip("."), name)
    return values


def check(kind: Any, value: object, key: str) -> Any:
    """``value`` if it is a ``kind``, with Globs made lists and tables made dataclasses."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and value is not None:
            return check(others[0], value, key)  # Optional[X]: X's error is the precise one
        for alternative in args:
            try:
                return check(alternative, value, key)
            except SchemaError:
                pass
        raise WrongType(key, kind, value)
    if kind is Globs:
        return Globs([value] if isinstance(value, str) else check(list[str], value, key))
    if origin is list:
        if not isinstance(value, list):
            raise WrongType(key, kind, value)
        (item,) = args
        if dataclasses.is_dataclass(item):
            fields = dataclass_fields(item)  # type: ignore[arg-type]
            return [item(**check_table(fields, v, f"{key}[{i}].")) for i, v in enumerate(value, 1)]
        return [check(item, v, f"{key}[{i}]") for i, v in enumerate(value, 1)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise WrongType(key, kind, value)
        return {k: check(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if not _is(kind, value):
        raise WrongType(key, kind, value)
    return value


def _is(kind: Any, value: object) -> bool:
    if kind is Any:
        return True
    if kind is None or kind is type(None):
        return value is None
    if kind is bool or kind is str:
        return isinstance(value, kind)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    raise TypeError(f"no checker for {kind!r}")  # a schema bug, not the user's


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def describe(kind: Any) -> str:
    """What a ``kind`` may hold, in words; TypeError for a type no checker knows."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return "any JSON value"
    if kind is None or kind is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if kind is Globs:
        return "a glob string or a list of them"
    if origin is list:
        (item,) = args
        if dataclasses.is_dataclass(item):
            return "a list of tables ([[...]])"
        if item in _PLURALS:
            return f"a list of {_PLURALS[item]}"
        return f"a list of ({describe(item)})"
    if origin is dict:
        return "an object" if args[1] is Any else f"an object of ({describe(args[1])})"
    if kind not in _NAMES:
        raise TypeError(f"no checker for {kind!r}")
    return _NAMES[kind]


def show(value: object, table: str = "an object") -> str:
    """What a wrong value was, short: ``a string ('lots')``."""
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    if value is None:
        return "null"
    name = names.get(type(value), "a list" if isinstance(value, list) else table)
    text = repr(value)
    return f"{name} ({text[:40]}{'...' if len(text) > 40 else ''})"


def suggest(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'port_glob'?)`` for a near miss, else ""."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
