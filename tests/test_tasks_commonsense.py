"""LLM-Adapters commonsense tasks: the fixture folder, the train/val partition, answer
extraction, Alpaca prompts and malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halora.errors import UsageError
from halora.tasks import (
    ALPACA_INPUT_TEMPLATE,
    ANSWER_PREFIX,
    COMMONSENSE_TASKS,
    CommonsenseTask,
    alpaca_prompt,
    extract_commonsense_answer,
    load_tasks,
)

FIXTURES = Path(__file__).parent / "fixtures"
COMMONSENSE = FIXTURES / "commonsense"
MALFORMED = FIXTURES / "malformed"


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
