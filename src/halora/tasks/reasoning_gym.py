"""reasoning-gym generators as tasks: seeded disjoint splits, prompts and answer options.

Splits never share a question. reasoning-gym seeds item i of a dataset with
Random(seed + i), so nearby seeds give overlapping items; split seeds are therefore spaced
far apart: seed_of(split) = seed * SEED_STRIDE + SPLIT_OFFSETS[split] (train +0,
val +10,000,000, test +20,000,000; SEED_STRIDE 30,000,000), and no split may exceed
10,000,000 items. Different user seeds give disjoint windows too. Generators with a small
question space still repeat questions across seeds, so val and test also drop every item
whose question text is in the train split (the first `train_size` items) or earlier in
their own split. Asking for more train items than `train_size` is an error, so the
guarantee holds for everything a trainer can get.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args, get_type_hints

from halora.errors import UsageError
from halora.tasks.base import Example, Split, Task, check_split, first_line, is_int, unknown_choice

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"  # the answer follows after one space

SEED_STRIDE = 30_000_000
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 10_000_000, "test": 20_000_000}
MAX_SPLIT_ITEMS = 10_000_000  # keeps the three seed windows of one user seed disjoint


@dataclass(frozen=True)
class RgOptions:
    """halora's own options of one reasoning-gym task; the one place their defaults live.

    Everything else in a spec's parentheses goes to the generator's config. The task class
    takes its defaults from here and the spec grammar the option names and the type each
    value is read as; load_tasks(**options) passes every field but `name` to all tasks.

    These defaults used to be written in several places. The task class's keyword defaults
    were the ones in effect and are the values below; the spec grammar had a second table
    (0 for every size and for max_new_tokens, "" for name) that only told it how to read
    the text and never supplied a value. Two values differ on purpose: the default suite
    gives count_bits train_size=500, and the commonsense source has its own val_size
    default (500, in halora.tasks.commonsense).
    """

    name: str = field(default="", metadata={"help": "task name; empty: the generator's name"})
    seed: int = field(default=0, metadata={"help": "user seed; each split gets its own window of seeds"})
    train_size: int = field(default=2000, metadata={"help": "train items: the most a trainer can get"})
    val_size: int = field(default=200, metadata={"help": "val items when no count is asked for"})
    test_size: int = field(default=500, metadata={"help": "test items when no count is asked for"})
    n_options: int = field(
        default=4,
        metadata={"help": "options per multiple-choice item: the gold answer and n_options - 1 others"},
    )
    mc: bool = field(
        default=True,
        metadata={
            "help": "give options where the answers are a closed set or integers; false: generation only"
        },
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "generation budget; None: 16 for tasks with options, else 64"}
    )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def value_type(cls, key: str) -> type:
        """The type a spec's text for option `key` is read as (int for `int | None`: a
        spec cannot ask for None, which already is the default)."""
        hint = get_type_hints(cls)[key]
        return next(kind for kind in (get_args(hint) or (hint,)) if kind is not type(None))

    def check(self, label: str) -> None:
        """Raise UsageError for a value out of range, naming the task by `label`."""
        for key in ("train_size", "val_size", "test_size"):
            value = getattr(self, key)
            if not is_int(value) or not 0 <= value <= MAX_SPLIT_ITEMS:
                raise UsageError(f"{label}: {key} must be an integer in 0..{MAX_SPLIT_ITEMS}, got {value!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise UsageError(f"{label}: seed must be a non-negative integer, got {self.seed!r}")
        if self.max_new_tokens is not None and (not is_int(self.max_new_tokens) or self.max_new_tokens < 1):
            raise UsageError(f"{label}: max_new_tokens must be a positive integer")
        if not is_int(self.n_options) or self.n_options < 2:
            raise UsageError(f"{label}: n_options must be an integer >= 2, got {self.n_options!r}")


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


def generator_registry() -> dict[str, tuple[type, type]]:
    """reasoning-gym's generators by name: (dataset class, config class)."""
    from reasoning_gym.factory import DATASETS  # importing reasoning_gym registers them all

    return DATASETS


def answer_block(completion: str) -> str:
    """For multi-line answers (grids): the text before the first blank line or the next
    "Question:", stripped."""
    text = completion.strip()
    for stop in ("\n\n", "\nQuestion:"):
        text = text.split(stop, 1)[0]
    return text.strip()


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


def _closed_set_options(
    gold_text: str, labels: tuple[str, ...], groups: tuple[tuple[str, ...], ...], n: int, rng: random.Random
) -> list[str]:
    if len(labels) <= n:
        return list(labels)
    group = next((g for g in groups if gold_text in g), ())
    near = [x for x in group if x != gold_text]
    far = [x for x in labels if x != gold_text and x not in group]
    picked = rng.sample(near, min(n - 1, len(near)))
    options = picked + rng.sample(far, n - 1 - len(picked)) + [gold_text]
    rng.shuffle(options)
    return options


class ReasoningGymTask(Task):
    """A reasoning-gym generator as a task, with disjoint seeded splits.

    `options` and keyword settings named like RgOptions fields set halora's options (the
    keywords win); every other keyword goes to the generator's config.
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

    def __init__(self, generator: str, /, options: RgOptions | None = None, **settings: Any) -> None:
        registry = generator_registry()
        if generator not in registry:
            raise UsageError(unknown_choice("reasoning-gym task", generator, sorted(registry)))
        own = {key: value for key, value in settings.items() if key in RgOptions.names()}
        options = dataclasses.replace(options or RgOptions(), **own)
        self.generator = generator
        self.name = options.name or generator
        options.check(f"rg:{self.name}")
        self.seed = options.seed
        self.sizes = {"train": options.train_size, "val": options.val_size, "test": options.test_size}
        self.n_options = options.n_options
        self.config = self._generator_config(registry[generator][1], settings)
        self._datasets: dict[str, Any] = {}
        self._dataset("train", options.train_size)  # checks the generator settings now, not mid-run

        self.closed_set = CLOSED_ANSWER_SETS.get(generator) if options.mc else None
        self.numeric = NUMERIC_ANSWERS.get(generator) if options.mc else None
        if self.closed_set:
            self.chance = 1.0 / min(len(self.closed_set), options.n_options)
        elif self.numeric:
            self.chance = 1.0 / options.n_options
        else:
            self.chance = 0.0  # free-form generation: guessing the exact text is ~never right
        known = self.closed_set is not None or self.numeric is not None
        self.max_new_tokens = options.max_new_tokens or (16 if known else 64)
        self._cache: dict[str, list[Example]] = {}
        self._train_questions: frozenset[str] | None = None

    def _generator_config(self, config_cls: type, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The settings that are not halora's, checked against the generator's config fields."""
        config = {key: value for key, value in settings.items() if key not in RgOptions.names()}
        allowed = sorted(f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size"))
        unknown = sorted(set(config) - set(allowed))
        if unknown:
            raise UsageError(
                f"rg:{self.name}: unknown option {', '.join(unknown)}; the generator takes "
                f"{', '.join(allowed) or 'no options'} and halora takes "
                f"{', '.join(RgOptions.names())}"
            )
        return config

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

    def _options(self, split: str, index: int, gold_text: str) -> list[str]:
        """The item's answer options without their leading space ([] for generation only)."""
        rng = random.Random(f"halora-options:{self.generator}:{self.seed_of(split)}:{index}")
        if self.closed_set:
            if gold_text not in self.closed_set:
                raise UsageError(
                    f"rg:{self.name}: answer {gold_text!r} is outside the known answer set; pass mc=false"
                )
            groups = DISTRACTOR_GROUPS.get(self.generator, ())
            return _closed_set_options(gold_text, self.closed_set, groups, self.n_options, rng)
        if self.numeric:
            if not re.fullmatch(r"-?\d+", gold_text):
                raise UsageError(
                    f"rg:{self.name}: answer {gold_text!r} is not an integer, so "
                    f"no numeric options can be made; pass mc=false"
                )
            return _numeric_options(gold_text, self.numeric, self.n_options, rng)
        return []

    def _example(self, split: str, index: int, entry: dict[str, Any]) -> Example:
        if entry.get("answer") is None:
            raise UsageError(
                f"rg:{self.name}: the generator gives no reference answer (it checks answers "
                f"with a verifier), so there is nothing to train on; pick another task"
            )
        gold_text = str(entry["answer"]).strip()
        options = self._options(split, index, gold_text)
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
        check_split(self.name, split, n)
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
