"""JSON / JSONL prompt/answer records: explicit and hashed splits, options and record checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halora.errors import UsageError
from halora.tasks import JsonTask, load_tasks

MALFORMED = Path(__file__).parent / "fixtures" / "malformed"


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
