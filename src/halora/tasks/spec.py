"""The task spec grammar and `load_tasks`.

    default                                  DEFAULT_SUITE (reasoning-gym, easy settings)
    rg:NAME[(key=value,...)][,NAME...]       reasoning-gym generators; list values are
                                             "|"-separated; name= renames the task
    commonsense:FOLDER[:TASK,...]            the LLM-Adapters commonsense test sets
    json:FILE                                your own prompt/answer records (.json, .jsonl)

Several specs join with ";" (or come as a list of strings).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from halora.errors import UsageError
from halora.tasks.base import Task, unknown_choice
from halora.tasks.commonsense import COMMONSENSE_TASKS, open_commonsense
from halora.tasks.jsonfile import JsonTask
from halora.tasks.reasoning_gym import DEFAULT_SUITE, ReasoningGymTask, RgOptions, generator_registry

SPEC_HELP = "default, rg:NAME[(key=value,...)][,NAME...], commonsense:FOLDER[:TASK,...] or json:FILE"
# Which load_tasks(**options) keys each source takes; `name` is per task, never global.
_SOURCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "rg": tuple(key for key in RgOptions.names() if key != "name"),
    "commonsense": ("seed", "val_size", "max_new_tokens"),
    "json": ("seed", "max_new_tokens"),
}


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise UsageError(f"unbalanced ')' in task spec {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise UsageError(f"unbalanced '(' in task spec {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _literal(text: str) -> Any:
    """A value of no known type: bool, None, int or float where the text reads as one."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _read_as(value: str, kind: type, where: str) -> Any:
    """Spec text as a value of `kind` (bool, an Enum, int, float or str; else a literal)."""
    try:
        if issubclass(kind, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return value.lower() in ("true", "1", "yes")
        if issubclass(kind, (enum.Enum, int, float, str)):
            return kind(value)
    except ValueError as err:
        raise UsageError(f"{where}: cannot read {value!r} ({err})") from None
    return _literal(value)


def _coerce(value: str, default: Any, where: str) -> Any:
    """Spec text as a value of the type of a generator option's default; a list or tuple
    default reads "|"-separated items, each as its first item's type."""
    if isinstance(default, (list, tuple)):
        items = [v.strip() for v in value.split("|") if v.strip()]
        if default:
            return type(default)(_coerce(v, default[0], where) for v in items)
        return type(default)(_literal(v) for v in items)
    return _read_as(value, type(default), where)


def _field_default(config_cls: type, key: str) -> Any:
    """The default of a generator config field (None if it has none or does not exist)."""
    for f in dataclasses.fields(config_cls):
        if f.name == key:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def _rg_task(entry: str, options: Mapping[str, Any]) -> ReasoningGymTask:
    """One `NAME` or `NAME(key=value,...)` of an rg: spec."""
    registry = generator_registry()
    match = re.fullmatch(r"([A-Za-z0-9_]+)\s*(?:\((.*)\))?", entry, flags=re.S)
    if not match:
        raise UsageError(f"cannot read task {entry!r}; write NAME or NAME(key=value,...)")
    gen, args = match.group(1), match.group(2)
    if gen not in registry:
        raise UsageError(unknown_choice("reasoning-gym task", gen, sorted(registry)))
    settings: dict[str, Any] = {k: v for k, v in options.items() if k in _SOURCE_OPTIONS["rg"]}
    for arg in _split_top(args) if args and args.strip() else []:
        key, eq, value = arg.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise UsageError(f"rg:{gen}: cannot read option {arg!r}; write key=value")
        where = f"rg:{gen} option {key}"
        if key in RgOptions.names():
            settings[key] = _read_as(value, RgOptions.value_type(key), where)
        else:
            settings[key] = _coerce(value, _field_default(registry[gen][1], key), where)
    return ReasoningGymTask(gen, **settings)


def _parse_rg(body: str, options: Mapping[str, Any]) -> list[Task]:
    entries = [e for e in _split_top(body) if e]
    if not entries:
        raise UsageError(f"rg: names no task; write e.g. rg:leg_counting; use {SPEC_HELP}")
    return [_rg_task(entry, options) for entry in entries]


def _parse_commonsense(body: str, options: Mapping[str, Any]) -> list[Task]:
    """FOLDER or FOLDER:TASK,...; a tail that names no known task is part of the folder
    when that folder exists (a path may hold ":")."""
    path, names = body, list(COMMONSENSE_TASKS)
    head, sep, tail = body.rpartition(":")
    if sep and tail and not tail.startswith(("/", "\\")):
        wanted = [t.strip() for t in tail.split(",") if t.strip()]
        lower = {t.lower(): t for t in COMMONSENSE_TASKS}
        if wanted and all(t.lower() in lower for t in wanted):
            path, names = head, [lower[t.lower()] for t in wanted]
        elif not Path(body).expanduser().exists():
            bad = next(t for t in wanted if t.lower() not in lower) if wanted else tail
            raise UsageError(
                unknown_choice("commonsense task", bad, COMMONSENSE_TASKS)
                + f" (or, if {body} is meant as one folder: it does not exist)"
            )
    if not path:
        raise UsageError(f"commonsense: needs a folder, e.g. commonsense:/data/LLM-Adapters; use {SPEC_HELP}")
    settings = {k: v for k, v in options.items() if k in _SOURCE_OPTIONS["commonsense"]}
    return list(open_commonsense(Path(path).expanduser(), names, **settings))


def _source_of(text: str) -> str:
    """ "rg", "commonsense" or "json" for one spec ("default" is reasoning-gym)."""
    if text == "default":
        return "rg"
    source, sep, _ = text.partition(":")
    source = source.strip().lower()
    if sep and source in _SOURCE_OPTIONS:
        return source
    hint = ""
    name = re.sub(r"\(.*", "", text, flags=re.S).strip()
    if name and name in generator_registry():
        hint = f" (did you mean rg:{text}?)"
    raise UsageError(f"unknown task spec {text!r}{hint}; use {SPEC_HELP}")


def _parse_one(text: str, options: Mapping[str, Any]) -> list[Task]:
    source = _source_of(text)
    if text == "default":
        return [t for spec in DEFAULT_SUITE for t in _parse_one(spec, options)]
    body = text.partition(":")[2].strip()
    if source == "rg":
        return _parse_rg(body, options)
    if source == "commonsense":
        return _parse_commonsense(body, options)
    if not body:
        raise UsageError(f"json: needs a file, e.g. json:/data/pairs.json; use {SPEC_HELP}")
    settings = {k: v for k, v in options.items() if k in _SOURCE_OPTIONS["json"]}
    return [JsonTask(body, **settings)]


def load_tasks(spec: str | Sequence[str], **options: Any) -> list[Task]:
    """Tasks from a spec: "default", "rg:a,b(k=v)", "commonsense:DIR[:t1,t2]", "json:FILE".

    A string may hold several specs separated by ";"; a list holds one spec per item (use
    it for paths that contain ";"). `options` apply to every task that takes them: seed,
    val_size and max_new_tokens for every source, and the other RgOptions fields but name
    for reasoning-gym; options written in a task's parentheses win.
    Raises UsageError for anything malformed, naming the problem and the fix.
    """
    parts = spec.split(";") if isinstance(spec, str) else list(spec)
    parts = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
    if not parts:
        raise UsageError(f"no tasks given; use {SPEC_HELP}")
    sources = {_source_of(p) for p in parts}
    accepted = set().union(*(_SOURCE_OPTIONS.get(s, ()) for s in sources))
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UsageError(
            f"unknown task option {', '.join(unknown)}; these tasks take "
            f"{', '.join(sorted(accepted)) or 'no options'}"
        )
    tasks = [t for p in parts for t in _parse_one(p, options)]
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(
            f"task name {', '.join(dup)} appears twice; rename one, e.g. rg:{dup[0]}(...,name={dup[0]}_2)"
        )
    return tasks
