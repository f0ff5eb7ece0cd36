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
train_size, test_size, n_options and mc for reasoning-gym (`RgOptions` holds their
defaults and meaning).

Splits never share a question: reasoning-gym spaces its split seeds far apart and drops
held-out questions seen in train; commonsense tests on the official held-out files and
takes val from the training file; json records carry a split or go by a stable hash.
No network access, ever: everything is generated or read from local files.

Modules: base (Example, Task, shared helpers), reasoning_gym, commonsense, jsonfile (the
three sources) and spec (the spec grammar and load_tasks).
"""

from halora.tasks.base import SPLITS, Example, Task, first_line
from halora.tasks.commonsense import (
    ALPACA_INPUT_TEMPLATE,
    ALPACA_TEMPLATE,
    ANSWER_PREFIX,
    COMMONSENSE_PATTERNS,
    COMMONSENSE_TASKS,
    CommonsenseTask,
    alpaca_prompt,
    extract_commonsense_answer,
)
from halora.tasks.jsonfile import JsonTask
from halora.tasks.reasoning_gym import (
    CLOSED_ANSWER_SETS,
    DEFAULT_SUITE,
    DISTRACTOR_GROUPS,
    NUMERIC_ANSWERS,
    PROMPT_TEMPLATE,
    SEED_STRIDE,
    SPLIT_OFFSETS,
    ReasoningGymTask,
    RgOptions,
    answer_block,
)
from halora.tasks.spec import load_tasks

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
    "RgOptions",
    "Task",
    "alpaca_prompt",
    "answer_block",
    "extract_commonsense_answer",
    "first_line",
    "load_tasks",
]
