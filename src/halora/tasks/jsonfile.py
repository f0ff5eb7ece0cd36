"""Your own prompt/answer records from a local JSON or JSONL file.

Records carry an optional "split"; the others go by a stable hash of the prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from halora.errors import UsageError
from halora.seeds import split_hash
from halora.tasks.base import (
    SPLITS,
    Example,
    Split,
    Task,
    check_split,
    first_line,
    is_int,
    read_json_list,
)


class JsonTask(Task):
    """Your own records: a JSON list, or JSONL (one object per line), of
        {"prompt": str, "answer": str, "options": [str, ...]?, "gold": int?, "split": str?}
    `prompt` is used verbatim; `prompt + answer` is the training text (put any space you
    want between them at the start of `answer` and of each option). With `options`, give
    `gold` (index) or an `answer` that is one of the options; `answer` defaults to
    options[gold]. Split: the record's "split" (train / val / test) if present, else a
    stable hash of the prompt (salted with `seed`): 10 % test, 10 % val, 80 % train. Val
    and test drop records whose prompt is also in train. A split may be empty.
    Score: 1.0 when the completion's first line equals the answer (both stripped).
    chance: mean of 1/len(options) over test records, 0 for records without options.
    Name: the file name without its extension.
    """

    def __init__(self, path: str | Path, *, seed: int = 0, max_new_tokens: int = 64) -> None:
        if not is_int(max_new_tokens) or max_new_tokens < 1 or not is_int(seed):
            raise UsageError(f"json:{path}: seed and max_new_tokens must be integers (max_new_tokens >= 1)")
        self.path = Path(path).expanduser()
        self.name = self.path.stem
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self._splits = self._load()
        test = self._splits["test"]
        self.chance = (
            sum(1.0 / len(e.options) if e.options else 0.0 for e in test) / len(test) if test else 0.0
        )

    def _records(self) -> list[Any]:
        path = self.path
        if path.suffix.lower() != ".jsonl":
            return read_json_list(path, "prompt/answer records")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise UsageError(f"{path}: file not found (prompt/answer records)") from None
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"{path}: cannot read: {err}") from None
        records = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UsageError(
                    f"{path}: line {lineno} is not valid JSON ({err.msg}); JSONL needs one object per line"
                ) from None
        return records

    @staticmethod
    def _options_and_gold(where: str, rec: dict[str, Any]) -> tuple[tuple[str, ...], int]:
        """The record's options and the index of its answer among them (() and -1 without)."""
        if "options" not in rec:
            if "gold" in rec:
                raise UsageError(f'{where}: "gold" needs "options"')
            return (), -1
        raw, answer = rec["options"], rec.get("answer")
        if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(o, str) for o in raw):
            raise UsageError(f'{where}: "options" must be a list of at least 2 strings')
        options = tuple(raw)
        if "gold" not in rec:
            if isinstance(answer, str) and answer in options:
                return options, options.index(answer)
            raise UsageError(
                f'{where}: has "options" but no "gold" index and its "answer" is not one of the options'
            )
        gold = rec["gold"]
        if not is_int(gold) or not 0 <= gold < len(options):
            raise UsageError(
                f'{where}: "gold" must be an index into options (0..{len(options) - 1}), got {gold!r}'
            )
        if answer is not None and answer != options[gold]:
            raise UsageError(f'{where}: "answer" differs from options[gold]; drop one of them')
        return options, gold

    def _split_of(self, where: str, rec: dict[str, Any], prompt: str) -> str:
        split = rec.get("split")
        if split is None:
            bucket = split_hash(self.seed, prompt) % 10
            return "test" if bucket == 0 else "val" if bucket == 1 else "train"
        if split not in SPLITS:
            raise UsageError(f'{where}: "split" is {split!r}; use one of {", ".join(SPLITS)}')
        return split

    def _example(self, i: int, rec: Any) -> tuple[str, Example]:
        """Record `i` checked and turned into (its split, its example)."""
        where = f"{self.path}: record {i}"
        if not isinstance(rec, dict):
            raise UsageError(
                f'{where} is a {type(rec).__name__}, expected an object with "prompt" and "answer"'
            )
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise UsageError(f'{where}: "prompt" must be a non-empty string')
        options, gold = self._options_and_gold(where, rec)
        answer = options[gold] if options else rec.get("answer")
        if not isinstance(answer, str):
            raise UsageError(f'{where}: "answer" must be a string (or give "options" and "gold")')
        example = Example(
            task=self.name,
            prompt=prompt,
            answer=answer,
            options=options,
            gold=gold,
            meta={"file": str(self.path), "index": i, "record": rec},
        )
        return self._split_of(where, rec, prompt), example

    def _load(self) -> dict[str, list[Example]]:
        rows: dict[str, list[Example]] = {s: [] for s in SPLITS}
        for i, rec in enumerate(self._records()):
            split, example = self._example(i, rec)
            rows[split].append(example)
        train_prompts = {e.prompt for e in rows["train"]}
        for split in ("val", "test"):
            rows[split] = [e for e in rows[split] if e.prompt not in train_prompts]
        return rows

    def examples(self, split: Split, n: int | None = None) -> list[Example]:
        check_split(self.name, split, n)
        items = self._splits[split]
        return list(items if n is None else items[:n])

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if first_line(completion) == example.answer.strip() else 0.0
