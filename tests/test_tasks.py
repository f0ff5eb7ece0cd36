"""The task layer: splits, determinism, prompts/options, scorers, fixtures, spec errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halora.errors import UsageError
from halora.tasks import (
    ALPACA_INPUT_TEMPLATE,
    ANSWER_PREFIX,
    CLOSED_ANSWER_SETS,
    COMMONSENSE_TASKS,
    DEFAULT_SUITE,
    DISTRACTOR_GROUPS,
    SEED_STRIDE,
    SPLIT_OFFSETS,
    CommonsenseTask,
    Example,
    JsonTask,
    ReasoningGymTask,
    alpaca_prompt,
    extract_commonsense_answer,
    first_line,
    load_tasks,
)

FIXTURES = Path(__file__).parent / "fixtures"
COMMONSENSE = FIXTURES / "commonsense"
MALFORMED = FIXTURES / "malformed"


@pytest.fixture(scope="module")
def suite():
    return load_tasks("default")


def _questions(examples: list[Example]) -> set[str]:
    return {e.meta["entry"]["question"] for e in examples}


# ---------------------------------------------------------------- reasoning-gym ----


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


# ------------------------------------------------------------------ commonsense ----


def test_commonsense_fixture_loads_all_tasks():
    tasks = load_tasks(f"commonsense:{COMMONSENSE}")
    assert [t.name for t in tasks] == list(COMMONSENSE_TASKS)
    by_name = {t.name: t for t in tasks}
    for task in tasks:
        assert isinstance(task, CommonsenseTask) and task.max_new_tokens == 32
        test = task.examples("test")
        assert len(test) >= 3
        for e in test:
            assert e.prompt.startswith("Below is an instruction that describes a task. Write")
            assert e.prompt.endswith("\n\n### Response:\n")
            assert e.answer == e.options[e.gold] == ANSWER_PREFIX + e.meta["label"]
            assert all(o.startswith(ANSWER_PREFIX) for o in e.options)
            assert task.score(e, e.answer) == 1.0
    boolq = by_name["boolq"].examples("test")[0]
    assert boolq.options == ("the correct answer is true", "the correct answer is false")
    assert boolq.gold == 1
    assert by_name["social_i_qa"].chance == pytest.approx(1 / 3)
    assert by_name["winogrande"].chance == pytest.approx(1 / 2)
    # ARC-Challenge has a 3-option and a 5-option item: options follow "Answer format:"
    arc = by_name["ARC-Challenge"]
    assert sorted(len(e.options) for e in arc.examples("test")) == [3, 4, 4, 5]
    assert arc.chance == pytest.approx((1 / 3 + 1 / 4 + 1 / 4 + 1 / 5) / 4)
    assert arc.examples("test")[3].options[arc.examples("test")[3].gold].endswith("answer5")


def test_commonsense_train_val_partition_the_training_file():
    tasks = load_tasks(f"commonsense:{COMMONSENSE}")
    records = json.loads((COMMONSENSE / "commonsense_170k.json").read_text())
    train = [e for t in tasks for e in t.examples("train")]
    val = [e for t in tasks for e in t.examples("val")]
    assert len(val) == len(records) // 10  # val_size 500, capped at a tenth of the file
    assert sorted(e.meta["index"] for e in train + val) == list(range(len(records)))
    assert not {e.prompt for e in train} & {e.prompt for e in val}
    for e in train + val:
        record = records[e.meta["index"]]
        assert e.answer == record["output"] and e.options[e.gold].endswith(record["answer"])
        assert record["instruction"] in e.prompt
    owners = {e.meta["label"][:6]: set() for e in train + val}
    for e in train + val:
        owners[e.meta["label"][:6]].add(e.task)
    assert owners["soluti"] == {"piqa"} and owners["option"] == {"winogrande"}
    assert owners["ending"] == {"hellaswag"}
    assert owners["true"] | owners.get("false", set()) == {"boolq"}
    # answerN records: 3 options -> SIQA, 4-5 -> ARC-e / ARC-c / OBQA
    for e in train + val:
        if e.meta["label"].startswith("answer"):
            expected = (
                {"social_i_qa"}
                if len(e.options) == 3
                else {
                    "ARC-Easy",
                    "ARC-Challenge",
                    "openbookqa",
                }
            )
            assert e.task in expected
    # deterministic, and seed moves the val slice
    again = load_tasks(f"commonsense:{COMMONSENSE}")
    assert [e.prompt for t in again for e in t.examples("val")] == [e.prompt for e in val]
    other = load_tasks(f"commonsense:{COMMONSENSE}", seed=3, val_size=4)
    assert len([e for t in other for e in t.examples("val")]) == 2  # still capped


def test_commonsense_task_subset_and_case():
    tasks = load_tasks(f"commonsense:{COMMONSENSE}:boolq,PIQA")
    assert [t.name for t in tasks] == ["boolq", "piqa"]


@pytest.mark.parametrize(
    ("task", "completion", "expected"),
    [
        ("ARC-Easy", "the correct answer is answer2", "answer2"),
        ("openbookqa", "answer3, not answer1", "answer3"),  # first match wins
        ("social_i_qa", "I think answer1 is right", "answer1"),
        ("boolq", "  the correct answer is false\n", "false"),
        ("boolq", "The correct answer is True", ""),  # case-sensitive, as LLM-Adapters
        ("piqa", "solution2", "solution2"),
        ("piqa", "the correct answer is solution", ""),
        ("hellaswag", "ending4 is best", "ending4"),
        ("winogrande", "the correct answer is option2.", "option2"),
        ("winogrande", "I don't know", ""),
    ],
)
def test_commonsense_answer_extraction(task, completion, expected):
    assert extract_commonsense_answer(task, completion) == expected


def test_commonsense_score_on_crafted_completions():
    (arc,) = load_tasks(f"commonsense:{COMMONSENSE}:ARC-Easy")
    e = arc.examples("test")[0]  # gold answer2
    assert arc.score(e, "the correct answer is answer2") == 1.0
    assert arc.score(e, "the correct answer is answer1") == 0.0
    assert arc.score(e, "answer2") == 1.0
    assert arc.score(e, "") == 0.0


def test_alpaca_templates():
    assert alpaca_prompt("Do X.") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nDo X.\n\n### Response:\n"
    )
    with_input = alpaca_prompt("Do X.", "some context")
    assert with_input == ALPACA_INPUT_TEMPLATE.format(instruction="Do X.", input="some context")
    assert "### Input:\nsome context\n\n### Response:\n" in with_input
    assert alpaca_prompt("Do X.", "  ") == alpaca_prompt("Do X.")


@pytest.mark.parametrize(
    ("case", "task", "split", "message"),
    [
        ("not_a_list", "boolq", "train", r"commonsense_170k\.json: expected a JSON list .*dict"),
        ("missing_keys", "boolq", "test", r"boolq/test\.json: item 1 has no 'answer' key"),
        ("bad_json", "piqa", "test", r"piqa/test\.json: invalid JSON at line \d+"),
        (
            "bad_answer",
            "winogrande",
            "test",
            r"winogrande/test\.json: item 1: answer 'option3' does not match",
        ),
        (
            "bad_train_answer",
            "piqa",
            "val",
            r"commonsense_170k\.json: item 1: answer 'yes' does not match",
        ),
    ],
)
def test_malformed_commonsense_files(case, task, split, message):
    (loaded,) = load_tasks(f"commonsense:{MALFORMED / case}:{task}")
    with pytest.raises(UsageError, match=message) as info:
        loaded.examples(split)
    assert "\n" not in str(info.value) and str(MALFORMED / case) in str(info.value)


def test_missing_commonsense_file_is_named(tmp_path):
    (tmp_path / "dataset").mkdir()
    (task,) = load_tasks(f"commonsense:{tmp_path}:hellaswag")
    with pytest.raises(UsageError, match=r"hellaswag/test\.json: file not found"):
        task.examples("test")
    with pytest.raises(UsageError, match=r"commonsense_170k\.json: file not found"):
        task.examples("train")
    assert task.chance == pytest.approx(1 / 4)  # nominal when the file is missing
    with pytest.raises(UsageError, match="holds neither"):
        load_tasks(f"commonsense:{tmp_path / 'dataset'}")


# ------------------------------------------------------------------------- json ----


def _write(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_json_pairs_with_explicit_splits(tmp_path):
    path = _write(
        tmp_path / "mine.json",
        [
            {"prompt": "Q: 2+2?\nA:", "answer": " 4", "split": "train"},
            {"prompt": "Q: 3+3?\nA:", "answer": " 6", "split": "train"},
            {"prompt": "Q: 2+2?\nA:", "answer": " 4", "split": "test"},  # dropped: in train
            {"prompt": "Q: 5+5?\nA:", "options": [" 9", " 10"], "gold": 1, "split": "test"},
            {
                "prompt": "Q: 1+1?\nA:",
                "options": [" 2", " 3", " 4"],
                "answer": " 2",
                "split": "test",
            },
            {"prompt": "Q: 7+1?\nA:", "answer": " 8", "split": "val"},
        ],
    )
    (task,) = load_tasks(f"json:{path}")
    assert isinstance(task, JsonTask) and task.name == "mine"
    assert [e.answer for e in task.examples("train")] == [" 4", " 6"]
    test = task.examples("test")
    assert [(e.answer, e.gold) for e in test] == [(" 10", 1), (" 2", 0)]
    assert task.chance == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert task.score(test[0], " 10\nQ: next") == 1.0
    assert task.score(test[0], " 9") == 0.0
    assert len(task.examples("val")) == 1 and task.examples("train", 1)[0].answer == " 4"


def test_jsonl_and_hash_split(tmp_path):
    path = tmp_path / "many.jsonl"
    lines = [json.dumps({"prompt": f"Q: {i}+1?\nA:", "answer": f" {i + 1}"}) for i in range(300)]
    path.write_text("\n".join(lines) + "\n\n")
    (task,) = load_tasks(f"json:{path}")
    sizes = {s: len(task.examples(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 300
    assert 180 < sizes["train"] < 270 and sizes["val"] > 10 and sizes["test"] > 10
    (again,) = load_tasks([f"json:{path}"])
    assert again.examples("test") == task.examples("test")
    assert task.chance == 0.0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("pairs_not_a_list.json", r"pairs_not_a_list\.json: expected a JSON list"),
        ("pairs_missing_answer.json", r"pairs_missing_answer\.json: record 1: \"answer\" must"),
        ("pairs_bad_gold.json", r"pairs_bad_gold\.json: record 0: \"gold\" must be an index"),
        ("pairs_bad_line.jsonl", r"pairs_bad_line\.jsonl: line 2 is not valid JSON"),
        ("no_such_file.json", r"no_such_file\.json: file not found"),
    ],
)
def test_malformed_json_pairs(name, message):
    with pytest.raises(UsageError, match=message) as info:
        load_tasks(f"json:{MALFORMED / name}")
    assert "\n" not in str(info.value)


def test_json_record_checks(tmp_path):
    cases = [
        ([{"prompt": "", "answer": "x"}], '"prompt" must be a non-empty string'),
        ([{"prompt": "p", "options": [" a"], "gold": 0}], "at least 2 strings"),
        ([{"prompt": "p", "options": [" a", " b"], "answer": " c"}], "not one of the options"),
        ([{"prompt": "p", "options": [" a", " b"], "gold": 0, "answer": " b"}], "differs"),
        ([{"prompt": "p", "answer": "x", "gold": 0}], '"gold" needs "options"'),
        ([{"prompt": "p", "answer": "x", "split": "dev"}], "\"split\" is 'dev'"),
        (["just a string"], "record 0 is a str"),
    ]
    for records, message in cases:
        with pytest.raises(UsageError, match=message):
            JsonTask(_write(tmp_path / "bad.json", records))
