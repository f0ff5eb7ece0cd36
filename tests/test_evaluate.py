import json

import pytest
import torch

from halora.errors import UsageError
from halora.evaluate import EvalSettings, evaluate_task, generate, option_logliks
from halora.tasks import load_tasks


def mc_file(tmp_path, count: int = 24):
    records = [
        {
            "prompt": f"{a} plus {b} is",
            "options": [f" {a + b}", f" {a + b + 1}", " nine"],
            "gold": 0,
            "split": "test",
        }
        for a in range(4)
        for b in range(count // 4)
    ]
    path = tmp_path / "sums.json"
    path.write_text(json.dumps(records))
    return path


def direct_loglik(model, tokenizer, prompt: str, option: str) -> float:
    prompt_ids = tokenizer(prompt).input_ids
    option_ids = tokenizer(option, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(option_ids))


def test_option_logliks_match_direct_computation_at_any_batch_size(tiny):
    model, tokenizer = tiny
    pairs = [
        ("2 plus 2 is", " 4"),
        ("a much longer prompt than the others, to pad", " yes"),
        ("x", " seventeen"),
    ]
    expected = [direct_loglik(model, tokenizer, p, o) for p, o in pairs]
    for batch_size in (1, 2, 3):
        got, tokens = option_logliks(model, tokenizer, pairs, EvalSettings(batch_size=batch_size))
        assert got == pytest.approx(expected, abs=1e-4)
        assert tokens == sum(len(tokenizer(p + o).input_ids) for p, o in pairs)


def test_loglik_scoring_accuracy_and_items(tiny, tmp_path):
    model, tokenizer = tiny
    task = load_tasks(f"json:{mc_file(tmp_path)}")[0]
    score = evaluate_task(model, tokenizer, task, EvalSettings(n=None, batch_size=5))
    assert score.scorer == "loglik" and score.n == 24 and len(score.items) == 24
    assert score.accuracy == sum(score.items) / 24
    assert 0.0 <= score.acc_norm <= 1.0
    assert score.chance == pytest.approx(1 / 3)
    again = evaluate_task(model, tokenizer, task, EvalSettings(n=None, batch_size=24))
    assert again.items == score.items


def test_greedy_generation_is_batch_independent(tiny):
    model, tokenizer = tiny
    prompts = ["short", "a somewhat longer prompt", "mid length one"]
    alone = [generate(model, tokenizer, [p], 6, EvalSettings())[0][0] for p in prompts]
    batched, _ = generate(model, tokenizer, prompts, 6, EvalSettings(batch_size=3))
    assert batched == alone
    assert tokenizer.padding_side == "right"  # restored after generation


def test_generation_scorer_uses_the_task_scorer(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    path = tmp_path / "gen.json"
    path.write_text(json.dumps([{"prompt": f"q{i}", "answer": "x", "split": "test"} for i in range(6)]))
    task = load_tasks(f"json:{path}")[0]
    calls = []
    monkeypatch.setattr(task, "score", lambda example, text: calls.append(text) or 1.0)
    score = evaluate_task(model, tokenizer, task, EvalSettings(n=None))
    assert score.scorer == "generate" and score.accuracy == 1.0 and len(calls) == 6
    with pytest.raises(UsageError, match="needs tasks with answer options"):
        evaluate_task(model, tokenizer, task, EvalSettings(n=None, scorer="loglik"))


def test_eval_settings_errors():
    with pytest.raises(UsageError, match="unknown scorer"):
        EvalSettings(scorer="bleu")
    with pytest.raises(UsageError):
        EvalSettings(batch_size=0)
