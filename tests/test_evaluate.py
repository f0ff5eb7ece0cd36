import json

import pytest
import torch

from halora.encoding import encode_pair
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


def forward_loglik(model, prompt_ids: list[int], option_ids: list[int]) -> float:
    """Summed log-probability of the option tokens in one plain forward pass of prompt + option."""
    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(option_ids))


def direct_loglik(model, tokenizer, prompt: str, option: str) -> float:
    option_ids = tokenizer(option, add_special_tokens=False).input_ids
    return forward_loglik(model, tokenizer(prompt).input_ids, option_ids)


def test_option_logliks_match_direct_computation_at_any_batch_size(tiny):
    model, tokenizer = tiny
    pairs = [
        ("2 plus 2 is", " 4"),
        ("a much longer prompt than the others, to pad", " yes"),
        ("x", " seventeen"),
    ]
    expected = [direct_loglik(model, tokenizer, p, o) for p, o in pairs]
    for batch_size in (1, 2, 3):
        got, tokens = option_logliks(model, tokenizer, pairs, EvalSettings(eval_batch_size=batch_size))
        assert got == pytest.approx(expected, abs=1e-4)
        assert tokens == sum(len(tokenizer(p + o).input_ids) for p, o in pairs)


def test_a_prompt_that_just_fits_is_scored_whole_whatever_else_is_in_the_batch(tiny):
    model, tokenizer = tiny
    prompt = "2 plus 2 is"
    pairs = [(prompt, " 4"), (prompt, " four"), ("x", " seventeen")]
    fits = len(tokenizer(prompt).input_ids) + len(tokenizer(" four").input_ids)
    expected = [direct_loglik(model, tokenizer, p, o) for p, o in pairs]
    # one batch: the longer option of "x" must not shorten the other prompt
    got, _ = option_logliks(model, tokenizer, pairs, EvalSettings(max_length=fits, eval_batch_size=2))
    assert got == pytest.approx(expected, abs=1e-4)
    one_short, _ = option_logliks(model, tokenizer, pairs[:2], EvalSettings(max_length=fits - 1))
    assert one_short[1] != pytest.approx(expected[1], abs=1e-4)  # the first prompt token is gone


def test_a_long_prompt_keeps_its_end_and_whole_options_when_scored(tiny):
    model, tokenizer = tiny
    end = " so, all told, the answer is"
    prompts = ["a beginning that the model never sees" + end, "a different start" + end]
    option = " seventeen"
    option_ids = tokenizer(option, add_special_tokens=False).input_ids
    max_length = 24
    kept = tokenizer(prompts[0]).input_ids[-(max_length - len(option_ids)) :]
    assert kept == tokenizer(prompts[1]).input_ids[-len(kept) :]  # the two prompts share their end
    got, tokens = option_logliks(
        model, tokenizer, [(p, option) for p in prompts], EvalSettings(max_length=max_length)
    )
    assert got == pytest.approx([forward_loglik(model, kept, option_ids)] * 2, abs=1e-4)
    assert tokens == 2 * max_length


def test_a_long_prompt_keeps_its_end_when_generating(tiny, monkeypatch):
    model, tokenizer = tiny
    long_prompt, short_prompt = "a beginning that the model never sees, then the end:", "short"
    seen = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw) or original(**kw))
    texts, _ = generate(model, tokenizer, [short_prompt, long_prompt], 5, EvalSettings(max_length=16))
    rows, mask = seen[0]["input_ids"].tolist(), seen[0]["attention_mask"].tolist()
    short_ids = tokenizer(short_prompt).input_ids
    assert rows[0] == tokenizer(long_prompt).input_ids[-16:] and mask[0] == [1] * 16
    assert rows[1][-len(short_ids) :] == short_ids and mask[1] == [0] * 11 + [1] * 5  # left padded
    alone = original(input_ids=torch.tensor(rows[:1]), max_new_tokens=5, do_sample=False)
    assert texts[1] == tokenizer.decode(alone[0, 16:], skip_special_tokens=True)


def test_encode_pair_keeps_a_prompt_that_fits_and_the_end_of_one_that_does_not(tiny):
    _, tokenizer = tiny
    prompt = "".join(chr(ord("a") + i % 26) for i in range(150))
    prompt_ids, answer_ids = tokenizer(prompt).input_ids, tokenizer(" yes").input_ids
    eos = [tokenizer.eos_token_id]
    fits = encode_pair(tokenizer, prompt, " yes", max_length=256)
    assert fits.input_ids == prompt_ids + answer_ids + eos and fits.answer_start == len(prompt_ids)
    cut = encode_pair(tokenizer, prompt, " yes", max_length=10)
    assert cut.input_ids == prompt_ids[-5:] + answer_ids + eos and cut.answer_start == 5


def test_loglik_scoring_accuracy_and_items(tiny, tmp_path):
    model, tokenizer = tiny
    task = load_tasks(f"json:{mc_file(tmp_path)}")[0]
    score = evaluate_task(model, tokenizer, task, EvalSettings(items=None, eval_batch_size=5))
    assert score.scorer == "loglik" and score.n == 24 and len(score.items) == 24
    assert score.accuracy == sum(score.items) / 24
    assert 0.0 <= score.acc_norm <= 1.0
    assert score.chance == pytest.approx(1 / 3)
    again = evaluate_task(model, tokenizer, task, EvalSettings(items=None, eval_batch_size=24))
    assert again.items == score.items


def test_greedy_generation_is_batch_independent(tiny):
    model, tokenizer = tiny
    prompts = ["short", "a somewhat longer prompt", "mid length one"]
    alone = [generate(model, tokenizer, [p], 6, EvalSettings())[0][0] for p in prompts]
    batched, _ = generate(model, tokenizer, prompts, 6, EvalSettings(eval_batch_size=3))
    assert batched == alone
    assert tokenizer.padding_side == "right"  # restored after generation


def test_generation_scorer_uses_the_task_scorer(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    path = tmp_path / "gen.json"
    path.write_text(json.dumps([{"prompt": f"q{i}", "answer": "x", "split": "test"} for i in range(6)]))
    task = load_tasks(f"json:{path}")[0]
    calls = []
    monkeypatch.setattr(task, "score", lambda example, text: calls.append(text) or 1.0)
    score = evaluate_task(model, tokenizer, task, EvalSettings(items=None))
    assert score.scorer == "generate" and score.accuracy == 1.0 and len(calls) == 6
    with pytest.raises(UsageError, match="needs tasks with answer options"):
        evaluate_task(model, tokenizer, task, EvalSettings(items=None, scorer="loglik"))


def test_eval_settings_errors():
    with pytest.raises(UsageError, match="scorer: unknown value 'bleu'"):
        EvalSettings(scorer="bleu")
    with pytest.raises(UsageError):
        EvalSettings(eval_batch_size=0)
