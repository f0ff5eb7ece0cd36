"""Tasks: datasets with a prompt format, gold answers and a scorer.

A task hands out `Example`s for three splits and scores generated text:

    task.examples("train", n)  ->  list[Example]   # prompt + answer = the training text
    task.examples("test", n)   ->  list[Example]   # options/gold for log-likelihood MC
    task.score(example, completion) -> float       # 1.0 / 0.0 (reasoning-gym may give partial)

`prompt + answer` is exactly the text a trainer sees (no separator is inserted: where a
space belongs between them, it is the first character of `answer` and of every option).
Multiple choice by log-likelihood compares `prompt + option` over `options`; it degrades
gradually under weight noise where exact-match generation collapses, so every task that
has a small closed answer set (or a numeric answer) also gets `options`.

Three sources, selected by a spec string (several joined by ";", or a list of strings):

    default                                  DEFAULT_SUITE (reasoning-gym, easy settings)
    rg:leg_counting,basic_arithmetic         reasoning-gym generators, default settings
    rg:basic_arithmetic(max_terms=2,operators=+|-,name=add2)
                                             per-task options in parentheses; list values
                                             are "|"-separated; name= renames the task
    commonsense:/data/LLM-Adapters           the eight LLM-Adapters commonsense test sets
    commonsense:/data/LLM-Adapters:boolq,piqa
    json:/path/pairs.json  json:/path/pairs.jsonl
                                             your own {"prompt", "answer"} records

`load_tasks(spec, **options)` also takes options that apply to every task of the spec
(per-task parentheses win): seed, val_size and max_new_tokens for every source, and
train_size, test_size, n_options and mc for reasoning-gym.

Splits never share a question:
- reasoning-gym seeds item i of a dataset with Random(seed + i), so nearby seeds give
  overlapping items. Split seeds are therefore spaced far apart:
  seed_of(split) = seed * SEED_STRIDE + SPLIT_OFFSETS[split]
  (train +0, val +10,000,000, test +20,000,000; SEED_STRIDE 30,000,000), and no split may
  exceed 10,000,000 items. Different user seeds give disjoint windows too.
  Generators with a small question space still repeat questions across seeds, so val and
  test also drop every item whose question text is in the train split (the first
  `train_size` items) or earlier in their own split. Asking for more train items than
  `train_size` is an error, so the guarantee holds for everything a trainer can get.
- commonsense: the test files are the official held-out sets; the val split is a
  deterministic slice of the training file (see `CommonsenseTask`).
- json: records carry an optional "split"; others go by a stable hash of the prompt.

No network access, ever: everything is generated or read from local files.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import random
import re
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


def first_line(completion: str) -> str:
    """The first non-empty line, stripped: a tiny model keeps talking after its answer."""
    for line in completion.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def answer_block(completion: str) -> str:
    """For multi-line answers (grids): the text before the first blank line or the next
    "Question:", stripped."""
    text = completion.strip()
    for stop in ("\n\n", "\nQuestion:"):
        text = text.split(stop, 1)[0]
    return text.strip()


def _check_split(task: str, split: str, n: int | None) -> None:
    if split not in SPLITS:
        raise UsageError(f"task {task}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise UsageError(f"task {task}: n must be a non-negative integer or None, got {n!r}")


def _stable_int(*parts: object) -> int:
    """A hash that does not change between runs or machines (unlike hash())."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


# --------------------------------------------------------------------------------------
# reasoning-gym
# --------------------------------------------------------------------------------------

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"  # the answer follows after one space

SEED_STRIDE = 30_000_000
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 10_000_000, "test": 20_000_000}
MAX_SPLIT_ITEMS = 10_000_000  # keeps the three seed windows of one user seed disjoint

# Closed answer sets: every option is a label of the set (or gold + sampled distractors
# when the set is larger than n_options).
# fmt: off
_FAMILY_RELATIONS = (
    "mother", "father", "sister", "brother", "daughter", "son", "wife", "husband",
    "grandmother", "grandfather", "aunt", "uncle", "niece", "nephew",
    "mother-in-law", "father-in-law",
)
# fmt: on
CLOSED_ANSWER_SETS: dict[str, tuple[str, ...]] = {
    "syllogism": ("Yes", "No"),
    "family_relationships": _FAMILY_RELATIONS,
}
# Distractors come from the gold label's group first (hard negatives): a female relation
# gets female distractors, else the question's gender alone would rule most options out.
DISTRACTOR_GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "family_relationships": (_FAMILY_RELATIONS[0::2], _FAMILY_RELATIONS[1::2]),
}


@dataclass(frozen=True)
class _Numeric:
    """How to make near-miss distractors for an integer answer."""

    step: int = 1  # distance unit (2 for leg counts, which are mostly even: no parity shortcut)
    nonneg: bool = False  # the task's answers are never negative, so neither are distractors
    sign_flip: bool = True  # -gold is a plausible error for subtraction


NUMERIC_ANSWERS: dict[str, _Numeric] = {
    "leg_counting": _Numeric(step=2, nonneg=True, sign_flip=False),
    "basic_arithmetic": _Numeric(),
    "chain_sum": _Numeric(),
    "products": _Numeric(),
    "simple_equations": _Numeric(),
    "aiw": _Numeric(nonneg=True, sign_flip=False),
    "letter_counting": _Numeric(nonneg=True, sign_flip=False),
    "count_bits": _Numeric(nonneg=True, sign_flip=False),
    "gcd": _Numeric(nonneg=True, sign_flip=False),
    "lcm": _Numeric(nonneg=True, sign_flip=False),
}
_DISTRACTOR_MULTIPLES = (1, 2, 3, 4, 5, 10)

# Options of ReasoningGymTask itself; everything else in parentheses goes to the generator.
# fmt: off
_RG_OWN_OPTIONS = (
    "name", "seed", "train_size", "val_size", "test_size", "n_options", "mc", "max_new_tokens",
)
# fmt: on


def _rg_registry() -> dict[str, tuple[type, type]]:
    from reasoning_gym.factory import DATASETS  # importing reasoning_gym registers them all

    return DATASETS


def _numeric_options(gold_text: str, spec: _Numeric, n: int, rng: random.Random) -> list[str]:
    gold = int(gold_text)
    pool: list[int] = []
    for k in _DISTRACTOR_MULTIPLES:
        pool += [gold + k * spec.step, gold - k * spec.step]
    if spec.sign_flip and gold != 0:
        pool.append(-gold)
    pool = [c for c in dict.fromkeys(pool) if c != gold and (c >= 0 or not spec.nonneg)]
    options = [str(c) for c in rng.sample(pool, min(n - 1, len(pool)))] + [gold_text]
    rng.shuffle(options)
    return options


class ReasoningGymTask(Task):
    """A reasoning-gym generator as a task, with disjoint seeded splits.

    Prompt: PROMPT_TEMPLATE ("Question: {question}\\nAnswer:"), answer " {answer}".
    Options (when `mc` and the generator is known to have a closed or numeric answer):
      - CLOSED_ANSWER_SETS: all labels if there are at most `n_options`, else the gold
        label plus `n_options - 1` labels drawn from the set, from the gold label's
        DISTRACTOR_GROUPS group first (same-gender relations);
      - NUMERIC_ANSWERS: the gold number plus `n_options - 1` near misses
        (gold ± k*step, k in 1,2,3,4,5,10, and -gold), drawn per item;
      shuffled with an RNG seeded by (generator, split seed, item index): deterministic.
    `score` hands the first line of the completion (for multi-line answers, the text up to
    the first blank line; `answer_block`) to the generator's own scorer (`score_answer`,
    which gives partial credit for answers that contain the gold text).
    """

    def __init__(
        self,
        generator: str,
        *,
        name: str | None = None,
        seed: int = 0,
        train_size: int = 2000,
        val_size: int = 200,
        test_size: int = 500,
        n_options: int = 4,
        mc: bool = True,
        max_new_tokens: int | None = None,
        **config: Any,
    ) -> None:
        registry = _rg_registry()
        if generator not in registry:
            raise UsageError(_unknown_choice("reasoning-gym task", generator, sorted(registry)))
        self.generator = generator
        self.name = name or generator
        label = f"rg:{self.name}"
        for key, value in (
            ("train_size", train_size),
            ("val_size", val_size),
            ("test_size", test_size),
        ):
            if not _is_int(value) or not 0 <= value <= MAX_SPLIT_ITEMS:
                raise UsageError(f"{label}: {key} must be an integer in 0..{MAX_SPLIT_ITEMS}, got {value!r}")
        if not _is_int(seed) or seed < 0:
            raise UsageError(f"{label}: seed must be a non-negative integer, got {seed!r}")
        if max_new_tokens is not None and (not _is_int(max_new_tokens) or max_new_tokens < 1):
            raise UsageError(f"{label}: max_new_tokens must be a positive integer")
        if not _is_int(n_options) or n_options < 2:
            raise UsageError(f"{label}: n_options must be an integer >= 2, got {n_options!r}")
        self.seed = seed
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.n_options = n_options
        _, config_cls = registry[generator]
        allowed = sorted(f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size"))
        unknown = sorted(set(config) - set(allowed))
        if unknown:
            raise UsageError(
                f"{label}: unknown option {', '.join(unknown)}; the generator takes "
                f"{', '.join(allowed) or 'no options'} and halora takes "
                f"{', '.join(_RG_OWN_OPTIONS)}"
            )
        self.config = dict(config)
        self._datasets: dict[str, Any] = {}
        self._dataset("train", train_size)  # checks the generator settings now, not mid-run

        self.closed_set = CLOSED_ANSWER_SETS.get(generator) if mc else None
        self.numeric = NUMERIC_ANSWERS.get(generator) if mc else None
        if self.closed_set:
            self.chance = 1.0 / min(len(self.closed_set), n_options)
        elif self.numeric:
            self.chance = 1.0 / n_options
        else:
            self.chance = 0.0  # free-form generation: guessing the exact text is ~never right
        known = self.closed_set is not None or self.numeric is not None
        self.max_new_tokens = max_new_tokens or (16 if known else 64)
        self._cache: dict[str, list[Example]] = {}
        self._train_questions: frozenset[str] | None = None

    def seed_of(self, split: str) -> int:
        return self.seed * SEED_STRIDE + SPLIT_OFFSETS[split]

    def _dataset(self, split: str, size: int) -> Any:
        """The generator for `split`, able to index at least `size` items.

        reasoning-gym items depend on (seed + index) only, so a dataset rebuilt larger
        repeats the items it had (acre, which samples over its size, is the exception).
        Its size is kept to what is needed: some generators do work in proportion to it.
        """
        have = self._datasets.get(split)
        if have is None or len(have) < size:
            import reasoning_gym

            try:
                self._datasets[split] = reasoning_gym.create_dataset(
                    self.generator, size=max(size, 1), seed=self.seed_of(split), **self.config
                )
            except (ValueError, AssertionError, TypeError, KeyError) as err:
                text = str(err).strip()
                detail = text.splitlines()[0] if text else type(err).__name__
                raise UsageError(
                    f"rg:{self.name}: invalid generator settings {self.config}: {detail}"
                ) from err
        return self._datasets[split]

    def _example(self, split: str, index: int, entry: dict[str, Any]) -> Example:
        if entry.get("answer") is None:
            raise UsageError(
                f"rg:{self.name}: the generator gives no reference answer (it checks answers "
                f"with a verifier), so there is nothing to train on; pick another task"
            )
        gold_text = str(entry["answer"]).strip()
        options: list[str] = []
        rng = random.Random(f"halora-options:{self.generator}:{self.seed_of(split)}:{index}")
        if self.closed_set:
            if gold_text not in self.closed_set:
                raise UsageError(
                    f"rg:{self.name}: answer {gold_text!r} is outside the known answer set; pass mc=false"
                )
            if len(self.closed_set) <= self.n_options:
                options = list(self.closed_set)
            else:
                group = next((g for g in DISTRACTOR_GROUPS.get(self.generator, ()) if gold_text in g), ())
                near = [x for x in group if x != gold_text]
                far = [x for x in self.closed_set if x != gold_text and x not in group]
                k = self.n_options - 1
                picked = rng.sample(near, min(k, len(near)))
                options = picked + rng.sample(far, k - len(picked)) + [gold_text]
                rng.shuffle(options)
        elif self.numeric:
            if not re.fullmatch(r"-?\d+", gold_text):
                raise UsageError(
                    f"rg:{self.name}: answer {gold_text!r} is not an integer, so "
                    f"no numeric options can be made; pass mc=false"
                )
            options = _numeric_options(gold_text, self.numeric, self.n_options, rng)
        question = str(entry["question"]).strip()
        return Example(
            task=self.name,
            prompt=PROMPT_TEMPLATE.format(question=question),
            answer=" " + gold_text,
            options=tuple(" " + o for o in options),
            gold=options.index(gold_text) if options else -1,
            meta={"entry": entry, "split": split, "index": index, "seed": self.seed_of(split)},
        )

    def _train(self) -> list[Example]:
        if "train" not in self._cache:
            ds = self._dataset("train", self.sizes["train"])
            self._cache["train"] = [self._example("train", i, ds[i]) for i in range(self.sizes["train"])]
            self._train_questions = frozenset(e.meta["entry"]["question"] for e in self._cache["train"])
        return self._cache["train"]

    def _held_out(self, split: str, n: int) -> list[Example]:
        done = self._cache.setdefault(split, [])
        if len(done) >= n:
            return done[:n]
        self._train()
        assert self._train_questions is not None
        # candidates to look at before giving up on a tiny question space
        budget = min(20 * max(n, self.sizes[split]) + 1000, MAX_SPLIT_ITEMS)
        ds = self._dataset(split, budget)
        seen = {e.meta["entry"]["question"] for e in done}
        index = done[-1].meta["index"] + 1 if done else 0
        while len(done) < n and index < budget:
            entry = ds[index]
            question = entry["question"]
            if question not in self._train_questions and question not in seen:
                seen.add(question)
                done.append(self._example(split, index, entry))
            index += 1
        if len(done) < n:
            raise UsageError(
                f"rg:{self.name}: found only {len(done)} {split} questions that are not in the "
                f"{self.sizes['train']} train items; make the task harder or lower train_size"
            )
        return done[:n]

    def examples(self, split: Split, n: int | None = None) -> list[Example]:
        _check_split(self.name, split, n)
        size = self.sizes[split] if n is None else n
        if split == "train":
            if size > self.sizes["train"]:
                raise UsageError(
                    f"rg:{self.name}: asked for {size} train examples but train_size is "
                    f"{self.sizes['train']}; raise it, e.g. rg:{self.generator}(train_size={size})"
                )
            return self._train()[:size]
        if size > MAX_SPLIT_ITEMS:
            raise UsageError(f"rg:{self.name}: at most {MAX_SPLIT_ITEMS} {split} examples")
        return self._held_out(split, size)

    def score(self, example: Example, completion: str) -> float:
        entry = example.meta.get("entry") if example.meta else None
        if entry is None:
            raise UsageError(f"rg:{self.name}: example has no reasoning-gym entry in meta")
        gold = str(entry.get("answer", ""))
        answer = first_line(completion) if "\n" not in gold.strip() else answer_block(completion)
        ds = self._dataset("train", self.sizes["train"])
        return float(ds.score_answer(answer=answer, entry=entry))


# The default suite, chosen by measurement on SmolLM2-135M (LoRA r=4, 100 steps, batch 8, on
# a 7-task mix, 40 test items each; accuracy untrained -> trained, chance in brackets):
#   aiw (siblings)        0.33 -> 1.00 (0.25)      family_relationships  0.35 -> 0.85 (0.25)
#   basic_arithmetic      0.35 -> 0.68 (0.25)      count_bits            0.25 -> 0.42 (0.25)
#   syllogism             0.57 -> 0.62 (0.50)      leg_counting          0.35 -> 0.20 (0.25)
#   gcd (1..30)           0.95 -> 0.78 (0.25: already known untrained)
# The four learned best make the suite; count_bits is restricted to numbers < 1024 so the
# count is learnable rather than guessed. Every task is scored by log-likelihood over 4 options.
DEFAULT_SUITE: tuple[str, ...] = (
    # "Susan has 4 sisters and 3 brothers. How many sisters does James's brother have?" -> " 5"
    "rg:aiw(task_types=siblings,task_type_weights=1.0,max_entities=4)",
    # 3-4 person families: "How is Luna related to Jennifer?" -> " mother-in-law".
    "rg:family_relationships(min_family_size=3,max_family_size=4)",
    # a + b or a - b with 1-2 digit operands: "Calculate 5 - 33." -> " -28".
    "rg:basic_arithmetic(min_terms=2,max_terms=2,min_digits=1,max_digits=2,operators=+|-,"
    "allow_parentheses=false,allow_negation=false)",
    # "How many 1 bits are there in the binary representation of the number 77?" -> " 4"
    "rg:count_bits(max_n=1023,train_size=500)",
)


# --------------------------------------------------------------------------------------
# LLM-Adapters commonsense
# --------------------------------------------------------------------------------------

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


def _read_json_list(path: Path, what: str) -> list[Any]:
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
        return _ARC_OBQA[_stable_int("arc-obqa", instruction) % len(_ARC_OBQA)]

    def splits(self) -> dict[str, dict[str, list[Example]]]:
        if self._splits is None:
            path = self.train_path
            data = _read_json_list(path, "LLM-Adapters training records")
            records = []
            for i, item in enumerate(data):
                instruction = _string_field(path, i, item, "instruction", required=True)
                input_ = _string_field(path, i, item, "input", required=False)
                output = _string_field(path, i, item, "output", required=True)
                answer = _string_field(path, i, item, "answer", required=True).strip()
                if not output.strip():
                    raise UsageError(
                        f"{path}: item {i} has an empty 'output'; training needs the response text"
                    )
                labels = _labels_of(path, i, instruction, answer, None)
                task = self.owner(instruction, labels)
                options = tuple(ANSWER_PREFIX + label for label in labels)
                records.append((i, instruction, input_, output, answer, task, options, labels))
            # val: the val_size records (at most a tenth of the file) whose salted hash of
            # the prompt text is smallest: independent of file order, same every run.
            n_val = min(self.val_size, len(records) // 10)
            order = sorted(records, key=lambda r: (_stable_int(self.seed, r[1], r[2]), r[0]))
            val = sorted(order[:n_val], key=lambda r: r[0])
            val_texts = {(r[1], r[2]) for r in val}
            train = [r for r in records if (r[1], r[2]) not in val_texts]
            out: dict[str, dict[str, list[Example]]] = {
                s: {t: [] for t in COMMONSENSE_TASKS} for s in ("train", "val")
            }
            for split, rows in (("train", train), ("val", val)):
                for i, instruction, input_, output, answer, task, options, labels in rows:
                    out[split][task].append(
                        Example(
                            task=task,
                            prompt=alpaca_prompt(instruction, input_),
                            answer=output,
                            options=options,
                            gold=labels.index(answer),
                            meta={"file": str(path), "index": i, "label": answer},
                        )
                    )
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

    def __init__(self, folder: _CommonsenseFolder, task: str, max_new_tokens: int = 32) -> None:
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

    def _load_test(self) -> list[Example]:
        if self._test is None:
            path = self.folder.test_path(self.name)
            data = _read_json_list(path, f"{self.name} test records")
            test = []
            for i, item in enumerate(data):
                instruction = _string_field(path, i, item, "instruction", required=True)
                input_ = _string_field(path, i, item, "input", required=False)
                answer = _string_field(path, i, item, "answer", required=True).strip()
                labels = _labels_of(path, i, instruction, answer, self.name)
                options = tuple(ANSWER_PREFIX + label for label in labels)
                gold = labels.index(answer)
                test.append(
                    Example(
                        task=self.name,
                        prompt=alpaca_prompt(instruction, input_),
                        answer=options[gold],
                        options=options,
                        gold=gold,
                        meta={"file": str(path), "index": i, "label": answer},
                    )
                )
            self._test = test
        return self._test

    def examples(self, split: Split, n: int | None = None) -> list[Example]:
        _check_split(self.name, split, n)
        items = self._load_test() if split == "test" else self.folder.splits()[split][self.name]
        return list(items if n is None else items[:n])

    def score(self, example: Example, completion: str) -> float:
        gold = example.meta.get("label") if example.meta else None
        if gold is None:
            gold = example.answer.removeprefix(ANSWER_PREFIX).strip()
        return 1.0 if extract_commonsense_answer(self.name, completion) == gold else 0.0


# --------------------------------------------------------------------------------------
# Local JSON / JSONL
# --------------------------------------------------------------------------------------


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
        if not _is_int(max_new_tokens) or max_new_tokens < 1 or not _is_int(seed):
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
            return _read_json_list(path, "prompt/answer records")
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

    def _load(self) -> dict[str, list[Example]]:
        path = self.path
        rows: dict[str, list[Example]] = {s: [] for s in SPLITS}
        for i, rec in enumerate(self._records()):
            where = f"{path}: record {i}"
            if not isinstance(rec, dict):
                raise UsageError(
                    f'{where} is a {type(rec).__name__}, expected an object with "prompt" and "answer"'
                )
            prompt = rec.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise UsageError(f'{where}: "prompt" must be a non-empty string')
            options: tuple[str, ...] = ()
            gold = -1
            answer = rec.get("answer")
            if "options" in rec:
                raw = rec["options"]
                if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(o, str) for o in raw):
                    raise UsageError(f'{where}: "options" must be a list of at least 2 strings')
                options = tuple(raw)
                if "gold" in rec:
                    gold = rec["gold"]
                    if not _is_int(gold) or not 0 <= gold < len(options):
                        raise UsageError(
                            f'{where}: "gold" must be an index into options '
                            f"(0..{len(options) - 1}), got {gold!r}"
                        )
                    if answer is not None and answer != options[gold]:
                        raise UsageError(f'{where}: "answer" differs from options[gold]; drop one of them')
                elif isinstance(answer, str) and answer in options:
                    gold = options.index(answer)
                else:
                    raise UsageError(
                        f'{where}: has "options" but no "gold" index and its '
                        f'"answer" is not one of the options'
                    )
                answer = options[gold]
            elif "gold" in rec:
                raise UsageError(f'{where}: "gold" needs "options"')
            if not isinstance(answer, str):
                raise UsageError(f'{where}: "answer" must be a string (or give "options" and "gold")')
            split = rec.get("split")
            if split is None:
                bucket = _stable_int(self.seed, prompt) % 10
                split = "test" if bucket == 0 else "val" if bucket == 1 else "train"
            elif split not in SPLITS:
                raise UsageError(f'{where}: "split" is {split!r}; use one of {", ".join(SPLITS)}')
            rows[split].append(
                Example(
                    task=self.name,
                    prompt=prompt,
                    answer=answer,
                    options=options,
                    gold=gold,
                    meta={"file": str(path), "index": i, "record": rec},
                )
            )
        train_prompts = {e.prompt for e in rows["train"]}
        for split in ("val", "test"):
            rows[split] = [e for e in rows[split] if e.prompt not in train_prompts]
        return rows

    def examples(self, split: Split, n: int | None = None) -> list[Example]:
        _check_split(self.name, split, n)
        items = self._splits[split]
        return list(items if n is None else items[:n])

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if first_line(completion) == example.answer.strip() else 0.0


# --------------------------------------------------------------------------------------
# Spec parsing
# --------------------------------------------------------------------------------------

SPEC_HELP = "default, rg:NAME[(key=value,...)][,NAME...], commonsense:FOLDER[:TASK,...] or json:FILE"
# Which load_tasks(**options) keys each source takes.
_SOURCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "rg": ("seed", "train_size", "val_size", "test_size", "n_options", "mc", "max_new_tokens"),
    "commonsense": ("seed", "val_size", "max_new_tokens"),
    "json": ("seed", "max_new_tokens"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unknown_choice(what: str, value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown {what} {value!r}{hint}; choices: {', '.join(choices)}"


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


def _coerce(value: str, default: Any, where: str) -> Any:
    """Turn spec text into the type of the option's default value."""
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, enum.Enum):
            return type(default)(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return value
        if isinstance(default, (list, tuple)):
            items = [v.strip() for v in value.split("|") if v.strip()]
            if default:
                items = [_coerce(v, default[0], where) for v in items]
            else:
                items = [_literal(v) for v in items]
            return type(default)(items)
    except ValueError as err:
        raise UsageError(f"{where}: cannot read {value!r} ({err})") from None
    return _literal(value)


def _field_default(config_cls: type, key: str) -> Any:
    for f in dataclasses.fields(config_cls):
        if f.name == key:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


_RG_OWN_DEFAULTS: dict[str, Any] = {
    "name": "",
    "seed": 0,
    "train_size": 0,
    "val_size": 0,
    "test_size": 0,
    "n_options": 0,
    "mc": True,
    "max_new_tokens": 0,
}


def _parse_rg(body: str, options: Mapping[str, Any]) -> list[Task]:
    registry = _rg_registry()
    tasks: list[Task] = []
    entries = [e for e in _split_top(body) if e]
    if not entries:
        raise UsageError(f"rg: names no task; write e.g. rg:leg_counting; use {SPEC_HELP}")
    for entry in entries:
        match = re.fullmatch(r"([A-Za-z0-9_]+)\s*(?:\((.*)\))?", entry, flags=re.S)
        if not match:
            raise UsageError(f"cannot read task {entry!r}; write NAME or NAME(key=value,...)")
        gen, args = match.group(1), match.group(2)
        if gen not in registry:
            raise UsageError(_unknown_choice("reasoning-gym task", gen, sorted(registry)))
        kwargs: dict[str, Any] = {k: v for k, v in options.items() if k in _SOURCE_OPTIONS["rg"]}
        for arg in _split_top(args) if args and args.strip() else []:
            key, eq, value = arg.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key:
                raise UsageError(f"rg:{gen}: cannot read option {arg!r}; write key=value")
            where = f"rg:{gen} option {key}"
            if key in _RG_OWN_DEFAULTS:
                kwargs[key] = _coerce(value, _RG_OWN_DEFAULTS[key], where)
            else:
                kwargs[key] = _coerce(value, _field_default(registry[gen][1], key), where)
        tasks.append(ReasoningGymTask(gen, **kwargs))
    return tasks


def _parse_commonsense(body: str, options: Mapping[str, Any]) -> list[Task]:
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
                _unknown_choice("commonsense task", bad, COMMONSENSE_TASKS)
                + f" (or, if {body} is meant as one folder: it does not exist)"
            )
    if not path:
        raise UsageError(f"commonsense: needs a folder, e.g. commonsense:/data/LLM-Adapters; use {SPEC_HELP}")
    root = Path(path).expanduser()
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
    seed = options.get("seed", 0)
    val_size = options.get("val_size", 500)
    if not _is_int(seed) or not _is_int(val_size) or val_size < 0:
        raise UsageError(
            f"commonsense: seed and val_size must be non-negative integers, "
            f"got seed={seed!r}, val_size={val_size!r}"
        )
    folder = _CommonsenseFolder(root, seed, val_size)
    max_new = options.get("max_new_tokens", 32)
    if not _is_int(max_new) or max_new < 1:
        raise UsageError(f"commonsense: max_new_tokens must be a positive integer, got {max_new!r}")
    return [CommonsenseTask(folder, name, max_new_tokens=max_new) for name in dict.fromkeys(names)]


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
    if name and name in _rg_registry():
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
    kwargs = {k: v for k, v in options.items() if k in _SOURCE_OPTIONS["json"]}
    return [JsonTask(body, **kwargs)]


def load_tasks(spec: str | Sequence[str], **options: Any) -> list[Task]:
    """Tasks from a spec: "default", "rg:a,b(k=v)", "commonsense:DIR[:t1,t2]", "json:FILE".

    A string may hold several specs separated by ";"; a list holds one spec per item (use
    it for paths that contain ";"). `options` apply to every task that takes them (see
    the module docstring); options written in a task's parentheses win.
    Raises UsageError for anything malformed, naming the problem and the fix.
    """
    parts = [p for p in spec.split(";")] if isinstance(spec, str) else list(spec)
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


__all__ = [
    "ALPACA_INPUT_TEMPLATE",
    "ALPACA_TEMPLATE",
    "ANSWER_PREFIX",
    "CLOSED_ANSWER_SETS",
    "COMMONSENSE_PATTERNS",
    "COMMONSENSE_TASKS",
    "DEFAULT_SUITE",
    "DISTRACTOR_GROUPS",
    "NUMERIC_ANSWERS",
    "PROMPT_TEMPLATE",
    "SEED_STRIDE",
    "SPLITS",
    "SPLIT_OFFSETS",
    "CommonsenseTask",
    "Example",
    "JsonTask",
    "ReasoningGymTask",
    "Task",
    "alpaca_prompt",
    "answer_block",
    "extract_commonsense_answer",
    "first_line",
    "load_tasks",
]
