"""reasoning-gym tasks: the default suite, disjoint seeded splits, answer options, scoring
and the RgOptions record."""

from __future__ import annotations

import dataclasses

import pytest

from halora.errors import UsageError
from halora.tasks import (
    CLOSED_ANSWER_SETS,
    DEFAULT_SUITE,
    DISTRACTOR_GROUPS,
    SEED_STRIDE,
    SPLIT_OFFSETS,
    Example,
    ReasoningGymTask,
    RgOptions,
    first_line,
    load_tasks,
)


@pytest.fixture(scope="module")
def suite():
    return load_tasks("default")


def _questions(examples: list[Example]) -> set[str]:
    return {e.meta["entry"]["question"] for e in examples}


def test_default_suite_has_four_mc_tasks(suite):
    assert len(suite) == len(DEFAULT_SUITE) >= 4
    assert [t.name for t in suite] == ["aiw", "family_relationships", "basic_arithmetic", "count_bits"]
    for task in suite:
        assert isinstance(task, ReasoningGymTask)
        test = task.examples("test", 50)
        assert len(test) == 50
        for e in test:
            assert e.task == task.name
            assert e.prompt.startswith("Question: ") and e.prompt.endswith("\nAnswer:")
            assert e.answer.startswith(" ") and e.answer.strip() == e.meta["entry"]["answer"]
            assert e.options and e.options[e.gold] == e.answer
            assert len(set(e.options)) == len(e.options)
            assert task.chance == pytest.approx(1 / len(e.options))
        assert task.max_new_tokens == 16


def test_splits_are_disjoint(suite):
    for task in suite:
        train = _questions(task.examples("train"))
        val = _questions(task.examples("val"))
        test = _questions(task.examples("test"))
        assert len(train) > 100 and len(val) == 200 and len(test) == 500
        assert not train & test, task.name
        assert not train & val, task.name


def test_dedupe_drops_held_out_questions_seen_in_train():
    # 1-digit a+b has ~100 distinct questions: raw test seeds repeat train questions
    task = ReasoningGymTask(
        "basic_arithmetic",
        name="tiny",
        train_size=60,
        min_terms=2,
        max_terms=2,
        min_digits=1,
        max_digits=1,
        operators=("+",),
        allow_parentheses=False,
        allow_negation=False,
    )
    train = _questions(task.examples("train"))
    test = task.examples("test", 20)
    assert len(_questions(test)) == 20 and not train & _questions(test)
    # the raw generator would have repeated train questions within the first test indices
    assert test[-1].meta["index"] >= 20
    with pytest.raises(UsageError, match="only .* test questions"):
        task.examples("test", 200)


def test_split_seeds_are_fixed_offsets():
    assert SPLIT_OFFSETS == {"train": 0, "val": 10_000_000, "test": 20_000_000}
    task = ReasoningGymTask("leg_counting", seed=2, train_size=5, val_size=5, test_size=5)
    for split in ("train", "val", "test"):
        expected = 2 * SEED_STRIDE + SPLIT_OFFSETS[split]
        assert task.seed_of(split) == expected
        assert {e.meta["seed"] for e in task.examples(split)} == {expected}
    other = ReasoningGymTask("leg_counting", seed=3, train_size=5)
    assert _questions(other.examples("train")) != _questions(task.examples("train"))


def test_deterministic_across_loads_and_prefix_stable(suite):
    again = load_tasks("default")
    for a, b in zip(suite, again, strict=True):
        for split in ("train", "val", "test"):
            ea, eb = a.examples(split, 40), b.examples(split, 40)
            assert [(e.prompt, e.answer, e.options, e.gold) for e in ea] == [
                (e.prompt, e.answer, e.options, e.gold) for e in eb
            ]
        assert b.examples("test", 10) == b.examples("test", 30)[:10]


@pytest.fixture(scope="module")
def more():
    """Generators outside the default suite that keep their option rules."""
    return {
        t.name: t
        for t in load_tasks(
            "rg:leg_counting(min_animals=1,max_animals=2,max_instances=3);rg:syllogism(invalid_ratio=0.5)"
        )
    }


def test_numeric_options_are_near_misses(suite, more):
    legs, arith = more["leg_counting"], suite[2]
    for e in legs.examples("test", 100):
        values = [int(o) for o in e.options]
        gold = values[e.gold]
        assert all(v >= 0 for v in values)
        assert all((v - gold) % 2 == 0 for v in values)  # no parity shortcut
        assert all(abs(v - gold) <= 20 for v in values)
    positions = {e.gold for e in arith.examples("test", 100)}
    assert positions == {0, 1, 2, 3}


def test_closed_set_options(suite, more):
    family, syllogism = suite[1], more["syllogism"]
    relations = set(CLOSED_ANSWER_SETS["family_relationships"])
    female, male = DISTRACTOR_GROUPS["family_relationships"]
    assert "mother-in-law" in female and "nephew" in male and set(female) | set(male) == relations
    for e in family.examples("test", 50):
        words = {o.strip() for o in e.options}
        assert len(words) == 4 and (words <= set(female) or words <= set(male))
    golds = [e.gold for e in syllogism.examples("test", 200)]
    assert all(e.options == (" Yes", " No") for e in syllogism.examples("test", 5))
    assert 0.35 < sum(golds) / len(golds) < 0.65  # invalid_ratio=0.5 balances Yes/No


def test_family_relation_set_matches_reasoning_gym():
    from reasoning_gym.graphs.family_relationships import Relationship

    assert set(CLOSED_ANSWER_SETS["family_relationships"]) == {r.value for r in Relationship}


def test_score_uses_reasoning_gym_scorer(suite):
    for task in suite:
        e = task.examples("test", 1)[0]
        assert task.score(e, e.answer) == 1.0
        assert task.score(e, e.answer + "\nQuestion: what next?\nAnswer: 7") == 1.0
        wrong = next(o for i, o in enumerate(e.options) if i != e.gold)
        assert task.score(e, wrong) == 0.0
        assert task.score(e, "") == 0.0
    legs = suite[0]
    e = legs.examples("test", 1)[0]
    partial = legs.score(e, e.answer + " legs")  # reasoning-gym gives partial credit
    ds = legs._dataset("train", 1)
    assert 0 < partial < 1
    assert partial == ds.score_answer(answer=e.answer.strip() + " legs", entry=e.meta["entry"])


def test_first_line():
    assert first_line("\n  42 \nmore") == "42"
    assert first_line("   ") == ""


def test_generation_only_task_has_zero_chance():
    task = load_tasks("rg:leg_counting(mc=false,train_size=10)")[0]
    e = task.examples("test", 3)[0]
    assert e.options == () and e.gold == -1 and task.chance == 0.0
    unknown_kind = load_tasks("rg:spell_backward(train_size=10)")[0]
    assert unknown_kind.chance == 0.0 and unknown_kind.max_new_tokens == 64


def test_rg_options_hold_the_defaults_a_task_gets():
    task = ReasoningGymTask("leg_counting")
    defaults = RgOptions()
    assert task.name == "leg_counting" and task.seed == defaults.seed
    assert task.sizes == {"train": defaults.train_size, "val": defaults.val_size, "test": defaults.test_size}
    assert task.n_options == defaults.n_options and task.chance == pytest.approx(1 / defaults.n_options)
    assert task.max_new_tokens == 16  # max_new_tokens None: 16 for a task with options
    assert all(f.metadata["help"] for f in dataclasses.fields(RgOptions))


def test_rg_options_record_and_keywords_combine():
    options = RgOptions(name="legs", train_size=30, n_options=3)
    task = ReasoningGymTask("leg_counting", options, train_size=20, max_animals=3)
    assert task.name == "legs" and task.sizes["train"] == 20 and task.n_options == 3  # keywords win
    assert task.config == {"max_animals": 3}  # the rest goes to the generator
    assert len(task.examples("train")) == 20
    with pytest.raises(UsageError, match="rg:legs: n_options must be an integer >= 2"):
        ReasoningGymTask("leg_counting", options, n_options=1)
