"""One settings system: dataclass fields that carry their help, bounds and aliases.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`::

    @dataclass(frozen=True)
    class LoraSettings:
        rank: int = setting(4, "LoRA rank r", min=1)

        def __post_init__(self) -> None:
            check(self)

From that one declaration halora derives everything else, so a field is described once:

- :func:`check` validates types, bounds and choices and names the bad field (UsageError);
- :func:`build` makes an instance from raw values (a TOML table, a study arm), coercing
  lists to tuples and ints to floats, and names the file and key on error;
  :func:`load_toml` reads a file (or one table of it) into any settings class;
- :func:`add_flags` / :func:`from_args` turn the fields into command-line flags
  (``rank`` -> ``--rank``; bools get ``--x/--no-x``; tuples take comma-separated values)
  and back, with the help text and default shown in ``--help``.

The metadata keys follow PEFT's habit of config fields that carry their own help
(``field(metadata={"help": ...})``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from halora.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    choices: Iterable[Any] | None = None,
    aliases: Iterable[str] = (),
    factory: Callable[[], Any] | None = None,
    flag: bool = True,
    repeat: bool = False,
) -> Any:
    """A dataclass field with its help text, bounds (inclusive), allowed values and old names.

    `aliases` are earlier spellings still accepted as flags and config keys; `flag=False`
    keeps a field out of the command line (set it in a file or in code); `repeat=True`
    makes a tuple's flag repeatable, one element each (for values that contain commas).
    """
    metadata = {
        "help": help,
        "min": min,
        "max": max,
        "choices": tuple(choices) if choices is not None else None,
        "aliases": tuple(aliases),
        "flag": flag,
        "repeat": repeat,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(cls: type, name: str) -> str:
    return _meta(_field(cls, name)).get("help", "")


def _meta(spec: dataclasses.Field) -> dict[str, Any]:
    return dict(spec.metadata) if spec.metadata else {}


def _field(cls: type, name: str) -> dataclasses.Field:
    return {spec.name: spec for spec in dataclasses.fields(cls)}[name]


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved type of each dataclass field (string annotations included)."""
    resolved = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    return {spec.name: resolved[spec.name] for spec in dataclasses.fields(cls)}


# --------------------------------------------------------------------------------------
# Types and bounds
# --------------------------------------------------------------------------------------


def _type_word(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"a list of {_type_word(args[0])}" if args else "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("nothing" if a is type(None) else _type_word(a) for a in args)
    if origin is dict or hint is dict:
        return "a table"
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as type `hint` (lists -> tuples, ints -> floats), or UsageError naming `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, where)
            except UsageError:
                continue
        raise UsageError(f"{where} must be {_type_word(hint)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):  # "a,b,c" as on the command line
            element = args[0] if args else str
            value = [_scalar(part.strip(), element, where) for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where} must be {_type_word(hint)}, got {value!r}")
        element = args[0] if args else Any
        return tuple(coerce(item, element, where) for item in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be {_type_word(hint)}, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if hint in (int, float, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise UsageError(f"{where} must be {_type_word(hint)}, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise UsageError(f"{where} must be {_type_word(hint)}, got {value!r}")
    return value


def check(settings: Any, what: str = "") -> None:
    """Types, bounds and choices of every field; the message names the field and the fix.
    Call it from __post_init__; it also normalises values (lists to tuples, ints to floats)."""
    what = what or _what(type(settings))
    for name, hint in hints(type(settings)).items():
        value = coerce(getattr(settings, name), hint, f"{what} {name}")
        _check_bounds(value, _meta(_field(type(settings), name)), f"{what} {name}")
        object.__setattr__(settings, name, value)  # lists become tuples, ints floats


def _what(cls: type) -> str:
    return getattr(cls, "WHAT", cls.__name__)


def check_bounds(value: Any, meta: dict[str, Any], where: str) -> None:
    """A value's bounds and choices as a field's metadata gives them (see `field_meta`)."""
    _check_bounds(value, meta, where)


def _check_bounds(value: Any, meta: dict[str, Any], where: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for item in values:
        if isinstance(item, float) and not math.isfinite(item):
            raise UsageError(f"{where} must be a finite number, got {item!r}")
        low, high, choices = meta.get("min"), meta.get("max"), meta.get("choices")
        if choices is not None and item not in choices:
            raise UsageError(f"{where}: unknown value {item!r}; use one of {', '.join(map(str, choices))}")
        if low is not None and isinstance(item, (int, float)) and item < low:
            raise UsageError(f"{where} must be >= {low:g}, got {item!r}")
        if high is not None and isinstance(item, (int, float)) and item > high:
            raise UsageError(f"{where} must be <= {high:g}, got {item!r}")


# --------------------------------------------------------------------------------------
# Building from raw values and TOML
# --------------------------------------------------------------------------------------


def key_names(cls: type) -> dict[str, str]:
    """Every accepted key (field name, alias, dashed spelling) -> its field name."""
    names = {}
    for spec in dataclasses.fields(cls):
        for key in (spec.name, *_meta(spec).get("aliases", ())):
            names[key] = spec.name
            names[key.replace("_", "-")] = spec.name
    return names


def normalise(cls: type, values: dict[str, Any], where: str, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """Raw keys -> field names, each value coerced to its field's type; unknown keys named."""
    names, types_of = key_names(cls), hints(cls)
    ignored = set(ignore)
    unknown = sorted(k for k in values if k not in names and k not in ignored)
    if unknown:
        known = ", ".join(spec.name for spec in dataclasses.fields(cls))
        raise UsageError(f"{where}: unknown key {', '.join(unknown)} (known: {known})")
    result = {}
    for key, value in values.items():
        if key in ignored:
            continue
        name = names[key]
        if isinstance(value, str) and _meta(_field(cls, name)).get("repeat"):
            value = [value]  # one element: its commas belong to it
        result[name] = coerce(value, types_of[name], f"{where}: {key}")
    return result


def build(cls: type, values: dict[str, Any], where: str, **fixed: Any) -> Any:
    """An instance of `cls` from raw values; `fixed` values are set by the caller."""
    return cls(**{**normalise(cls, values, where), **fixed})


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{what} {path} cannot be parsed: {first}") from err


def read_config(path: str | Path) -> dict[str, Any]:
    """A command's config file: TOML, or YAML for users of accelerate-style configs."""
    file = Path(path)
    if file.suffix not in (".yaml", ".yml"):
        data = read_toml(path)
    elif not file.is_file():
        raise UsageError(f"config file {path} does not exist")
    else:
        import yaml

        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"config file {path} cannot be parsed: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table of flag = value")
    return data


def load_toml(path: str | Path, cls: type, table: str | None = None, what: str = "config file") -> Any:
    """Any settings class from a TOML file, or from one [table] of it."""
    data = read_toml(path, what)
    if table is not None:
        data = data.get(table, {})
        if not isinstance(data, dict):
            raise UsageError(f"{what} {path}: [{table}] must be a table")
    where = f"{what} {path}" + (f" [{table}]" if table else "")
    return build(cls, data, where)


# --------------------------------------------------------------------------------------
# Command-line flags
# --------------------------------------------------------------------------------------


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    defaults: Any = None,
    preset: bool = False,
) -> None:
    """One flag per field of `cls` (its help, bounds and choices in --help).

    `defaults` (an instance) replaces the class's defaults. With `preset=True` every flag
    defaults to None, "keep the preset's value" (see :func:`given_flags`).
    """
    group = parser.add_argument_group(title)
    skipped, wanted = set(skip), set(only) if only is not None else None
    registry = field_registry(parser)
    for spec in dataclasses.fields(cls):
        meta = _meta(spec)
        if spec.name in skipped or not meta.get("flag", True):
            continue
        if wanted is not None and spec.name not in wanted:
            continue
        hint = hints(cls)[spec.name]
        default = None if preset else _default_of(spec, defaults)
        note = "default: the preset's" if preset else "default: %(default)s"
        flags = [flag_name(spec.name)] + [flag_name(alias) for alias in meta.get("aliases", ())]
        help_text = _help_text(meta, note)
        if hint is bool:
            group.add_argument(
                *flags, dest=spec.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif meta.get("repeat"):  # default None: from_args keeps the class's or the preset's
            group.add_argument(
                *flags,
                dest=spec.name,
                action="append",
                default=None,
                metavar="VALUE",
                help=help_text.replace("%(default)s", repr(default)),
            )
        else:
            group.add_argument(
                *flags,
                dest=spec.name,
                type=_parser_for(hint, flags[0]),
                default=default,
                metavar=_metavar(hint),
                help=help_text,
            )
        registry[spec.name] = hint
        field_meta(parser)[spec.name] = meta


def field_registry(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """dest -> type of every flag made from a settings field (config files are coerced by it)."""
    if not hasattr(parser, "halora_fields"):
        parser.halora_fields = {}  # type: ignore[attr-defined]
    return parser.halora_fields  # type: ignore[attr-defined]


def field_meta(parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    """dest -> bounds and choices of every flag made from a settings field (config files are
    checked by them, so a bad value is named with its file and key)."""
    if not hasattr(parser, "halora_meta"):
        parser.halora_meta = {}  # type: ignore[attr-defined]
    return parser.halora_meta  # type: ignore[attr-defined]


def _default_of(spec: dataclasses.Field, defaults: Any) -> Any:
    if defaults is not None:
        return getattr(defaults, spec.name)
    if spec.default is not _MISSING:
        return spec.default
    if spec.default_factory is not _MISSING:  # type: ignore[misc]
        return spec.default_factory()  # type: ignore[misc]
    return None


def _help_text(meta: dict[str, Any], default_note: str) -> str:
    """The field's help, its choices and bounds, and where its default comes from."""
    parts = [meta.get("help", "")]
    if meta.get("choices"):
        parts.append("one of " + ", ".join(map(str, meta["choices"])))
    low, high = meta.get("min"), meta.get("max")
    if low is not None or high is not None:
        parts.append(
            " ".join(
                p
                for p in (
                    f">= {low:g}" if low is not None else "",
                    f"<= {high:g}" if high is not None else "",
                )
                if p
            )
        )
    text = "; ".join(p for p in parts if p)
    return f"{text} ({default_note})" if default_note else text


def _metavar(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return "A,B,..."
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
    return {int: "N", float: "X", str: "TEXT"}.get(hint, "VALUE")


def _parser_for(hint: Any, flag: str) -> Callable[[str], Any]:
    """A string -> value parser for argparse that names the flag on bad input."""

    def parse(text: str) -> Any:
        origin = typing.get_origin(hint)
        if origin is tuple:
            element = typing.get_args(hint)[0]
            return tuple(_scalar(part.strip(), element, flag) for part in text.split(",") if part.strip())
        return _scalar(text, hint, flag)

    parse.__name__ = _type_word(hint)  # argparse names it in its error message
    return parse


def _scalar(text: str, hint: Any, flag: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
    try:
        return hint(text) if hint in (int, float) else text
    except ValueError as err:
        # a UsageError passes through argparse: one line naming the flag, exit status 2
        raise UsageError(f"{flag} must be {_type_word(hint)}, got {text!r}") from err


def from_args(args: argparse.Namespace, cls: type, base: Any = None, **fixed: Any) -> Any:
    """An instance of `cls` from parsed flags; flags left at None keep `base`'s values."""
    values = {}
    for spec in dataclasses.fields(cls):
        given = getattr(args, spec.name, None)
        if given is not None:
            values[spec.name] = tuple(given) if isinstance(given, list) else given
        elif base is not None:
            values[spec.name] = getattr(base, spec.name)
    return cls(**{**values, **fixed})


def given_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` the user set (flags that default to None and were given)."""
    return {
        spec.name: getattr(args, spec.name)
        for spec in dataclasses.fields(cls)
        if getattr(args, spec.name, None) is not None
    }
