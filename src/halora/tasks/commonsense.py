"""The LLM-Adapters commonsense tasks: Alpaca prompts, their answer extraction and the
folder reader.

The test files are the official held-out sets; the val split is a deterministic slice of
the training file (see `CommonsenseTask`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from halora.errors import UsageError
from halora.seeds import split_hash
from halora.tasks.base import Example, Split, Task, check_split, is_int, read_json_list

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
COMMONSENSE_TRAIN_FILE = "commonsense_170k.json"
COMMONSENSE_VAL_SIZE = 500  # records of the training file held out for val (at most a tenth)
COMMONSENSE_MAX_NEW_TOKENS = 32  # as LLM-Adapters generates
# fmt: off
COMMONSENSE_TASKS: tuple[str, ...] = (
    "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande",
    "ARC-Easy", "ARC-Challenge", "openbookqa",
)
# fmt: on
# The words LLM-Adapters' commonsense_evaluate.py looks for: the first match in the output
# is the prediction. SIQA, ARC and OBQA share the answer1..answer5 pattern.
_ANSWER_N = tuple(f"answer{i}" for i in range(1, 6))
COMMONSENSE_PATTERNS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": _ANSWER_N,
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
    "ARC-Easy": _ANSWER_N,
    "ARC-Challenge": _ANSWER_N,
    "openbookqa": _ANSWER_N,
}
# Labels when an instruction has no "Answer format: a/b/c" line to read them from.
_DEFAULT_LABELS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": _ANSWER_N[:3],
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
    "ARC-Easy": _ANSWER_N[:4],
    "ARC-Challenge": _ANSWER_N[:4],
    "openbookqa": _ANSWER_N[:4],
}
ANSWER_PREFIX = "the correct answer is "  # LLM-Adapters' outputs: "the correct answer is X"
_FORMAT_LINE = re.compile(r"Answer format:\s*([A-Za-z0-9]+(?:\s*/\s*[A-Za-z0-9]+)+)")
_LABEL_FAMILY = re.compile(r"(true|false)|(solution[12])|(answer[1-5])|(ending[1-4])|(option[12])")
_FAMILY_OF_GROUP = ("boolq", "piqa", "answer", "hellaswag", "winogrande")
_ARC_OBQA = ("ARC-Easy", "ARC-Challenge", "openbookqa")


def alpaca_prompt(instruction: str, input: str = "") -> str:
    if input and input.strip():
        return ALPACA_INPUT_TEMPLATE.format(instruction=instruction, input=input)
    return ALPACA_TEMPLATE.format(instruction=instruction)


def extract_commonsense_answer(task: str, completion: str) -> str:
    """The first label of the task's pattern in the completion ("" if none), as
    LLM-Adapters' commonsense_evaluate.py does (case-sensitive, first match wins)."""
    pattern = "|".join(COMMONSENSE_PATTERNS[task])
    found = re.findall(pattern, completion.strip())
    return found[0] if found else ""


def _family(label: str) -> str | None:
    match = _LABEL_FAMILY.fullmatch(label)
    return _FAMILY_OF_GROUP[match.lastindex - 1] if match and match.lastindex else None


def _string_field(path: Path, i: int, item: Any, key: str, required: bool) -> str:
    if not isinstance(item, dict):
        raise UsageError(
            f"{path}: item {i} is a {type(item).__name__}, expected an object "
            f"with keys instruction, input, output, answer"
        )
    if key not in item or item[key] is None:
        if required:
            raise UsageError(
                f"{path}: item {i} has no {key!r} key; LLM-Adapters records have "
                f"instruction, input, output, answer"
            )
        return ""
    value = item[key]
    if not isinstance(value, str):
        raise UsageError(f"{path}: item {i}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _labels_of(path: Path, i: int, instruction: str, answer: str, task: str | None) -> tuple[str, ...]:
    """The option labels of one record: its "Answer format:" line, else the task's defaults."""
    found = _FORMAT_LINE.search(instruction)
    if found:
        labels = tuple(x.strip() for x in found.group(1).split("/"))
    elif task is not None:
        labels = _DEFAULT_LABELS[task]
    else:
        family = _family(answer)
        labels = (_ANSWER_N if family == "answer" else _DEFAULT_LABELS[family]) if family else ()
    allowed = COMMONSENSE_PATTERNS[task] if task else None
    for label in labels:
        if (
            (allowed is not None and label not in allowed)
            or _family(label) is None
            or (_family(label) != _family(labels[0]))
        ):
            want = "|".join(allowed) if allowed else "true|false, solutionN, answerN, endingN, optionN"
            raise UsageError(f"{path}: item {i}: answer format label {label!r} is not one of {want}")
    if answer not in labels:
        want = "/".join(labels) if labels else "true|false, solutionN, answerN, endingN, optionN"
        where = f"the {task} pattern " if task else ""
        raise UsageError(
            f"{path}: item {i}: answer {answer!r} does not match {where}{want}; fix the record or remove it"
        )
    return labels


class _TrainRecord(NamedTuple):
    """One checked record of the training file."""

    index: int
    instruction: str
    input: str
    output: str
    answer: str
    task: str
    labels: tuple[str, ...]

    def example(self, path: Path) -> Example:
        return Example(
            task=self.task,
            prompt=alpaca_prompt(self.instruction, self.input),
            answer=self.output,
            options=tuple(ANSWER_PREFIX + label for label in self.labels),
            gold=self.labels.index(self.answer),
            meta={"file": str(path), "index": self.index, "label": self.answer},
        )


class _CommonsenseFolder:
    """Reads (lazily, once) the LLM-Adapters layout shared by the eight tasks."""

    def __init__(self, root: Path, seed: int, val_size: int) -> None:
        self.root = root
        self.seed = seed
        self.val_size = val_size
        self._splits: dict[str, dict[str, list[Example]]] | None = None

    @property
    def train_path(self) -> Path:
        return self.root / COMMONSENSE_TRAIN_FILE

    def test_path(self, task: str) -> Path:
        return self.root / "dataset" / task / "test.json"

    @staticmethod
    def owner(instruction: str, labels: tuple[str, ...]) -> str:
        """Which test task a training record trains. SIQA has three answers; ARC-e, ARC-c
        and OBQA records share one format and are split among the three by a stable hash,
        so that the eight tasks' train splits together hold every record exactly once."""
        family = _family(labels[0])
        if family != "answer":
            assert family is not None
            return family
        if len(labels) == 3:
            return "social_i_qa"
        return _ARC_OBQA[split_hash("arc-obqa", instruction) % len(_ARC_OBQA)]

    def _train_records(self) -> list[_TrainRecord]:
        path = self.train_path
        records = []
        for i, item in enumerate(read_json_list(path, "LLM-Adapters training records")):
            instruction = _string_field(path, i, item, "instruction", required=True)
            input_ = _string_field(path, i, item, "input", required=False)
            output = _string_field(path, i, item, "output", required=True)
            answer = _string_field(path, i, item, "answer", required=True).strip()
            if not output.strip():
                raise UsageError(f"{path}: item {i} has an empty 'output'; training needs the response text")
            labels = _labels_of(path, i, instruction, answer, None)
            task = self.owner(instruction, labels)
            records.append(_TrainRecord(i, instruction, input_, output, answer, task, labels))
        return records

    def splits(self) -> dict[str, dict[str, list[Example]]]:
        """Train and val examples by task, read on first use."""
        if self._splits is None:
            records = self._train_records()
            # val: the val_size records (at most a tenth of the file) whose salted hash of
            # the prompt text is smallest: independent of file order, same every run.
            n_val = min(self.val_size, len(records) // 10)
            order = sorted(records, key=lambda r: (split_hash(self.seed, r.instruction, r.input), r.index))
            val = sorted(order[:n_val], key=lambda r: r.index)
            val_texts = {(r.instruction, r.input) for r in val}
            train = [r for r in records if (r.instruction, r.input) not in val_texts]
            out: dict[str, dict[str, list[Example]]] = {
                s: {t: [] for t in COMMONSENSE_TASKS} for s in ("train", "val")
            }
            for split, rows in (("train", train), ("val", val)):
                for record in rows:
                    out[split][record.task].append(record.example(self.train_path))
            self._splits = out
        return self._splits


class CommonsenseTask(Task):
    """One LLM-Adapters commonsense test set, e.g. ARC-Easy.

    Files (LLM-Adapters layout, under one folder):
        commonsense_170k.json          list of {instruction, input, output, answer}: train/val
        dataset/<task>/test.json       same records: test
    Prompt: the Alpaca template (ALPACA_TEMPLATE; ALPACA_INPUT_TEMPLATE when `input` is not
    empty). Training text: prompt + the record's `output` ("the correct answer is answer2").
    Options: ANSWER_PREFIX + each label of the record's "Answer format: a/b/c" line (else
    the task's usual labels), i.e. the very sentences the model was trained to write; they
    differ only in the label, so log-likelihood MC compares the label words. gold: the index
    of `answer` among the labels.
    Score: 1.0 when the first match of the task's pattern (COMMONSENSE_PATTERNS) in the
    completion is the gold label, as LLM-Adapters' commonsense_evaluate.py scores.
    Train split: the training file's records for this task (told apart by their label
    words; see _CommonsenseFolder.owner), minus the val slice. Val split: the val_size
    records (default 500, at most a tenth of the file) with the smallest stable hash of
    their prompt text salted with `seed`, filtered to this task; train records with the
    same prompt text as a val record are dropped. Both keep file order.
    chance: mean of 1/len(options) over the test file (the usual label count if it is
    missing); max_new_tokens: 32, as LLM-Adapters generates.
    """

    def __init__(
        self, folder: _CommonsenseFolder, task: str, max_new_tokens: int = COMMONSENSE_MAX_NEW_TOKENS
    ) -> None:
        self.folder = folder
        self.name = task
        self.max_new_tokens = max_new_tokens
        self._test: list[Example] | None = None

    @property
    def chance(self) -> float:  # type: ignore[override]
        try:
            test = self._load_test()
        except UsageError:
            return 1.0 / len(_DEFAULT_LABELS[self.name])
        return sum(1.0 / len(e.options) for e in test) / len(test) if test else 0.0

    def _test_example(self, path: Path, i: int, item: Any) -> Example:
        instruction = _string_field(path, i, item, "instruction", required=True)
        input_ = _string_field(path, i, item, "input", required=False)
        answer = _string_field(path, i, item, "answer", required=True).strip()
        labels = _labels_of(path, i, instruction, answer, self.name)
        options = tuple(ANSWER_PREFIX + label for label in labels)
        gold = labels.index(answer)
        return Example(
            task=self.name,
            prompt=alpaca_prompt(instruction, input_),
            answer=options[gold],
            options=options,
            gold=gold,
            meta={"file": str(path), "index": i, "label": answer},
        )

    def _load_test(self) -> list[Example]:
        if self._test is None:
            path = self.folder.test_path(self.name)
            data = read_json_list(path, f"{self.name} test records")
            self._test = [self._test_example(path, i, item) for i, item in enumerate(data)]
        return self._test

    def examples(self, split: Split, n: int | None = None) -> list[Example]:
        check_split(self.name, split, n)
        items = self._load_test() if split == "test" else self.folder.splits()[split][self.name]
        return list(items if n is None else items[:n])

    def score(self, example: Example, completion: str) -> float:
        gold = example.meta.get("label") if example.meta else None
        if gold is None:
            gold = example.answer.removeprefix(ANSWER_PREFIX).strip()
        return 1.0 if extract_commonsense_answer(self.name, completion) == gold else 0.0


def open_commonsense(
    root: Path,
    names: Sequence[str],
    seed: int = 0,
    val_size: int = COMMONSENSE_VAL_SIZE,
    max_new_tokens: int = COMMONSENSE_MAX_NEW_TOKENS,
) -> list[CommonsenseTask]:
    """The tasks `names` (duplicates dropped) of the LLM-Adapters folder `root`, sharing one
    reader; the folder's layout and the options are checked now, the files on first use."""
    if not root.is_dir():
        raise UsageError(
            f"commonsense folder {root} not found; point at the folder holding "
            f"{COMMONSENSE_TRAIN_FILE} and dataset/<task>/test.json"
        )
    if not (root / COMMONSENSE_TRAIN_FILE).exists() and not (root / "dataset").is_dir():
        raise UsageError(
            f"{root} holds neither {COMMONSENSE_TRAIN_FILE} nor dataset/; point "
            f"at the LLM-Adapters folder that has them"
        )
    if not is_int(seed) or not is_int(val_size) or val_size < 0:
        raise UsageError(
            f"commonsense: seed and val_size must be non-negative integers, "
            f"got seed={seed!r}, val_size={val_size!r}"
        )
    folder = _CommonsenseFolder(root, seed, val_size)
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise UsageError(f"commonsense: max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    return [CommonsenseTask(folder, name, max_new_tokens=max_new_tokens) for name in dict.fromkeys(names)]
