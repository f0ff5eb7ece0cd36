"""What every task source shares: the `Example` record, the `Task` interface, split
checks and a few small helpers (stable hashing, answer extraction, reading JSON)."""

from __future__ import annotations

import difflib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from halora.errors import UsageError

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)


@dataclass(frozen=True)
class Example:
    """One item: the model reads `prompt`, training puts loss on `answer`."""

    task: str  # task name
    prompt: str  # full text given to the model, already formatted with the task's template
    answer: str  # gold completion (for multiple choice: the gold option's text)
    options: tuple[str, ...] = ()  # candidate completions for log-likelihood MC; () = generation
    gold: int = -1  # index of the gold option in `options` (-1 for generation-only items)
    meta: Mapping[str, Any] = field(default_factory=dict)  # source record, for scorers/reports


class Task(ABC):
    """A named dataset with three disjoint splits and a scorer for generated text.

    Attributes every task sets:
        name            unique within one load_tasks() result
        chance          accuracy of random guessing among `options` (mean of 1/len(options));
                        0.0 for generation-only tasks (a random string is never right)
        max_new_tokens  generation budget for `score`d completions
    """

    name: str
    chance: float
    max_new_tokens: int

    @abstractmethod
    def examples(self, split: Split, n: int | None = None) -> list[Example]:
        """The first `n` examples of `split` (all of the split's default size if None).

        Deterministic: the same task and arguments give the same list, and a smaller `n`
        gives a prefix of a larger one.
        """

    @abstractmethod
    def score(self, example: Example, completion: str) -> float:
        """Score generated text (the new tokens only, decoded) in [0, 1]."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def check_split(task: str, split: str, n: int | None) -> None:
    """Raise UsageError unless `split` is a split name and `n` a count (or None)."""
    if split not in SPLITS:
        raise UsageError(f"task {task}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise UsageError(f"task {task}: n must be a non-negative integer or None, got {n!r}")


def first_line(completion: str) -> str:
    """The first non-empty line, stripped: a tiny model keeps talking after its answer."""
    for line in completion.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def is_int(value: Any) -> bool:
    """An int that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def unknown_choice(what: str, value: str, choices: Sequence[str]) -> str:
    """The message for a name that is not among `choices`, with close matches first."""
    close = difflib.get_close_matches(value, choices, n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown {what} {value!r}{hint}; choices: {', '.join(choices)}"


def read_json_list(path: Path, what: str) -> list[Any]:
    """The JSON list in `path`; UsageError naming the file (and `what` it should hold) otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found ({what})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read ({what}): {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(
            f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}; fix the file"
        ) from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a JSON list of records ({what}), got a {type(data).__name__}")
    return data
