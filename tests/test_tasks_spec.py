"""The task spec grammar and load_tasks: typed options, joined specs, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from halora.errors import UsageError
from halora.tasks import RgOptions, load_tasks

COMMONSENSE = Path(__file__).parent / "fixtures" / "commonsense"


def test_spec_options_are_parsed_and_typed():
    (task,) = load_tasks(
        "rg:basic_arithmetic(max_terms=2,operators=+|-,allow_negation=false,name=add,"
        "train_size=50,n_options=3)"
    )
    assert task.name == "add" and task.n_options == 3 and task.sizes["train"] == 50
    assert task.config == {"max_terms": 2, "operators": ("+", "-"), "allow_negation": False}
    assert all(len(e.options) == 3 for e in task.examples("test", 10))
    assert task.chance == pytest.approx(1 / 3)
    # list-of-enum options (aiw.task_types) are converted to the generator's enum
    (aiw,) = load_tasks("rg:aiw(task_types=siblings,task_type_weights=1.0,train_size=20)")
    assert all("sisters" in e.prompt for e in aiw.examples("test", 10))
    # global options apply to every task; parentheses win
    tasks = load_tasks(["rg:leg_counting(train_size=7)", "rg:syllogism"], train_size=9)
    assert [len(t.examples("train")) for t in tasks] == [7, 9]


def test_semicolon_joins_specs():
    tasks = load_tasks("rg:leg_counting(train_size=5); rg:syllogism(train_size=5)")
    assert [t.name for t in tasks] == ["leg_counting", "syllogism"]


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        (
            "rg:leg_countin",
            {},
            r"unknown reasoning-gym task 'leg_countin' \(did you mean "
            r"leg_counting.*choices: .*syllogism",
        ),
        ("leg_counting", {}, r"did you mean rg:leg_counting\?"),
        ("foo:bar", {}, r"unknown task spec 'foo:bar'.*default, rg:NAME"),
        ("", {}, "no tasks given"),
        ("rg:", {}, "names no task"),
        ("rg:leg_counting(max_legs=3)", {}, r"unknown option max_legs.*min_animals"),
        ("rg:leg_counting(max_animals=lots)", {}, r"max_animals: cannot read 'lots'"),
        ("rg:leg_counting(max_animals=2", {}, "unbalanced"),
        ("rg:leg_counting(min_animals=5,max_animals=2)", {}, "invalid generator settings"),
        ("rg:leg_counting,leg_counting", {}, "appears twice.*name="),
        ("default", {"temperature": 1}, "unknown task option temperature"),
        ("rg:leg_counting(seed=-1)", {}, "seed must be"),
        ("commonsense:/nonexistent/folder", {}, "folder /nonexistent/folder not found"),
        (f"commonsense:{COMMONSENSE}:boolq,arc", {}, r"unknown commonsense task 'arc'.*ARC-Easy"),
        ("json:", {}, "json: needs a file"),
        ("rg:leg_counting(max_new_tokens=none)", {}, r"max_new_tokens: cannot read 'none'"),
        ("rg:leg_counting(mc=maybe)", {}, r"mc: cannot read 'maybe' \(expected true or false\)"),
        (
            "rg:leg_counting",
            {"name": "x"},
            "these tasks take " + ", ".join(sorted(set(RgOptions.names()) - {"name"})) + "$",
        ),
    ],
)
def test_bad_specs_raise_usage_error(spec, options, message):
    with pytest.raises(UsageError, match=message) as info:
        load_tasks(spec, **options)
    assert "\n" not in str(info.value)


def test_bad_split_and_n():
    (task,) = load_tasks("rg:syllogism(train_size=10)")
    with pytest.raises(UsageError, match="unknown split 'dev'.*train, val, test"):
        task.examples("dev")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="n must be"):
        task.examples("test", -1)
    with pytest.raises(UsageError, match=r"train_size is 10; raise it.*train_size=11"):
        task.examples("train", 11)
